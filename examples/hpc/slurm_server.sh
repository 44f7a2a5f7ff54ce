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
: "${SLURM_JOB_ID:?SLURM_JOB_ID is not set: submit this script with sbatch}"
: "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set: submit this script with sbatch}"
JOB_ID="$SLURM_JOB_ID"
SCHEDULER=slurm

# 3. This node's short name (what the login node reaches over SSH), the server to run, and private
#    files: everything created from here on is readable by you only (0600 files, 0700 directories).
NODE="${HOSTNAME%%.*}"
TARGET="${ENSEMBLE_MCP_TARGET:-examples/agents/server.py:server}"
JOB_DIR="${ENSEMBLE_MCP_JOBS:-$HOME/.ensemble-mcp/jobs}/${JOB_ID//[^A-Za-z0-9._-]/_}"
umask 077
mkdir -p "$JOB_DIR"
CONNECTION_FILE="$JOB_DIR/connection.json"
TOKEN_FILE="$JOB_DIR/token"

# 4. Clean-up: when the job ends for any reason, stop the server and remove the files.
SERVER_PID=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true     # the server stops its tasks, then exits
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$CONNECTION_FILE" "$CONNECTION_FILE.new" "$TOKEN_FILE"
    rmdir "$JOB_DIR" 2>/dev/null || true
    echo "ensemble-mcp: server stopped, connection files removed"
}
trap cleanup EXIT
trap 'exit 143' TERM    # walltime or qdel: exit, which runs cleanup
trap 'exit 130' INT

# 5. A fresh token, straight into its file; the server gets it through its environment (not its
#    command line, which every user of the node can read).
python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$TOKEN_FILE"

# 6. Start the server on a free port and wait until it answers an authenticated MCP request
#    (a port taken in between by someone else makes it exit: then try another port).
for attempt in 1 2 3; do
    PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    URL="http://127.0.0.1:$PORT/mcp"
    ENSEMBLE_MCP_TOKEN="$(<"$TOKEN_FILE")" \
        ensemble-mcp serve "$TARGET" --host 127.0.0.1 --port "$PORT" &
    SERVER_PID=$!
    # (in the background, so that a qdel meanwhile is handled at once)
    ensemble-mcp check "$URL" --token-file "$TOKEN_FILE" --wait 300 --pid "$SERVER_PID" &
    if wait $!; then
        break
    fi
    kill -TERM "$SERVER_PID" 2>/dev/null || true    # it may still run: it did not answer
    server_status=0
    wait "$SERVER_PID" 2>/dev/null || server_status=$?
    SERVER_PID=""
    if [ "$attempt" = 3 ] || [ "$server_status" = 2 ]; then    # 2: the server cannot be loaded
        echo "ensemble-mcp: the server did not start; see the messages above" >&2
        exit 1
    fi
done

# 7. The connection file: what `ensemble-mcp connect` needs to reach the server (no token in it,
#    only where the token file is).
SCHEDULER="$SCHEDULER" JOB_ID="$JOB_ID" NODE="$NODE" PORT="$PORT" URL="$URL" PID="$SERVER_PID" \
    TOKEN_FILE="$TOKEN_FILE" TARGET="$TARGET" python3 - >"$CONNECTION_FILE.new" <<'PY'
import json, os, time
target = os.environ["TARGET"]
where, colon, attribute = target.rpartition(":")
if not colon:
    where, attribute = target, "server"
if where.endswith(".py") or "/" in where:  # a file: make its path absolute
    target = f"{os.path.abspath(where)}:{attribute}"
print(json.dumps({
    "version": 1,
    "scheduler": os.environ["SCHEDULER"],
    "job_id": os.environ["JOB_ID"],
    "host": os.environ["NODE"],
    "port": int(os.environ["PORT"]),
    "url": os.environ["URL"],
    "pid": int(os.environ["PID"]),
    "token_file": os.environ["TOKEN_FILE"],
    "target": target,
    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
}, indent=2))
PY
mv "$CONNECTION_FILE.new" "$CONNECTION_FILE"    # whole or not at all, for a reader waiting on it

# 8. Tell the user what to do next, then keep the job alive as long as the server runs.
cat <<EOF
ensemble-mcp: the server answers on $NODE port $PORT (job $JOB_ID).
On the login node, run:

    ensemble-mcp connect $CONNECTION_FILE

EOF
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=""
exit "$status"
