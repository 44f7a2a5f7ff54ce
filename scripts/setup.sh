#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: system packages, a virtual environment, test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v mpiexec.openmpi >/dev/null || need+=(openmpi-bin)
    command -v mpiexec.mpich >/dev/null || need+=(mpich)
    [ -x /usr/sbin/sshd ] || need+=(openssh-server)
    command -v npm >/dev/null || need+=(nodejs npm)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        apt-get install -y -q "${need[@]}" >/dev/null
    fi
    mkdir -p /run/sshd
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' \
        >.venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
fi
.venv/bin/python -c "import core, ensemble_mcp, mcp, zmq, paramiko, cloudpickle, pytest"

# Node 22 and the MCP Inspector CLI, for the acceptance test that drives the server with it.
if [ ! -x .node/node_modules/.bin/mcp-inspector ]; then
    bash scripts/install-inspector.sh >/dev/null
fi

