"""The node side of a batch job: ``ensemble-mcp job TARGET``, for ``ensemble-mcp connect``.

The job scripts of ``examples/hpc/`` ``exec`` it on the first node of a PBS or Slurm job. It:

1. finds the job in the environment (``find_job``: ``PBS_JOBID`` with ``PBS_NODEFILE``, or
   ``SLURM_JOB_ID`` with ``SLURM_JOB_NODELIST``), and refuses to run outside one;
2. makes the job's private directory ``<jobs dir>/<job id>`` (0700) and a fresh token in its
   ``token`` file (0600). The token reaches the server inside this process: it is never on a
   command line, in a process's environment block, or in the output;
3. binds 127.0.0.1 on a port the kernel picks and serves TARGET on that very socket (no port is
   picked, let go and bound again, so nothing can take it in between); the server is this
   process;
4. once the server answers an authenticated ``tools/list``, writes ``connection.json`` (0600)
   whole, by rename, and prints the ``ensemble-mcp connect`` command for the login node;
5. on SIGTERM or SIGINT (``qdel``, ``scancel``, the walltime), or when the server cannot start,
   stops the server (its launcher stops every task) and removes the connection file, the token
   and the directory. The exit code is 128 + the signal, or 1 when the server did not start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from core.cli import add_launcher_flags
from core.errors import ConfigError
from core.nodes import hostname
from ensemble_mcp.auth import TOKEN_ENV, BearerAuth, token_from_env
from ensemble_mcp.check import ServerCheckError, wait_for_server_async
from ensemble_mcp.connect import CONNECTION_VERSION
from ensemble_mcp.serve import absolute_target, apply_launcher_flags, load_server

if TYPE_CHECKING:
    import uvicorn

__all__ = ("BatchJob", "JobFiles", "add_job_command", "find_job", "job_directory", "run_job")

JOBS_ENV = "ENSEMBLE_MCP_JOBS"
DEFAULT_JOBS_DIR = "~/.ensemble-mcp/jobs"
LOOPBACK = "127.0.0.1"
READY_WAIT_S = 300.0
GRACE_S = 5
"""When the job stops, how long open HTTP requests may take to finish before they are cancelled."""

# (scheduler, its job id variable, the variables that list the job's nodes, how to submit)
_SCHEDULERS = (
    ("pbs", "PBS_JOBID", ("PBS_NODEFILE",), "qsub"),
    ("slurm", "SLURM_JOB_ID", ("SLURM_JOB_NODELIST", "SLURM_NODELIST"), "sbatch"),
)
_NOT_IN_DIRECTORY_NAMES = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class BatchJob:
    """The batch job this process runs in.

    Attributes:
        scheduler: ``"pbs"`` or ``"slurm"``.
        job_id: the scheduler's id of the job (``12345.pbs01``, ``777``).
    """

    scheduler: str
    job_id: str


def find_job(env: Mapping[str, str] | None = None) -> BatchJob:
    """The PBS or Slurm job of this process, from the variables the scheduler sets.

    PBS is looked for first, as ``core.nodes`` does when it reads the job's nodes.

    Raises:
        ConfigError: neither job id is set, or the job's node list is missing (the server's
            launcher would then run on this node only); the message says how to submit.
    """
    env = os.environ if env is None else env
    for scheduler, id_variable, node_variables, submit in _SCHEDULERS:
        job_id = env.get(id_variable)
        if not job_id:
            continue
        if not any(env.get(name) for name in node_variables):
            raise ConfigError(
                f"{id_variable} is set but {node_variables[0]} is not, so the job's nodes are "
                f"unknown: run this inside a job that {submit} started, which sets both"
            )
        return BatchJob(scheduler, job_id)
    raise ConfigError(
        "not inside a batch job: neither PBS_JOBID nor SLURM_JOB_ID is set; submit the job "
        "script with qsub (PBS) or sbatch (Slurm)"
    )


def job_directory(jobs_dir: Path, job_id: str) -> Path:
    """The job's own directory under ``jobs_dir``, named by its id.

    Characters other than letters, digits and ``._-`` are replaced by ``_``.

    Raises:
        ConfigError: the id names no directory of its own (``.``, ``..``).
    """
    name = _NOT_IN_DIRECTORY_NAMES.sub("_", job_id)
    if name in (".", ".."):
        raise ConfigError(f"the job id {job_id!r} cannot name a directory")
    return jobs_dir / name


@dataclass(frozen=True)
class JobFiles:
    """The job's private directory: its token file, and its connection file once it is ready."""

    directory: Path

    @property
    def token_file(self) -> Path:
        """The bearer token, one line (mode 0600)."""
        return self.directory / "token"

    @property
    def connection_file(self) -> Path:
        """What ``ensemble-mcp connect`` reads (mode 0600); never holds the token."""
        return self.directory / "connection.json"

    @property
    def _partial(self) -> Path:
        return self.connection_file.with_name(self.connection_file.name + ".new")

    @classmethod
    def create(cls, directory: Path, token: str) -> JobFiles:
        """Make ``directory`` (0700, parents included) and write ``token`` into it (0600).

        Raises:
            ConfigError: the directory cannot be made, is not a directory, or belongs to
                another user.
        """
        try:
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise ConfigError(
                    f"{directory} is not a directory of yours: remove it, or set {JOBS_ENV} "
                    "(--jobs-dir) to another place"
                )
            directory.chmod(0o700)
        except OSError as exc:
            raise ConfigError(f"cannot make the job directory {directory}: {exc}") from exc
        files = cls(directory)
        _write_private(files.token_file, token + "\n")
        return files

    def write_connection(self, record: Mapping[str, Any]) -> None:
        """Write the connection file whole or not at all, for a reader waiting on it."""
        _write_private(self._partial, json.dumps(record, indent=2) + "\n")
        self._partial.replace(self.connection_file)

    def remove(self) -> None:
        """Remove the files and the directory (left in place if something else is in it)."""
        for path in (self.connection_file, self._partial, self.token_file):
            path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # in case it was there already, with another mode
        file.write(text)


def connection_record(
    job: BatchJob, host: str, port: int, token_file: Path, target: str, pid: int
) -> dict[str, Any]:
    """The connection file's fields (read back by ``ensemble_mcp.connect``)."""
    return {
        "version": CONNECTION_VERSION,
        "scheduler": job.scheduler,
        "job_id": job.job_id,
        "host": host,
        "port": port,
        "url": _url(port),
        "pid": pid,
        "token_file": str(token_file),
        "target": target,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}/mcp"


class _Stopped(BaseException):
    """SIGTERM or SIGINT came before the server ran (a BaseException, as KeyboardInterrupt)."""


class _Signals:
    """SIGTERM and SIGINT for the job's life.

    Before the server runs they interrupt the start (``_Stopped``). While it runs, uvicorn
    handles them (a graceful stop), then hands them back here; one that comes in between tells
    the server to stop. Once the clean-up has begun (``interrupts`` False) they are only noted.
    ``received`` is the first one.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.server: uvicorn.Server | None = None
        self.interrupts = True
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the signals back (work that must not be cut in half); they come after."""
        signal.pthread_sigmask(signal.SIG_BLOCK, self._previous)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.server is not None:
            self.server.should_exit = True
        elif self.interrupts:
            raise _Stopped


def add_job_command(subparsers: Any) -> None:
    """Register ``job`` on an argparse sub-parser set."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "job",
        help="serve TARGET from a PBS or Slurm job, for `ensemble-mcp connect` on the login node",
        description="Run inside a PBS or Slurm job, on its first node (the job scripts in "
        "examples/hpc/ do). Serves TARGET ('pkg.module:server' or 'path/to/file.py:server') "
        "on 127.0.0.1 of this node, on a free port, with a fresh token in a file only you can "
        "read; once it answers, writes <jobs dir>/<job id>/connection.json and prints the "
        "`ensemble-mcp connect` command to run on the login node. On SIGTERM or SIGINT (qdel, "
        "scancel, the walltime) stops the server and every task, and removes the files.",
    )
    parser.add_argument("target", help="module:attribute or file.py:attribute")
    parser.add_argument(
        "--jobs-dir",
        default=None,
        metavar="DIR",
        help=f"where each job's directory goes (default: ${JOBS_ENV}, else {DEFAULT_JOBS_DIR}); "
        "the login node must see it too (home directories are)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=READY_WAIT_S,
        metavar="SECONDS",
        help="how long the server may take to answer (default: %(default)g)",
    )
    add_launcher_flags(parser)  # --config, --nlevels, --nchildren, --child-executor
    parser.set_defaults(handler=run_job)


def run_job(args: argparse.Namespace) -> int:
    """Serve ``args.target`` for the job until a signal; returns the exit code.

    0 when the server ended by itself, 128 + the signal after SIGTERM or SIGINT, 1 when it did
    not start, 2 outside a job.
    """
    try:
        if not args.wait > 0:
            raise ConfigError(f"--wait must be a positive number of seconds, got {args.wait:g}")
        job = find_job()
        jobs_dir = Path(args.jobs_dir or os.environ.get(JOBS_ENV) or DEFAULT_JOBS_DIR)
        directory = job_directory(jobs_dir.expanduser(), job.job_id)
    except ConfigError as exc:
        _say(str(exc), stream=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    umask = os.umask(0o077)  # everything the job and its server write: for this user only
    files: JobFiles | None = None
    failure: str | None = None
    with _Signals() as signals:
        try:
            with signals.held():  # a directory made is a directory removed
                files = JobFiles.create(directory, token)
            failure = _serve(args, job, files, token, signals)
        except _Stopped:
            pass
        except (ConfigError, ValueError) as exc:  # ServeTargetError is a ConfigError
            failure = str(exc)
        finally:
            signals.interrupts = False
            if failure is not None:
                _say(f"the server did not start: {failure}", stream=sys.stderr)
            if files is not None:
                files.remove()
                _say("server stopped, connection files removed")
            _hand_over(None)
            os.umask(umask)
    if failure is not None:
        return 1
    return 0 if signals.received is None else 128 + signals.received


def _serve(
    args: argparse.Namespace, job: BatchJob, files: JobFiles, token: str, signals: _Signals
) -> str | None:
    """Load the target, serve it until it is told to stop; why it did not start, or None."""
    import anyio

    _hand_over(token)  # before the target makes its Server, which takes it
    server = load_server(args.target)
    apply_launcher_flags(args, server)
    target = absolute_target(args.target)
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))  # uvicorn listens on it once the launcher runs

        def describe() -> dict[str, Any]:
            port = int(sock.getsockname()[1])
            return connection_record(job, hostname(), port, files.token_file, target, os.getpid())

        return anyio.run(_serve_async, server, sock, files, describe, token, args.wait, signals)


async def _serve_async(
    server: Any,
    sock: socket.socket,
    files: JobFiles,
    describe: Callable[[], dict[str, Any]],
    token: str,
    wait_s: float,
    signals: _Signals,
) -> str | None:
    """Serve on ``sock``; write ``describe()`` as the connection file once the server answers."""
    import anyio
    import uvicorn

    from ensemble_mcp.server import Server

    app = server.streamable_http_app(host=LOOPBACK)
    if not isinstance(server, Server):  # a plain MCP server has no token of its own
        app = BearerAuth(app, token)
    http = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=server.settings.log_level.lower(),
            timeout_graceful_shutdown=GRACE_S,
        )
    )
    failures: list[str] = []
    url = _url(sock.getsockname()[1])

    async def announce_when_ready() -> None:
        try:
            await wait_for_server_async(url, token, wait_s=wait_s)
        except ServerCheckError as exc:
            failures.append(str(exc))
            http.should_exit = True
            return
        record = describe()
        files.write_connection(record)
        _say(
            f"the server answers on {record['host']} port {record['port']} "
            f"(job {record['job_id']}).\nOn the login node, run:\n\n"
            f"    ensemble-mcp connect {files.connection_file}\n"
        )

    signals.server = http
    if signals.received is not None:  # came while the app was made
        return None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(announce_when_ready)
        try:
            await http.serve(sockets=[sock])
        except SystemExit:  # uvicorn's answer to a lifespan (the launcher) that failed to start
            failures.append("its start-up failed (see the messages above)")
        tasks.cancel_scope.cancel()
    return failures[0] if failures else None


def _hand_over(token: str | None) -> None:
    """Make ``token`` the one the next ``ensemble_mcp.Server`` takes; None forgets it.

    Through ``$ENSEMBLE_MCP_TOKEN``, taken straight back out (``token_from_env`` remembers it),
    so that no process this one starts inherits it.
    """
    os.environ[TOKEN_ENV] = token or ""
    token_from_env()


def _say(text: str, stream: Any = None) -> None:
    out = sys.stdout if stream is None else stream
    out.write(f"ensemble-mcp job: {text}\n")
    out.flush()
