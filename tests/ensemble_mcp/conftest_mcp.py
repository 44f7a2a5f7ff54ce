"""The MCP test server and the fixtures that run it in-process, over HTTP and over stdio.

Import explicitly: ``from tests.ensemble_mcp.conftest_mcp import ...``. The module is also served
by path in subprocesses: ``ensemble-mcp serve tests/ensemble_mcp/conftest_mcp.py:server``.
Tasks of the command tools carry ``TASK_MARK=<value of ENSEMBLE_MCP_TEST_TASK_MARK>`` in their
environment, so a test can find (and count) exactly those processes in /proc.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import cloudpickle
from pydantic import BaseModel, Field

from ensemble_mcp.results import OutputLimits
from ensemble_mcp.serve import free_port, wait_until_serving
from ensemble_mcp.server import Server

ROOT = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve()
TASK_MARK = os.environ.get("ENSEMBLE_MCP_TEST_TASK_MARK", f"in-process-{os.getpid()}")
MAX_TASKS = 500


class Point(BaseModel):
    """A point in the (pressure, temperature) plane."""

    pressure: float
    temperature: float


def add(a: float, b: float = 1.0) -> float:
    """Add two numbers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


async def async_scale(x: int, factor: int = 2) -> int:
    """Scale x by factor, asynchronously."""
    await asyncio.sleep(0)
    return x * factor


def boom(x: int) -> int:
    """Fail for negative x."""
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    return x


def noisy(x: int) -> int:
    """Print to stdout, then return x."""
    print(f"noisy stdout line {x}")
    return x


def big_text(n: int) -> str:
    """A string of n characters."""
    return "x" * n


def big_list(n: int) -> list[int]:
    """A list of n integers."""
    return list(range(n))


def wrong_type(x: int) -> int:
    """Claims int, returns a string."""
    return f"not an int {x}"  # type: ignore[return-value]


def point(p: Point, scale: Annotated[float, Field(gt=0, description="a factor > 0")]) -> Point:
    """Scale a point."""
    return Point(pressure=p.pressure * scale, temperature=p.temperature * scale)


def build_server() -> Server:
    """The server every MCP test talks to (small bounds so tests stay small)."""
    srv = Server(
        "ensemble-test",
        max_tasks=MAX_TASKS,
        output_limits=OutputLimits(text_chars=200, result_bytes=2000, text_lines=5),
    )
    for fn in (add, async_scale, boom, noisy, big_text, big_list, wrong_type, point):
        srv.ensemble_tool(fn)
    env = {"TASK_MARK": TASK_MARK}
    srv.ensemble_tool(
        "sleep {seconds}", name="sleep_cmd", env=env, submit_tool=False, params={"seconds": float}
    )
    srv.ensemble_tool("/bin/echo {word}", name="echo_cmd", description="Echo one word.", env=env)
    srv.ensemble_tool(f"{sys.executable} -c {{code}}", name="py_cmd", env=env)
    return srv


server = build_server()
# Workers would otherwise import this module (and the MCP stack with it) to find the functions.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def free_url() -> tuple[int, str]:
    """A free port and the MCP URL a server on it would have."""
    port = free_port()
    return port, f"http://127.0.0.1:{port}/mcp"


def serve_command(*extra: str) -> list[str]:
    """The argv that serves this module's ``server``."""
    return [sys.executable, "-m", "ensemble_mcp.cli", "serve", f"{THIS_FILE}:server", *extra]


def subprocess_env(task_mark: str) -> dict[str, str]:
    """The environment of a served test server whose command tasks carry ``task_mark``."""
    return {
        **os.environ,
        "ENSEMBLE_MCP_TEST_TASK_MARK": task_mark,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def start_http_server(task_mark: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start the test server over streamable HTTP in a subprocess.

    Returns the process and its URL once it listens.
    """
    port, url = free_url()
    process = subprocess.Popen(
        serve_command("--port", str(port)), cwd=ROOT, env=subprocess_env(task_mark)
    )
    try:
        wait_until_serving(process, "127.0.0.1", port, timeout_s=60)
    except BaseException:
        stop_process(process)
        raise
    return process, url


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 30) -> int:
    """Interrupt a server subprocess (as Ctrl-C would) and wait for it; kill if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def warm(srv: Server) -> Iterator[Server]:
    """Keep ``srv``'s launcher running across the in-process clients of a module."""
    srv.start()
    try:
        yield srv
    finally:
        srv.shutdown()


def wait_for(predicate: Any, timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` (an outside condition, e.g. /proc) until true or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
