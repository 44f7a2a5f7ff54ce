"""Start launcher child processes (workers, sub-masters) and make sure none outlives its run."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import LaunchError

RUN_MARKER = "ENSEMBLE_MCP_RUN"
CHILD_MARKER = "ENSEMBLE_MCP_CHILD"


@dataclass(slots=True)
class ChildProcess:
    """A child launcher process started on this node."""

    identity: bytes
    popen: subprocess.Popen[bytes]
    pidfd: int
    log_path: Path

    def log_tail(self, nbytes: int = 4000) -> str:
        """The end of the child's own stderr/stdout log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - nbytes))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Release the pidfd (after the process has been reaped)."""
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def spawn_local(
    role: str,
    options: Any,
    run_dir: Path,
    identity: bytes,
    run_id: str,
    log_path: Path | None = None,
) -> ChildProcess:
    """Start ``python -m core <role> <options file>`` in its own session on this node.

    The options are pickled to a 0600 file in the run's 0700 directory (never on the command
    line). Every process of the run carries ``ENSEMBLE_MCP_RUN=<run_id>`` in its environment, the
    mark by which ``kill_run`` finds stragglers.
    """
    name = identity.decode()
    options_path = run_dir / f"{name}.options"
    fd = os.open(options_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        pickle.dump(options, out)
    log_path = log_path or run_dir / f"{name}.log"
    env = {
        **os.environ,
        RUN_MARKER: run_id,
        CHILD_MARKER: name,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    log = log_path.open("ab")
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", "core", role, str(options_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            cwd=os.getcwd(),
        )
    except OSError as exc:
        raise LaunchError(f"could not start a {role} process with {sys.executable}: {exc}") from exc
    finally:
        log.close()
    return ChildProcess(identity, popen, os.pidfd_open(popen.pid), log_path)


def load_options(path: str) -> Any:
    """Read the options a parent left for this child (and delete the file)."""
    with open(path, "rb") as src:
        options = pickle.load(src)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return options


def stop_children(children: list[ChildProcess], grace_s: float = 3.0) -> None:
    """SIGTERM each child's session, wait up to ``grace_s``, then SIGKILL what is left."""
    for child in children:
        _signal_group(child.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(child.popen.pid, signal.SIGKILL)
            child.popen.wait()
        _signal_group(child.popen.pid, signal.SIGKILL)
        child.close()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def processes_of_run(run_id: str) -> list[int]:
    """The pids on this node whose environment carries this run's mark (Linux /proc)."""
    return processes_marked(f"{RUN_MARKER}={run_id}")


def processes_marked(assignment: str) -> list[int]:
    """The pids on this node whose environment holds ``NAME=value`` (Linux /proc)."""
    mark = assignment.encode()
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as env:
                if mark in env.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_run(run_id: str, wait_s: float = 5.0) -> list[int]:
    """SIGKILL every process left over from this run and wait (bounded) until they are gone."""
    return kill_marked(f"{RUN_MARKER}={run_id}", wait_s)


def kill_left_by(child: bytes) -> list[int]:
    """SIGKILL what a dead child left running (its tasks' processes); no waiting."""
    return kill_marked(f"{CHILD_MARKER}={child.decode()}", 0.0)


def kill_marked(assignment: str, wait_s: float) -> list[int]:
    """SIGKILL the processes marked ``NAME=value`` and wait (bounded) until they are gone."""
    pids = processes_marked(assignment)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.005)  # not our children: nothing to wait on but /proc
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when the thread that started it ends."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's shutdown still stops us
        return
