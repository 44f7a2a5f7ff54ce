"""The server the durability and exposure tests run, in-process or served by path in a subprocess.

Import explicitly: ``from tests.ensemble_mcp.durable_server import ...``. Served with
``ensemble-mcp serve tests/ensemble_mcp/durable_server.py:server``; its journal goes where
``$ENSEMBLE_MCP_STATE_DIR`` says (each test gives its own). Every process of its launcher
inherits ``ENSEMBLE_MCP_TEST_TASK_MARK`` from the server's environment, so a test finds them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle

from core import SystemConfig
from ensemble_mcp.serve import free_port, wait_until_serving
from ensemble_mcp.server import Server

ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve()
NAME = "durable-test"


def nap(x: int, s: float = 0.0) -> int:
    """Sleep s seconds, then return x."""
    time.sleep(s)
    return x


def environment(x: int) -> list[str]:
    """This Python task's environment, as NAME=value lines."""
    return sorted(f"{k}={v}" for k, v in os.environ.items())


# A command: its results reach the server as each ends (a Python task's may wait in its worker
# while the next one runs).
NAP_CMD = """sh -c 'sleep "$1" && echo "$2"' nap {s} {x}"""
NAP_CMD_PARAMS = {"s": float, "x": int}


def build_server(**kwargs: Any) -> Server:
    """The test server: ``nap``, ``nap_cmd``, ``environment``, ``env_cmd`` (``env``); two slots."""
    srv = Server(NAME, system_config=SystemConfig(ncpus=2), **kwargs)
    srv.ensemble_tool(nap)
    srv.ensemble_tool(NAP_CMD, name="nap_cmd", params=NAP_CMD_PARAMS)
    srv.ensemble_tool(environment, submit_tool=False)
    srv.ensemble_tool("env", name="env_cmd", description="Print the task's environment.")
    return srv


server = build_server()
# Workers would otherwise import this module (and the MCP stack with it) to find the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def serve_argv(*extra: str) -> list[str]:
    """The argv that serves this module's ``server``."""
    return [sys.executable, "-m", "ensemble_mcp.cli", "serve", f"{THIS_FILE}:server", *extra]


def server_env(mark: str, state_root: Path, **extra: str) -> dict[str, str]:
    """The environment of a served test server: its task mark, its journal root, ``extra``."""
    env = {
        **os.environ,
        "ENSEMBLE_MCP_TEST_TASK_MARK": mark,
        "ENSEMBLE_MCP_STATE_DIR": str(state_root),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **extra,
    }
    return env


def start(
    mark: str, state_root: Path, *extra_argv: str, port: int | None = None, **extra_env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """Serve over streamable HTTP on 127.0.0.1; the process and its URL once it listens."""
    port = port or free_port()
    process = subprocess.Popen(
        serve_argv("--port", str(port), *extra_argv),
        cwd=ROOT,
        env=server_env(mark, state_root, **extra_env),
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_serving(process, "127.0.0.1", port, timeout_s=60)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, f"http://127.0.0.1:{port}/mcp"
