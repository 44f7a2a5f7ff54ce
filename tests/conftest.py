"""Shared test helpers: a process oracle that scans /proc for an environment mark.

It repeats what core.spawn.processes_of_run does on purpose: an oracle that shares code with the
implementation it checks could share its bugs too.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable

import pytest

# Test servers must not inherit a user's exported token (their clients send none).
os.environ.pop("ENSEMBLE_MCP_TOKEN", None)
# Nor write journals in the user's state directory (~/.local/state/ensemble-mcp); servers
# started by tests, subprocesses included, journal under this run's own directory.
os.environ["ENSEMBLE_MCP_STATE_DIR"] = _STATE_ROOT = tempfile.mkdtemp(prefix="ensemble-mcp-state-")
atexit.register(shutil.rmtree, _STATE_ROOT, ignore_errors=True)


def pids_with_env(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``mark`` (``NAME=value``)."""
    needle = mark.encode()
    return _pids_where("environ", lambda data: needle in data.split(b"\0"))


def processes_holding(secret: str) -> list[int]:
    """Pids of live processes whose command line or environment holds ``secret`` anywhere."""
    needle = secret.encode()
    found = _pids_where("cmdline", lambda data: needle in data)
    return found + _pids_where("environ", lambda data: needle in data)


def _pids_where(part: str, holds: Callable[[bytes], bool]) -> list[int]:
    """Pids of live processes (this one aside) whose ``/proc/<pid>/<part>`` ``holds``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/{part}", "rb") as file:
                if holds(file.read()):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until_gone(mark: str, timeout_s: float = 10.0) -> list[int]:
    """Wait (bounded) until no process carries ``mark``; returns those still there."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = pids_with_env(mark)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


@pytest.fixture
def mark() -> str:
    """A unique ``NAME=value`` to put in a task's env, to find its processes later."""
    return f"ENSEMBLE_MCP_TEST_MARK={uuid.uuid4().hex}"
