#!/usr/bin/env bash
# Serve an ensemble-mcp server from a Slurm job, for an MCP client on the login node or a laptop.
#
#   sbatch examples/hpc/slurm_server.sh      # from the directory that holds examples/
#
# When the server answers, the job's output (ensemble-mcp-<JOBID>.out) shows the one command to
# run on the login node:  ensemble-mcp connect ~/.ensemble-mcp/jobs/<JOBID>/connection.json
# That command opens an SSH tunnel to the node and prints the configuration for your MCP client.
#
# The server runs on the first node of the job, listens on 127.0.0.1 only (reachable through the
# tunnel), and requires a fresh random token that is written to a file only you can read. The token
# never appears in this job's output. When the job ends (time limit, scancel), the server is
# stopped and the connection and token files are removed.
#
# Edit the #SBATCH lines for your site (account, partition, time, node size). Settings you can also
# give with `sbatch --export=ALL,NAME=value`:
#   ENSEMBLE_MCP_TARGET  the server to run (default: the example, examples/agents/server.py:server)
#   ENSEMBLE_MCP_JOBS    where connection files go (default: ~/.ensemble-mcp/jobs; must be on a
#                        file system the login node sees too; home directories are)
#
#SBATCH --job-name=ensemble-mcp
#SBATCH --nodes=1
#SBATCH --time=01:00:00
#SBATCH --output=ensemble-mcp-%j.out
##SBATCH --account=your_project
##SBATCH --partition=your_partition
##SBATCH --exclusive

set -euo pipefail

# 1. Your software. Load what your site needs and activate the environment that has ensemble-mcp
#    (`pip install -e .` in a clone of the repository; see README.md).
# module load python
# source ~/venvs/ensemble/bin/activate

# 2. Where we are. Slurm runs this script on the first node of the job, in the directory it was
#    submitted from: the server runs here. The launcher inside the server reads SLURM_JOB_NODELIST
#    and SLURM_JOB_CPUS_PER_NODE itself and runs tasks on every node of the job.
cd "${SLURM_SUBMIT_DIR:-$PWD}"

# 3. Serve. `ensemble-mcp job` finds the job in the scheduler's variables, writes the token and,
#    once the server answers, the connection file; on qdel, scancel or the walltime it stops the
#    server and every task and removes the files (`ensemble-mcp job --help` says more).
exec ensemble-mcp job "${ENSEMBLE_MCP_TARGET:-examples/agents/server.py:server}"
