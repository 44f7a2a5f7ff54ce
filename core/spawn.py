"""Start launcher child processes (workers, sub-masters) and make sure none outlives its run.

Every process of a run carries ``ENSEMBLE_MCP_RUN=<run id>`` in its environment (and a launcher
child ``ENSEMBLE_MCP_CHILD=<its name>``): the marks by which stragglers are found and killed,
on every node, whatever process group or session they put themselves in.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core.errors import LaunchError

RUN_MARKER = "ENSEMBLE_MCP_RUN"
CHILD_MARKER = "ENSEMBLE_MCP_CHILD"


@dataclass(slots=True)
class ChildProcess:
    """A launcher child process (worker or sub-master), started here or through a launcher."""

    identity: bytes
    popen: subprocess.Popen[bytes]
    pidfd: int
    log_path: Path
    argv: list[str]
    host: str

    def log_tail(self, nbytes: int = 4000) -> str:
        """The end of the child's own stderr/stdout log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - nbytes))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        """Host, argv and log tail, for an error message."""
        tail = self.log_tail().strip() or "(nothing)"
        return f"on {self.host}: {shlex.join(self.argv)}\nits output ends with:\n{tail}"

    def close(self) -> None:
        """Release the pidfd (after the process has been reaped)."""
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def child_argv(role: str) -> list[str]:
    """``python -m core <role> -``: a launcher child, which reads its options from stdin."""
    return [sys.executable, "-m", "core", role, "-"]


def child_env(run_id: str, name: str) -> dict[str, str]:
    """The variables a launcher child runs with: the run's marks and the import path."""
    path = os.pathsep.join(p for p in sys.path if p)
    return {RUN_MARKER: run_id, CHILD_MARKER: name, "PYTHONPATH": path}


def start_child(
    identity: bytes, argv: list[str], env: dict[str, str], options: Any, log_path: Path,
    host: str,
) -> ChildProcess:  # fmt: skip
    """Start ``argv`` in its own session, with ``env`` added, and hand it ``options`` on stdin.

    The options (keys included) never appear on a command line or in a file: they are pickled,
    base64-encoded and written as one line to the child's stdin, which ``mpiexec``, ``srun`` and
    ``ssh`` forward to the process they start (one short line: some launchers mangle binary
    input or never deliver end-of-file). The child dies with this thread (``PR_SET_PDEATHSIG``;
    an ``mpiexec`` then stops what it started on other nodes).
    """
    line = base64.b64encode(pickle.dumps(options)) + b"\n"
    log = log_path.open("ab")
    try:
        popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True,
            cwd=os.getcwd(), env={**os.environ, **env}, preexec_fn=_die_with_parent_preexec,
        )  # fmt: skip
    except OSError as exc:
        raise LaunchError(f"could not start {shlex.join(argv)} on {host}: {exc}") from exc
    finally:
        log.close()
    assert popen.stdin is not None
    try:
        popen.stdin.write(line)
        popen.stdin.flush()
    except OSError:  # it died at once: its pidfd and log will tell
        pass
    return ChildProcess(identity, popen, os.pidfd_open(popen.pid), log_path, argv, host)


def read_options(stream: BinaryIO) -> Any:
    """Read the options a parent wrote to this process's stdin (see ``start_child``)."""
    line = stream.readline()
    if not line.endswith(b"\n"):
        raise LaunchError(f"stdin ended after {len(line)} bytes, before the options line did")
    return pickle.loads(base64.b64decode(line))


def _die_with_parent_preexec() -> None:
    if _PRCTL is not None:  # between fork and exec: nothing but the prepared call
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


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


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the parent's shutdown still stops children
        return None


_PRCTL = _load_prctl()  # loaded once: a forked child must not import or load libraries
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when the thread that started it ends."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, sig)
