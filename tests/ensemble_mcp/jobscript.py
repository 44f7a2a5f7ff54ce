"""Start a job script of examples/hpc/ or `ensemble-mcp job` as PBS or Slurm would; read its output.

The scheduler itself cannot exist here: its variables (PBS_NODEFILE, PBS_JOBID / SLURM_JOB_NODELIST,
SLURM_JOB_ID) are set by hand, which is all the scripts and ``ensemble-mcp job`` read from it.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "examples" / "hpc"
READY_S = 120.0
THIS_NODE = socket.gethostname().split(".")[0]


@dataclass
class Job:
    """A job script running under bash; ``lines`` collects its output (stdout and stderr)."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def read_until(self, needle: str, timeout_s: float = READY_S) -> str:
        """The first output line holding ``needle``; AssertionError if the output ends first."""
        while True:
            try:
                line = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(
                    f"no line with {needle!r} within {timeout_s:g} s:\n{self.output}"
                ) from None
            if line is None:
                raise AssertionError(f"the job ended without {needle!r}:\n{self.output}")
            if needle in line:
                return line

    def stop(self, timeout_s: float = 60.0) -> int:
        """Send SIGTERM (what qdel / scancel / the walltime send) and wait for the script."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    @property
    def output(self) -> str:
        """Everything the job printed so far."""
        return "".join(self.lines)


def start_job(script: str, home: Path, scheduler_env: dict[str, str], **extra: str) -> Job:
    """Start ``examples/hpc/<script>`` with ``scheduler_env`` set and HOME at ``home``."""
    return start_command(["bash", str(SCRIPTS / script)], home, scheduler_env, **extra)


def start_command(argv: list[str], home: Path, scheduler_env: dict[str, str], **extra: str) -> Job:
    """Start ``argv`` as a job would: ``scheduler_env`` set, HOME at ``home``, in ``home``.

    The variables of schedulers and of ensemble-mcp in this process's environment are left out;
    the directory of this Python comes first on PATH (for ``ensemble-mcp``).
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PBS_", "SLURM_", "ENSEMBLE_MCP_"))
    }
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        **scheduler_env,
        **extra,
    )
    process = subprocess.Popen(
        argv,
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job = Job(process)
    name = Path(argv[-1]).name if argv[0] == "bash" else argv[0]
    threading.Thread(target=_pump, args=(job,), name=f"{name}-output", daemon=True).start()
    return job


def _pump(job: Job) -> None:
    stream: Any = job.process.stdout
    for line in stream:
        job.lines.append(line)
        job._queue.put(line)
    job._queue.put(None)


def pbs_env(tmp: Path, job_id: str = "4242.pbs01") -> dict[str, str]:
    """PBS's variables for a one-node job on this host (listed once per mpiprocs, as PBS does)."""
    nodefile = tmp / "pbs_nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * 4)
    return {"PBS_NODEFILE": str(nodefile), "PBS_JOBID": job_id, "PBS_O_WORKDIR": str(ROOT)}


def slurm_env(nodelist: str, job_id: str = "777") -> dict[str, str]:
    """Slurm's variables for a job on the compressed host list ``nodelist``."""
    return {"SLURM_JOB_NODELIST": nodelist, "SLURM_JOB_ID": job_id, "SLURM_SUBMIT_DIR": str(ROOT)}


def connection_file_of(job: Job) -> Path:
    """The connection file named in the ``ensemble-mcp connect`` line the job prints."""
    line = job.read_until("ensemble-mcp connect ")
    return Path(line.split("ensemble-mcp connect ", 1)[1].strip())


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return path.stat().st_mode & 0o777
