#!/usr/bin/env bash
# Serve an ensemble-mcp server from a PBS job, for an MCP client on the login node or a laptop.
#
#   qsub examples/hpc/pbs_server.sh          # from the directory that holds examples/
#
# When the server answers, the job's output (ensemble-mcp.o<JOBID>) shows the one command to run
# on the login node:  ensemble-mcp connect ~/.ensemble-mcp/jobs/<JOBID>/connection.json
# That command opens an SSH tunnel to the node and prints the configuration for your MCP client.
#
# The server runs on the first node of the job, listens on 127.0.0.1 only (reachable through the
# tunnel), and requires a fresh random token that is written to a file only you can read. The token
# never appears in this job's output. When the job ends (walltime, qdel), the server is stopped
# and the connection and token files are removed.
#
# Edit the #PBS lines for your site: account, queue, walltime, and the nodes as
# select=<nodes>:ncpus=<cores per node>:mpiprocs=<tasks at once per node>. Settings you can also
# give with `qsub -v NAME=value`:
#   ENSEMBLE_MCP_TARGET  the server to run (default: the example, examples/agents/server.py:server)
#   ENSEMBLE_MCP_JOBS    where connection files go (default: ~/.ensemble-mcp/jobs; must be on a
#                        file system the login node sees too; home directories are)
#
#PBS -N ensemble-mcp
#PBS -l select=1:ncpus=32:mpiprocs=32
#PBS -l walltime=01:00:00
#PBS -j oe
##PBS -A your_project
##PBS -q your_queue
##PBS -l filesystems=home

set -euo pipefail

# 1. Your software. Load what your site needs and activate the environment that has ensemble-mcp
#    (`pip install -e .` in a clone of the repository; see README.md).
# module load python
# source ~/venvs/ensemble/bin/activate

# 2. Where we are. PBS runs this script on the first node of the job: the server runs here. It
#    starts in $HOME, so go back to where you submitted from. The launcher inside the server reads
#    PBS_NODEFILE itself and runs tasks on every node of the job, as many at once on each node as
#    the file has lines for it (PBS writes one per mpiprocs: ask for mpiprocs=<cores per node>).
cd "${PBS_O_WORKDIR:-$PWD}"

# 3. Serve. `ensemble-mcp job` finds the job in the scheduler's variables, writes the token and,
#    once the server answers, the connection file; on qdel, scancel or the walltime it stops the
#    server and every task and removes the files (`ensemble-mcp job --help` says more).
exec ensemble-mcp job "${ENSEMBLE_MCP_TARGET:-examples/agents/server.py:server}"
