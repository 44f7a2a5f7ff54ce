"""The main job: start the example server, wait until it answers, run the client, stop the server.

    .venv/bin/python examples/agents/run_example.py [--port N]

The server requires a bearer token made fresh for this run: it gets it in ``$ENSEMBLE_MCP_TOKEN``
(environment, not argv: other users can read a process's argv) and the client sends it.

Exits with the client's exit code (0 when every task succeeded).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import anyio

from ensemble_mcp.serve import free_port, wait_until_serving

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from client import run  # noqa: E402 - the client script sits next to this one


def main() -> int:
    """Run the example end to end; returns the client's exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    port = args.port or free_port()
    token = secrets.token_urlsafe(32)
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), "--port", str(port)],
        env={**os.environ, "ENSEMBLE_MCP_TOKEN": token},
    )
    try:
        wait_until_serving(server, "127.0.0.1", port)
        return anyio.run(run, f"http://127.0.0.1:{port}/mcp", sys.stdout, token)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
