"""Worker process: owns one slot, runs the tasks its parent sends, one at a time, in order.

Python callables run in this (persistent) process; commands run as child processes in their own
session, watched together with the parent's socket so that a cancel or timeout kills them at once.
Results are coalesced while tasks are tiny, and flushed when the queue drains, every
``_FLUSH_EVERY`` results, or after ``_FLUSH_AFTER_S``; results of longer tasks go up at once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
import types
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.protocol import (
    Cancel,
    Register,
    Rejected,
    ResultItem,
    Results,
    Shutdown,
    Submit,
    TaskItem,
    UndecodableSubmit,
)
from core.spawn import die_with_parent
from core.transport import Channel, CurveKeys, Poller, new_context

log = logging.getLogger("ensemble_mcp.worker")
_FLUSH_EVERY = 32
_FLUSH_AFTER_S = 0.005
_HOLD_IF_SHORTER_S = 0.002
_KILL_GRACE_S = 2.0
_READ_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What a worker needs to know, handed over by its parent."""

    endpoint: str
    identity: bytes
    node: str
    cpus: tuple[int, ...]
    gpus: tuple[str, ...] = ()
    gpu_selector: str = "CUDA_VISIBLE_DEVICES"
    pin: bool = True
    return_stdout: bool = False
    tail_bytes: int = 65536
    keys: CurveKeys | None = None
    report_interval_s: float = 0.0


_current_command: list[int] = []


def _on_term(signum: int, frame: object) -> None:
    for pgid in _current_command:
        _killpg(pgid, signal.SIGKILL)
    os._exit(128 + signum)


class _Timeout(BaseException):
    """Raised inside a Python task by SIGALRM when its timeout passes."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


class _Tail:
    """Keeps the last ``limit`` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        body = self.data.decode(errors="replace")
        return f"[... {self.dropped} bytes cut ...]\n{body}" if self.dropped else body


class Worker:
    """The run loop of one worker process."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.ctx = new_context()
        self.channel = Channel.connect_dealer(
            self.ctx, options.endpoint, options.identity, options.keys
        )
        self.queue: deque[TaskItem] = deque()
        self.cpus_of: dict[int, tuple[int, ...]] = {}
        self.functions: dict[bytes, Callable[..., Any] | BaseException] = {}
        self.out: list[ResultItem] = []
        self.first_out = 0.0
        self.mean_s = 0.0
        self.devnull = os.open(os.devnull, os.O_RDWR)  # opened once, not per command
        self.stopping = False
        self.loop: Any = None
        self.counts = {"success": 0, "failed": 0, "timeout": 0, "cancelled": 0}
        self.next_report = time.monotonic() + options.report_interval_s

    def serve(self) -> None:
        """Register, then run tasks until told to shut down."""
        opts = self.options
        self.channel.send(Register(node=opts.node, pid=os.getpid(), cpus=opts.cpus, gpus=opts.gpus))
        while not self.stopping:
            if not self.queue:
                self.flush()
                self.receive()
            elif self.channel.socket.poll(0):
                self.receive()
                continue
            if self.queue and not self.stopping:
                item = self.queue.popleft()
                self.emit(self.run(item))
        self.flush()
        self.channel.close()
        self.ctx.term()

    def receive(self) -> None:
        """Receive and handle one message from the parent."""
        try:
            message = self.channel.recv()[1]
        except UndecodableSubmit as exc:
            self.flush()
            self.channel.send(Rejected(keys=exc.keys, error=str(exc)))
            return
        self.handle(message)

    def handle(self, message: object) -> None:
        """Act on one message from the parent."""
        if isinstance(message, Submit):
            for digest, blob in message.functions.items():
                try:
                    self.functions[digest] = pickle.loads(blob)
                except BaseException as exc:  # noqa: BLE001 - reported with each task that uses it
                    self.functions[digest] = exc
            self.cpus_of.update(message.cpus)
            self.queue.extend(message.items)
        elif isinstance(message, Cancel):
            keys = set(message.keys)
            kept = deque(item for item in self.queue if item.key not in keys)
            for item in self.queue:
                if item.key in keys:
                    now = time.time()
                    self.emit(
                        ResultItem(
                            item.key,
                            "cancelled",
                            None,
                            None,
                            None,
                            None,
                            "cancelled before it started",
                            None,
                            now,
                            now,
                        )
                    )
            self.queue = kept
        elif isinstance(message, Shutdown):
            self.stopping = True

    def emit(self, result: ResultItem) -> None:
        """Queue a result; flush unless tasks are tiny."""
        now = time.monotonic()
        if not self.out:
            self.first_out = now
        self.out.append(result)
        duration = result.end_time - result.start_time
        self.mean_s += 0.2 * (duration - self.mean_s)
        # Hold results back only while tasks are tiny: then the next ones end within moments.
        if (
            self.mean_s > _HOLD_IF_SHORTER_S
            or len(self.out) >= _FLUSH_EVERY
            or now - self.first_out > _FLUSH_AFTER_S
        ):
            self.flush()

    def flush(self) -> None:
        """Send the queued results to the parent."""
        if not self.out:
            return
        items, self.out = self.out, []
        for item in items:
            self.counts[item.status] += 1
        if self.options.report_interval_s and time.monotonic() >= self.next_report:
            self.next_report = time.monotonic() + self.options.report_interval_s
            log.info("status: %s", ", ".join(f"{n} {s}" for s, n in self.counts.items()))
        try:
            self.channel.send(Results(items=items))
        except Exception:  # noqa: BLE001 - some value cannot be pickled: send one by one
            for item in items:
                try:
                    self.channel.send(Results(items=[item]))
                except Exception as exc:  # noqa: BLE001
                    self.channel.send(
                        Results(
                            items=[
                                item._replace(
                                    status="failed",
                                    value=None,
                                    exception_type=type(exc).__qualname__,
                                    exception="the task's return value could not be pickled: "
                                    f"{exc!r}",
                                )
                            ]
                        )
                    )

    def run(self, item: TaskItem) -> ResultItem:
        """Run one task; never raises."""
        try:
            return self.run_call(item) if item.fn is not None else self.run_command(item)
        except Exception as exc:  # noqa: BLE001 - a launcher bug must not take the worker down
            now = time.time()
            return ResultItem(
                item.key,
                "failed",
                None,
                None,
                None,
                None,
                f"internal launcher error: {self._describe(item, exc)}",
                type(exc).__qualname__,
                now,
                now,
            )

    # -- Python callables -------------------------------------------------------------------

    def run_call(self, item: TaskItem) -> ResultItem:
        """Run a Python callable in this process."""
        fn = self.functions.get(item.fn)  # type: ignore[arg-type]
        start = time.time()
        if fn is None or isinstance(fn, BaseException):
            return ResultItem(
                item.key,
                "failed",
                None,
                None,
                None,
                None,
                f"the function could not be loaded in the worker: {fn!r}",
                type(fn).__qualname__,
                start,
                time.time(),
            )
        captured = io.StringIO() if self.options.return_stdout else None
        status, value, exception, exc_type = "success", None, None, None
        if item.timeout:
            signal.setitimer(signal.ITIMER_REAL, item.timeout)
        try:
            with (
                contextlib.redirect_stdout(captured) if captured else contextlib.nullcontext(),
                _call_env(item.env, item.cwd),
            ):
                value = fn(*item.args, **item.kwargs)
                if isinstance(value, types.CoroutineType):
                    value = self._event_loop().run_until_complete(value)
        except _Timeout:
            status, exception = "timeout", f"timed out after {item.timeout} s"
        except BaseException as exc:  # noqa: BLE001 - a task's failure is data
            status, exc_type = "failed", f"{type(exc).__module__}.{type(exc).__qualname__}"
            exception = self._describe(item, exc)
        finally:
            if item.timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
        stdout = captured.getvalue()[-self.options.tail_bytes :] if captured else None
        return ResultItem(
            item.key, status, value, stdout, None, None, exception, exc_type, start, time.time()
        )

    def _event_loop(self) -> Any:
        if self.loop is None:
            import asyncio  # only workers that run async def functions pay for it

            self.loop = asyncio.new_event_loop()
        return self.loop

    def _describe(self, item: TaskItem, exc: BaseException) -> str:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[1:])
        head = f"{type(exc).__qualname__}: {exc}"
        return (
            f"{head}\n### task {item.key} on node {self.options.node}, cpus "
            f"{list(self.options.cpus)}\n{tb}"[-20000:]
        )

    # -- commands ---------------------------------------------------------------------------

    def run_command(self, item: TaskItem) -> ResultItem:
        """Run a command as a child process in its own session."""
        argv = list(item.argv or ())
        env = self._command_env(item)
        start = time.time()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=self.devnull,
                stdout=subprocess.PIPE if self.options.return_stdout else self.devnull,
                stderr=subprocess.PIPE,
                cwd=item.cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return ResultItem(
                item.key,
                "failed",
                None,
                None,
                None,
                None,
                f"could not start {argv[0]!r}: {exc}",
                type(exc).__qualname__,
                start,
                time.time(),
            )
        _current_command.append(proc.pid)
        try:
            return self._watch(item, proc, start)
        finally:
            _current_command.remove(proc.pid)

    def _command_env(self, item: TaskItem) -> dict[str, str] | None:
        cpus = self.cpus_of.pop(item.key, None)
        if not item.env and cpus is None and not self.options.gpus:
            return None
        env = dict(os.environ)
        if self.options.gpus:
            env[self.options.gpu_selector] = ",".join(self.options.gpus)
        if item.env:
            env.update(item.env)
        if cpus is not None:
            env["ENSEMBLE_MCP_CPUS"] = ",".join(map(str, cpus))
        return env

    def _watch(self, item: TaskItem, proc: subprocess.Popen[bytes], start: float) -> ResultItem:
        tails: dict[int, _Tail] = {}
        out_fd = proc.stdout.fileno() if proc.stdout is not None else None
        err_fd = proc.stderr.fileno() if proc.stderr is not None else None
        poller = Poller()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
                tails[stream.fileno()] = _Tail(self.options.tail_bytes)
                poller.add(stream.fileno())
        pidfd = os.pidfd_open(proc.pid)
        poller.add(pidfd)
        poller.add(self.channel)
        deadline = start + item.timeout if item.timeout else None
        status, kill_at, exited = "success", None, False
        try:
            while not exited:
                now = time.time()
                flush_at = (
                    time.time() + self.first_out + _FLUSH_AFTER_S - time.monotonic()
                    if self.out
                    else None
                )
                waits = [t for t in (deadline, kill_at, flush_at) if t is not None]
                timeout_ms = max(0.0, (min(waits) - now) * 1000) if waits else None
                ready = poller.poll(timeout_ms)
                if self.out and time.monotonic() - self.first_out >= _FLUSH_AFTER_S:
                    self.flush()  # results held back while this command runs
                for fd, tail in tails.items():
                    if fd in ready and not _drain(fd, tail):
                        poller.remove(fd)  # at EOF: stop polling it
                if pidfd in ready:
                    exited = True
                if self.channel.socket in ready and self._control(item):
                    status = "cancelled"
                    kill_at = _terminate(proc, kill_at)
                now = time.time()
                if deadline is not None and now >= deadline and status == "success":
                    status = "timeout"
                    kill_at = _terminate(proc, kill_at)
                    deadline = None
                if kill_at is not None and now >= kill_at:
                    _killpg(proc.pid, signal.SIGKILL)
                    kill_at = None
            returncode = proc.wait()
            for fd, tail in tails.items():
                _drain(fd, tail)
        finally:
            _killpg(proc.pid, signal.SIGKILL)  # leftovers of the task's session
            os.close(pidfd)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if status == "success" and returncode != 0:
            status = "failed"
        stdout = tails[out_fd].text() if out_fd is not None else None
        stderr = tails[err_fd].text() if err_fd is not None else None
        exception = None
        if status == "timeout":
            exception = f"timed out after {item.timeout} s"
        elif status == "failed":
            exception = _exit_text(returncode)
        return ResultItem(
            item.key, status, None, stdout, stderr, returncode, exception, None, start, time.time()
        )

    def _control(self, running: TaskItem) -> bool:
        """Handle messages that arrive while a command runs; True if it must be cancelled."""
        cancel = False
        while self.channel.socket.poll(0):
            try:
                message = self.channel.recv()[1]
            except UndecodableSubmit as exc:
                self.channel.send(Rejected(keys=exc.keys, error=str(exc)))
                continue
            if isinstance(message, Cancel) and running.key in message.keys:
                cancel = True
            elif isinstance(message, Shutdown):
                cancel = True
            self.handle(message)
        return cancel


@contextlib.contextmanager
def _call_env(env: dict[str, str] | None, cwd: str | None) -> Iterator[None]:
    """A Python task's ``env`` and ``run_dir``, in force for the call and undone after it."""
    if not env and not cwd:
        yield
        return
    saved = {name: os.environ.get(name) for name in env or ()}
    old_cwd = os.getcwd() if cwd else None
    try:
        os.environ.update(env or {})
        if cwd:
            os.chdir(cwd)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if old_cwd:
            os.chdir(old_cwd)


def _drain(fd: int, tail: _Tail) -> bool:
    """Read what is there; False once the pipe is at EOF (or closed)."""
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        tail.add(chunk)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _terminate(proc: subprocess.Popen[bytes], kill_at: float | None) -> float:
    _killpg(proc.pid, signal.SIGTERM)
    return kill_at if kill_at is not None else time.time() + _KILL_GRACE_S


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


def main(options: WorkerOptions) -> None:
    """Run a worker until its parent shuts it down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    die_with_parent()
    if options.report_interval_s:
        logging.getLogger().setLevel(logging.INFO)
    if options.pin and options.cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, options.cpus)
    sys.stdin.close()
    Worker(options).serve()
