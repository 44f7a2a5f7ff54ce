"""Worker process: owns one CPU slot, runs the tasks its parent sends, one at a time, in order.

Python callables run in this (persistent) process; commands run as child processes in their own
session, watched together with the parent's socket so that a cancel or timeout kills them at once.
A task placed with GPUs sees them through the run's ``gpu_selector`` variable; a task with several
processes (or any command when ``task_executor_name='mpi'``) runs under the MPI launcher on the
slots the scheduler reserved. Results are coalesced while tasks are tiny, and flushed when the
queue drains, every ``_FLUSH_EVERY`` results, or after ``_FLUSH_AFTER_S``; results of longer tasks
go up at once.
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
from functools import partial
from typing import Any, NamedTuple

from core.children import RunningRecord, WorkerOptions
from core.errors import EnsembleError
from core.protocol import (
    Cancel,
    Done,
    Entry,
    HostPart,
    Outcome,
    Placement,
    Register,
    Results,
    Shutdown,
    SlotInfo,
    Submit,
    TaskItem,
    dumps,
)
from core.spawn import CHILD_MARKER, RUN_MARKER, die_with_parent
from core.transport import Channel, Poller, new_context

log = logging.getLogger("ensemble_mcp.worker")
_FLUSH_EVERY = 32
_FLUSH_AFTER_S = 0.005
_HOLD_IF_SHORTER_S = 0.002
_KILL_GRACE_S = 2.0
_READ_CHUNK = 1 << 16

_current_command: list[int] = []
_outcome = partial(tuple.__new__, Outcome)  # NamedTuples without their Python-level __new__
_done = partial(tuple.__new__, Done)
_IDLE = (-1, 0)


def _on_term(signum: int, frame: object) -> None:
    for pgid in _current_command:
        _killpg(pgid, signal.SIGKILL)
    os._exit(128 + signum)


class _Timeout(BaseException):
    """Raised inside a Python task by SIGALRM when its timeout passes."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout


class _Job(NamedTuple):
    key: int
    attempt: int
    item: TaskItem
    placement: Placement | None


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


class _TextTail(io.TextIOBase):
    """A Python task's stdout: keeps the last ``limit`` characters, counts what it drops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.limit:  # trim now and then: memory stays bounded
            self._trim()
        return len(text)

    def _trim(self) -> None:
        whole = "".join(self.parts)
        excess = max(0, len(whole) - self.limit)
        self.dropped += excess
        self.parts, self.size = [whole[excess:]], len(whole) - excess

    def text(self) -> str:
        self._trim()
        body = self.parts[0] if self.parts else ""
        return f"[... {self.dropped} chars cut ...]\n{body}" if self.dropped else body


class Worker:
    """The run loop of one worker process."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.settings = options.settings
        self.ctx = new_context()
        self.channel = Channel.connect_dealer(
            self.ctx, options.endpoint, options.identity, options.keys
        )
        self.queue: deque[_Job] = deque()
        self.functions: dict[bytes, Callable[..., Any] | BaseException] = {}
        self.out: list[Done] = []
        self.first_out = 0.0
        self.mean_s = 0.0
        self.devnull = os.open(os.devnull, os.O_RDWR)  # opened once, not per command
        self.stopping = False
        self.loop: Any = None
        self.counts = {"success": 0, "failed": 0, "timeout": 0, "cancelled": 0}
        self.next_report = time.monotonic() + self.settings.report_interval_s
        self.record = RunningRecord(options.record) if options.record else None
        self.current = _IDLE
        self.fn_mean: dict[bytes, float] = {}  # mean run time of each function, seconds
        self.mpi_launcher: Any = None  # core.mpi.MpiLauncher, detected on the first MPI task

    def serve(self) -> None:
        """Register, then run tasks until told to shut down."""
        opts = self.options
        slot = SlotInfo(opts.slot, opts.node, opts.cpu)
        self.channel.send(Register(pid=os.getpid(), slots=(slot,), nodes=()))
        while not self.stopping:
            if not self.queue:
                self.flush()
                self.handle(self.channel.recv()[1])
            elif self.channel.pending():
                self.handle(self.channel.recv()[1])
                continue
            if self.queue and not self.stopping:
                job = self.queue.popleft()
                if self.out and job.item.fn is not None and not self._known_tiny(job):
                    self.flush()  # held results must not wait for a call that may run long
                    # (a command flushes them while it runs: it watches the socket)
                self.current = (job.key, job.attempt)
                if self.record is not None:
                    self.record.note(*self.current)
                outcome = self.run(job)
                self.current = _IDLE
                if self.record is not None:
                    self.record.note(*_IDLE)
                if job.item.fn is not None:
                    duration = outcome.end_time - outcome.start_time
                    mean = self.fn_mean.get(job.item.fn, duration)
                    self.fn_mean[job.item.fn] = mean + 0.2 * (duration - mean)
                self.emit(job, outcome)
        self.flush()
        self.channel.close()
        self.ctx.term()

    def handle(self, message: object) -> None:
        """Act on one message from the parent."""
        if isinstance(message, Submit):
            for digest, blob in message.functions.items():
                try:
                    self.functions[digest] = pickle.loads(blob)
                except BaseException as exc:  # noqa: BLE001 - reported with each task that uses it
                    self.functions[digest] = exc
            for entry in message.entries:
                self._accept(entry)
        elif isinstance(message, Cancel):
            keys = set(message.keys)
            now = time.time()
            for job in [job for job in self.queue if job.key in keys]:
                self.emit(job, Outcome.ended("cancelled", "cancelled before it started", now))
            self.queue = deque(job for job in self.queue if job.key not in keys)
        elif isinstance(message, Shutdown):
            self.stopping = True

    def _known_tiny(self, job: _Job) -> bool:
        """Whether ``job`` is a call of a function whose runs have been tiny so far."""
        fn = job.item.fn
        return fn is not None and self.fn_mean.get(fn, 1.0) < _HOLD_IF_SHORTER_S

    def _accept(self, entry: Entry) -> None:
        if self.record is not None:  # unpickling runs user code too: it may kill us
            self.record.note(entry.key, entry.attempt)
        try:
            item = TaskItem.unpack(entry.payload)
        except BaseException as exc:  # noqa: BLE001 - one bad payload fails one task
            why = f"the task's arguments could not be unpickled in the worker: {exc!r}"
            job = _Job(entry.key, entry.attempt, None, None)  # type: ignore[arg-type]
            self.emit(job, Outcome.ended("failed", why, time.time(), _type_name(exc)))
            return
        finally:
            if self.record is not None:  # back to the task running now (a Submit may arrive
                self.record.note(*self.current)  # while a command runs), or idle
        self.queue.append(_Job(entry.key, entry.attempt, item, entry.placement))

    def emit(self, job: _Job, outcome: Outcome) -> None:
        """Queue a result; flush unless tasks are tiny."""
        now = time.monotonic()
        if not self.out:
            self.first_out = now
        try:
            payload = dumps(tuple(outcome))  # Outcome.pack, inline: this runs for every task
        except Exception as exc:  # noqa: BLE001 - the value cannot be pickled: that task fails
            outcome = outcome._replace(
                status="failed", value=None, exception_type=_type_name(exc),
                exception=f"the task's return value could not be pickled: {exc!r}",
            )  # fmt: skip
            payload = outcome.pack()
        duration = outcome.end_time - outcome.start_time
        self.out.append(_done((job.key, job.attempt, outcome.status, duration, payload)))
        self.counts[outcome.status] += 1
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
        done, self.out = self.out, []
        interval = self.settings.report_interval_s
        if interval and time.monotonic() >= self.next_report:
            self.next_report = time.monotonic() + interval
            log.info("status: %s", ", ".join(f"{n} {s}" for s, n in self.counts.items()))
        self.channel.send(Results(done=done))

    def run(self, job: _Job) -> Outcome:
        """Run one task; never raises."""
        if job.item.cwd:
            try:
                os.makedirs(job.item.cwd, exist_ok=True)
            except OSError as exc:
                why = f"cannot create run_dir {job.item.cwd!r} on {self.options.node}: {exc}"
                return Outcome.ended("failed", why, time.time(), _type_name(exc))
        try:
            if job.item.fn is not None:
                return self.run_call(job)
            return self.run_command(job)
        except Exception as exc:  # noqa: BLE001 - a launcher bug must not take the worker down
            why = f"internal launcher error: {self._describe(job, exc)}"
            return Outcome.ended("failed", why, time.time(), _type_name(exc))

    # -- Python callables -------------------------------------------------------------------

    def run_call(self, job: _Job) -> Outcome:
        """Run a Python callable in this process."""
        item = job.item
        fn = self.functions.get(item.fn)  # type: ignore[arg-type]
        start = time.time()
        if fn is None or isinstance(fn, BaseException):
            why = f"the function could not be loaded in the worker: {fn!r}"
            return Outcome.ended("failed", why, start, _type_name(fn))
        captured = _TextTail(self.settings.tail_bytes) if self.settings.return_stdout else None
        status, value, exception, exc_type = "success", None, None, None
        plain = not captured and not item.env and not item.cwd and job.placement is None
        if item.timeout:
            signal.setitimer(signal.ITIMER_REAL, item.timeout)
        try:
            if plain:  # the common case, without the context managers' cost
                value = self._call(fn, item)
            else:
                env = self._env_changes(item.env, job.placement)
                with (
                    contextlib.redirect_stdout(captured) if captured else contextlib.nullcontext(),
                    _call_env(env, item.cwd, self._task_cpus(job.placement)),
                ):
                    value = self._call(fn, item)
        except _Timeout:
            status, exception = "timeout", f"timed out after {item.timeout} s"
            self._reset_loop()  # an async task cut by the alarm must not run on in later calls
        except BaseException as exc:  # noqa: BLE001 - a task's failure is data
            status, exc_type = "failed", _type_name(exc)
            exception = self._describe(job, exc)
        finally:
            if item.timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
        stdout = captured.text() if captured else None
        fields = (status, value, stdout, None, None, exception, exc_type, start, time.time())
        return _outcome(fields)

    def _call(self, fn: Callable[..., Any], item: TaskItem) -> Any:
        value = fn(*item.args, **item.kwargs)
        if isinstance(value, types.CoroutineType):
            value = self._event_loop().run_until_complete(value)
        return value

    def _reset_loop(self) -> None:
        """Cancel whatever the event loop still holds and close it (a new one comes if needed)."""
        loop, self.loop = self.loop, None
        if loop is None:
            return
        import asyncio

        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:  # let them unwind their finally blocks, boundedly
            loop.run_until_complete(asyncio.wait(pending, timeout=_KILL_GRACE_S))
        loop.close()

    def _event_loop(self) -> Any:
        if self.loop is None:
            import asyncio  # only workers that run async def functions pay for it

            self.loop = asyncio.new_event_loop()
        return self.loop

    def _describe(self, job: _Job, exc: BaseException) -> str:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[1:])
        head = f"{type(exc).__qualname__}: {exc}"
        cpus = job.placement.cpus if job.placement else (self.options.cpu,)
        where = f"### task {job.key} on node {self.options.node}, cpus {list(cpus)}"
        return f"{head}\n{where}\n{tb}"[-20000:]

    # -- commands ---------------------------------------------------------------------------

    def run_command(self, job: _Job) -> Outcome:
        """Run a command as a child process in its own session."""
        item = job.item
        argv = list(item.argv or ())
        changes = self._env_changes(item.env, job.placement, command=True)
        if item.nnodes * item.ppn > 1 or item.mpi:
            try:
                argv, mpi_env = self._mpi_command(job, argv)
            except EnsembleError as exc:  # no usable MPI launcher here
                return Outcome.ended("failed", str(exc), time.time(), _type_name(exc))
            changes.update(mpi_env)
            changes.pop(self.settings.gpu_selector, None)  # set per rank instead
        env = {**os.environ, **changes} if changes else None
        start = time.time()
        capture = subprocess.PIPE if self.settings.return_stdout else self.devnull
        cpus = self._task_cpus(job.placement)
        try:
            proc = subprocess.Popen(
                argv, stdin=self.devnull, stdout=capture, stderr=subprocess.PIPE, cwd=item.cwd,
                env=env, start_new_session=True,
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )  # fmt: skip
        except OSError as exc:
            return Outcome.ended("failed", f"could not start {argv[0]!r}: {exc}", start,
                                 _type_name(exc))  # fmt: skip
        _current_command.append(proc.pid)
        try:
            return self._watch(job, proc, start)
        finally:
            _current_command.remove(proc.pid)

    def _mpi_command(self, job: _Job, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """The MPI launcher's command for a task on its placement, ranks pinned per host."""
        from core.mpi import HostSlots, RankSlots, detect_launcher, mpi_task_command

        if self.mpi_launcher is None:
            self.mpi_launcher = detect_launcher(self.settings.mpiexec)
        ppn = job.item.ppn
        parts = job.placement.parts if job.placement else (
            HostPart(self.options.node, (self.options.cpu,)),
        )  # fmt: skip
        hosts = []
        for part in parts:
            cpus = _share(part.cpus, ppn) if self.settings.pin else [()] * ppn
            gpus = _share(part.gpus, ppn) if part.gpus else [()] * ppn
            ranks = tuple(RankSlots(tuple(c), tuple(g)) for c, g in zip(cpus, gpus, strict=True))
            hosts.append(HostSlots(part.node, ranks))
        marks = {name: os.environ[name] for name in (RUN_MARKER, CHILD_MARKER, "PYTHONPATH")
                 if name in os.environ}  # fmt: skip
        command = mpi_task_command(self.mpi_launcher, hosts, argv, env=marks,
                                   gpu_selector=self.settings.gpu_selector)  # fmt: skip
        return list(command.argv), dict(command.env)

    def _task_cpus(self, placement: Placement | None) -> set[int] | None:
        """The CPUs a placed task may use, when they differ from this worker's own one."""
        if placement is None or not self.settings.pin or placement.cpus == (self.options.cpu,):
            return None
        return set(placement.cpus)

    def _env_changes(
        self, env: dict[str, str] | None, placement: Placement | None, command: bool = False
    ) -> dict[str, str]:
        """The variables a task runs with beyond this worker's own: its ``env``, its GPUs."""
        changes = dict(env or {})
        if placement is not None:
            if placement.gpus:
                changes[self.settings.gpu_selector] = ",".join(placement.gpus)
            if command:
                changes["ENSEMBLE_MCP_CPUS"] = ",".join(map(str, placement.cpus))
        return changes

    def _watch(self, job: _Job, proc: subprocess.Popen[bytes], start: float) -> Outcome:
        item = job.item
        tails: dict[int, _Tail] = {}
        out_fd = proc.stdout.fileno() if proc.stdout is not None else None
        err_fd = proc.stderr.fileno() if proc.stderr is not None else None
        poller = Poller()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
                tails[stream.fileno()] = _Tail(self.settings.tail_bytes)
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
                if self.channel in ready and self._control(job):
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
        elif status == "cancelled":
            exception = "cancelled while running"
        return Outcome(status, None, stdout, stderr, returncode, exception, None, start,
                       time.time())  # fmt: skip

    def _control(self, running: _Job) -> bool:
        """Handle messages that arrive while a command runs; True if it must be cancelled."""
        cancel = False
        while self.channel.pending():
            message = self.channel.recv()[1]
            if isinstance(message, (Cancel, Shutdown)):
                cancel = cancel or isinstance(message, Shutdown) or running.key in message.keys
            self.handle(message)
        return cancel


def _share(ids: tuple[Any, ...], ranks: int) -> list[tuple[Any, ...]]:
    """``ids`` split into ``ranks`` equal consecutive shares (the scheduler made it divide)."""
    size = len(ids) // ranks
    return [ids[r * size : (r + 1) * size] for r in range(ranks)]


def _type_name(exc: object) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


@contextlib.contextmanager
def _call_env(env: dict[str, str], cwd: str | None, cpus: set[int] | None) -> Iterator[None]:
    """A Python task's ``env``, ``run_dir`` and CPUs, in force for the call, undone after it."""
    if not env and not cwd and cpus is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in env}
    old_cwd = os.getcwd() if cwd else None
    old_cpus = os.sched_getaffinity(0) if cpus is not None else None
    try:
        os.environ.update(env)
        if cwd:
            os.chdir(cwd)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        yield
    finally:
        if old_cpus is not None:
            os.sched_setaffinity(0, old_cpus)
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
    os.chdir(options.cwd)
    if options.settings.report_interval_s:
        logging.getLogger().setLevel(logging.INFO)
    if options.settings.pin and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {options.cpu})
    sys.stdin.close()
    Worker(options).serve()
