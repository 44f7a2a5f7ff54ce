"""The launcher service: start once, submit batches many times, stream results, shut down.

::

    Launcher.submit_tasks ─► _ClientLink (deque + wake pipe) ─► Master (manager thread)
          ▲                                                      │ Submit / Cancel
          │ Batch (futures, stream)                              ▼
          └──────────── _ClientLink.deliver ◄── Results ── Worker processes (one per slot)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import itertools
import os
import shutil
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import cloudpickle

from core.config import LauncherConfig, SystemConfig, hostname
from core.errors import ConfigError, LauncherBroken, LaunchError
from core.master import Master, TreeOptions
from core.protocol import Cancel, ResultItem, Shutdown, Submit, TaskItem
from core.result import TaskResult, TaskStatus
from core.spawn import kill_run
from core.task import DEFAULT_OPTIONS, Task, TaskOptions
from core.transport import CurveKeys, Poller, private_dir

_STATUS = {s.value: s for s in TaskStatus}
_START_TIMEOUT_S = 120.0


class Batch:
    """Tasks submitted together: their futures, a result stream, and cancellation."""

    def __init__(self, launcher: Launcher, task_ids: list[str], keys: list[int]) -> None:
        self._launcher = launcher
        self.task_ids = task_ids
        self._keys = keys
        self._results: list[TaskResult | None] = [None] * len(task_ids)
        self._order: list[TaskResult] = []
        self._order_index: list[int] = []
        self.submit_time = time.time()
        self._futures: list[Future[TaskResult]] | None = None
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def num_done(self) -> int:
        """How many tasks have ended."""
        return len(self._order)

    def done(self) -> bool:
        """True when every task has ended."""
        return len(self._order) == len(self.task_ids)

    @property
    def futures(self) -> list[Future[TaskResult]]:
        """One future per task, in submission order; they resolve to TaskResult, never raise."""
        with self._cond:
            if self._futures is None:
                futures: list[Future[TaskResult]] = []
                for result in self._results:
                    future: Future[TaskResult] = Future()
                    future.set_running_or_notify_cancel()
                    if result is not None:
                        future.set_result(result)
                    futures.append(future)
                self._futures = futures
            return self._futures

    def _finish(self, done: list[tuple[int, TaskResult]]) -> None:
        with self._cond:
            for index, result in done:
                self._results[index] = result
                self._order.append(result)
                self._order_index.append(index)
                if self._futures is not None:
                    self._futures[index].set_result(result)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    def results(self, timeout: float | None = None) -> list[TaskResult]:
        """Wait for every task; results in submission order."""
        with self._cond:
            if not self._cond.wait_for(self.done, timeout):
                raise TimeoutError(f"{len(self) - self.num_done} of {len(self)} tasks still run")
        return self._results  # type: ignore[return-value]

    def as_completed(self, timeout: float | None = None) -> Iterator[TaskResult]:
        """Yield results as tasks end (completion order)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while seen < len(self):
            with self._cond:
                left = None if deadline is None else deadline - time.monotonic()
                if not self._cond.wait_for(partial(self._more_than, seen), left):
                    raise TimeoutError(f"{len(self) - seen} tasks still run")
                new = self._order[seen:]
            seen += len(new)
            yield from new

    def _more_than(self, seen: int) -> bool:
        return len(self._order) > seen

    async def stream(self) -> AsyncIterator[TaskResult]:
        """Yield results as tasks end (completion order), without blocking the event loop."""
        async for _, result in self.stream_indexed():
            yield result

    async def stream_indexed(self) -> AsyncIterator[tuple[int, TaskResult]]:
        """Yield ``(index in the batch, result)`` as tasks end, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        seen = 0
        while seen < len(self):
            event = None
            with self._cond:
                new = list(zip(self._order_index[seen:], self._order[seen:], strict=True))
                if not new:
                    event = asyncio.Event()
                    self._waiters.append((loop, event))
            if event is not None:
                await event.wait()
                continue
            seen += len(new)
            for pair in new:
                yield pair

    async def wait(self) -> list[TaskResult]:
        """Wait (async) for every task; results in submission order."""
        async for _ in self.stream():
            pass
        return self._results  # type: ignore[return-value]

    def cancel(self) -> None:
        """Cancel every task that has not ended; each still yields a ``cancelled`` result."""
        with self._cond:
            keys = [k for k, r in zip(self._keys, self._results, strict=True) if r is None]
        if keys:
            self._launcher._push(Cancel(keys=keys))


class _ClientLink:
    """The Launcher side of the top Master: a command queue with a wake-up pipe."""

    def __init__(self) -> None:
        self.commands: deque[Submit | Cancel | Shutdown] = deque()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.owners: dict[int, tuple[Batch, int, str]] = {}
        self.started_event = threading.Event()
        self.start_error: str | None = None
        self.nslots = 0
        self.cpus: tuple[int, ...] = ()

    def push(self, command: Submit | Cancel | Shutdown) -> None:
        self.commands.append(command)
        with contextlib.suppress(BlockingIOError):
            os.write(self.write_fd, b"\0")

    def watch(self, poller: Poller) -> None:
        poller.add(self.read_fd)

    def take(self, ready: set[object]) -> list[Submit | Cancel | Shutdown]:
        if self.read_fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.read_fd, 65536):
                    pass
        out = []
        while self.commands:
            out.append(self.commands.popleft())
        return out

    def deliver(self, results: list[ResultItem]) -> None:
        by_batch: dict[int, tuple[Batch, list[tuple[int, TaskResult]]]] = {}
        owners = self.owners
        for item in results:
            owner = owners.pop(item.key, None)
            if owner is None:
                continue
            batch, index, task_id = owner
            result = TaskResult(
                task_id,
                _STATUS[item.status],
                item.value,
                item.stdout,
                item.stderr,
                item.returncode,
                item.exception,
                item.exception_type,
                item.start_time,
                item.end_time,
                item.node,
                list(item.cpus),
                submit_time=batch.submit_time,
            )
            entry = by_batch.get(id(batch))
            if entry is None:
                entry = by_batch[id(batch)] = (batch, [])
            entry[1].append((index, result))
        for batch, done in by_batch.values():
            batch._finish(done)

    def started(self, nslots: int, cpus: tuple[int, ...], error: str | None) -> None:
        self.nslots, self.cpus, self.start_error = nslots, cpus, error
        self.started_event.set()

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class Launcher:
    """A long-lived launcher: worker processes on this node's slots, fed over ZeroMQ.

    Example:
        >>> with Launcher() as launcher:                          # doctest: +SKIP
        ...     batch = launcher.submit_tasks([Task(task_id="a", executable=["hostname"])])
        ...     print(batch.results()[0].status)
    """

    def __init__(
        self,
        system_config: SystemConfig | None = None,
        launcher_config: LauncherConfig | None = None,
        *,
        pin_resources: bool = True,
    ) -> None:
        self.system_config = system_config or SystemConfig()
        self.launcher_config = launcher_config or LauncherConfig.auto()
        self.pin_resources = pin_resources
        self._link: _ClientLink | None = None
        self._thread: threading.Thread | None = None
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._functions: dict[int, tuple[Callable[..., Any], bytes, bytes]] = {}
        self._run_id = uuid.uuid4().hex[:16]
        self._run_dir: Path | None = None
        self._broken: str | None = None
        self._sent_functions: set[bytes] = set()

    # -- life cycle -------------------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        """Slots (task processes that run at once) once started."""
        return self._link.nslots if self._link else 0

    @property
    def run_id(self) -> str:
        """The mark carried by every process of this launcher (``ENSEMBLE_MCP_RUN``)."""
        return self._run_id

    def start(self) -> Launcher:
        """Start the worker tree and wait until every worker has registered."""
        with self._lock:
            if self._thread is not None:
                return self
            cfg = self.launcher_config
            if cfg.child_executor_name == "mpi":
                raise ConfigError(
                    "child_executor_name='mpi' starts children on other nodes "
                    "through mpiexec, which this version does not do yet; use "
                    "'multiprocessing' (children on this node)"
                )
            self._run_dir = private_dir()
            tree = TreeOptions(
                run_id=self._run_id,
                run_dir=self._run_dir,
                node=hostname(),
                cpus=tuple(self.system_config.cpus),
                levels_below=cfg.nlevels,
                nchildren=cfg.nchildren or 1,
                transport="tcp" if cfg.comm_name == "zmq" else "ipc",
                bind_host=cfg.bind_host,
                pin=self.pin_resources,
                return_stdout=cfg.return_stdout,
                tail_bytes=cfg.tail_bytes,
                gpu_selector=cfg.gpu_selector,
                prefetch=cfg.prefetch,
                report_interval_s=cfg.report_interval,
                keys=CurveKeys.generate() if cfg.comm_name == "zmq" else None,
                log_dir=os.path.abspath(cfg.log_dir) if cfg.worker_logs else None,
            )
            if cfg.worker_logs:
                os.makedirs(cfg.log_dir, exist_ok=True)
            self._link = link = _ClientLink()
            self._thread = threading.Thread(
                target=self._manage, args=(tree, link), name="ensemble-mcp-manager", daemon=True
            )
            self._thread.start()
            _live.add(self)
        if not link.started_event.wait(_START_TIMEOUT_S):
            self.shutdown()
            raise LaunchError(f"workers did not register within {_START_TIMEOUT_S:.0f} s")
        if link.start_error is not None:
            error = link.start_error
            self.shutdown()
            raise LaunchError(error)
        return self

    def _manage(self, tree: TreeOptions, link: _ClientLink) -> None:
        try:
            Master(tree, link).run()
        except BaseException as exc:  # the manager thread must never die silently
            self._broken = f"the launcher's manager thread failed: {exc!r}"
            link.started(0, (), self._broken)
            now = time.time()
            link.deliver(
                [
                    ResultItem(
                        k,
                        "failed",
                        None,
                        None,
                        None,
                        None,
                        self._broken,
                        "core.errors.LauncherBroken",
                        now,
                        now,
                    )
                    for k in list(link.owners)
                ]
            )
            raise

    def shutdown(self, wait: bool = True) -> None:
        """Stop every process of this launcher; unfinished tasks end ``cancelled``."""
        with self._lock:
            thread, link = self._thread, self._link
            if thread is None or link is None:
                return
            self._broken = self._broken or "the launcher was shut down"
            link.push(Shutdown())
        if wait:
            thread.join()
            kill_run(self._run_id)
            link.close()
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
        _live.discard(self)

    def __enter__(self) -> Launcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- submission -------------------------------------------------------------------------

    def _push(self, command: Submit | Cancel | Shutdown) -> None:
        if self._link is None:
            raise LauncherBroken("the launcher is not started; call start() first")
        self._link.push(command)

    def _function(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        cached = self._functions.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2]
        try:
            blob = cloudpickle.dumps(fn)
        except Exception as exc:
            raise ConfigError(f"cannot send {fn!r} to the workers: {exc}") from exc
        digest = hashlib.blake2b(blob, digest_size=16).digest()
        self._functions[id(fn)] = (fn, digest, blob)
        return digest, blob

    def _submit_items(
        self, items: list[TaskItem], task_ids: list[str], functions: dict[bytes, bytes]
    ) -> Batch:
        if self._broken is not None or self._link is None:
            raise LauncherBroken(self._broken or "the launcher is not started; call start()")
        batch = Batch(self, task_ids, [item.key for item in items])
        owners = self._link.owners
        for index, (item, task_id) in enumerate(zip(items, task_ids, strict=True)):
            owners[item.key] = (batch, index, task_id)
        new = {d: b for d, b in functions.items() if d not in self._sent_functions}
        self._sent_functions.update(new)
        if items:
            self._push(Submit(items=items, functions=new))
        return batch

    def submit_tasks(self, tasks: Iterable[Task]) -> Batch:
        """Submit tasks; returns at once with their Batch."""
        items: list[TaskItem] = []
        task_ids: list[str] = []
        functions: dict[bytes, bytes] = {}
        with self._lock:
            for task in tasks:
                items.append(self._item(task, functions))
                task_ids.append(task.task_id)
            return self._submit_items(items, task_ids, functions)

    def _item(self, task: Task, functions: dict[bytes, bytes]) -> TaskItem:
        _check_supported(task)
        key = next(self._keys)
        if task.run_dir:
            os.makedirs(task.run_dir, exist_ok=True)
        if task.kind == "python":
            if task.nprocs > 1:
                raise ConfigError(
                    f"task {task.task_id}: a Python callable runs in one process; "
                    f"nnodes={task.nnodes}, ppn={task.ppn} need a command"
                )
            digest, blob = self._function(task.executable)  # type: ignore[arg-type]
            functions[digest] = blob
            return TaskItem(
                key,
                digest,
                task.args,
                task.kwargs,
                None,
                task.env or None,
                task.run_dir,
                task.timeout,
            )
        argv = [*self._mpi_prefix(task.nprocs), *task.argv()]
        return TaskItem(
            key, None, (), {}, argv, task.env or None, task.run_dir, task.timeout, task.nprocs
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; the future gives its value or raises."""
        return self._value_future(self.map_tasks(fn, [(args, kwargs)]).futures[0])

    def map_tasks(
        self,
        fn: Callable[..., Any],
        calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        options: TaskOptions = DEFAULT_OPTIONS,
        task_ids: Iterable[str] | None = None,
    ) -> Batch:
        """One task per ``(args, kwargs)`` pair, without building Task models (fast path).

        Args:
            fn: the callable each task runs.
            calls: the arguments of each task.
            options: settings shared by every task (validated once).
            task_ids: one id per task (default ``task-<n>``).

        Raises:
            ConfigError: ``options`` ask for what a Python task cannot have, or ``fn`` cannot
                be pickled.
        """
        _check_options(options, "these tasks")
        if options.nprocs > 1:
            raise ConfigError(
                f"a Python callable runs in one process; nnodes={options.nnodes}, "
                f"ppn={options.ppn} need a command"
            )
        env, run_dir, timeout = options.env or None, options.run_dir, options.timeout
        if run_dir:
            os.makedirs(run_dir, exist_ok=True)
        with self._lock:
            digest, blob = self._function(fn)
            items = [
                TaskItem(next(self._keys), digest, args, kwargs, None, env, run_dir, timeout)
                for args, kwargs in calls
            ]
            ids = _ids(task_ids, items)
            return self._submit_items(items, ids, {digest: blob})

    def submit_commands(
        self,
        commands: Iterable[Sequence[str]],
        *,
        options: TaskOptions = DEFAULT_OPTIONS,
        task_ids: Iterable[str] | None = None,
    ) -> Batch:
        """One task per argv list, without building Task models (fast path).

        Args:
            commands: the argv of each task (no shell).
            options: settings shared by every task (validated once).
            task_ids: one id per task (default ``task-<n>``).
        """
        _check_options(options, "these tasks")
        env, run_dir, timeout = options.env or None, options.run_dir, options.timeout
        if run_dir:
            os.makedirs(run_dir, exist_ok=True)
        prefix = self._mpi_prefix(options.nprocs)
        with self._lock:
            items = [
                TaskItem(
                    next(self._keys),
                    None,
                    (),
                    {},
                    [*prefix, *argv],
                    env,
                    run_dir,
                    timeout,
                    options.nprocs,
                )
                for argv in commands
            ]
            return self._submit_items(items, _ids(task_ids, items), {})

    def why_unplaceable(self, options: TaskOptions) -> str | None:
        """Why no node of this launcher can ever run a task with ``options``; None if one can."""
        if options.nnodes > 1:
            return f"nnodes={options.nnodes}, but this launcher runs on 1 node"
        if options.nprocs > self.num_slots:
            return (
                f"ppn={options.ppn} asks for {options.nprocs} CPU slots on one node, but the "
                f"largest node has {self.num_slots}"
            )
        return None

    def _mpi_prefix(self, nprocs: int) -> list[str]:
        if nprocs > 1 or self.launcher_config.task_executor_name == "mpi":
            return [self.launcher_config.mpiexec, "-n", str(nprocs)]
        return []

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None
    ) -> Iterator[Any]:
        """Like ``Executor.map``: values in order; the first failure raises its TaskError."""
        batch = self.map_tasks(fn, ((args, {}) for args in zip(*iterables, strict=False)))

        def values() -> Iterator[Any]:
            for result in batch.results(timeout):
                yield result.unwrap()

        return values()

    @staticmethod
    def _value_future(inner: Future[TaskResult]) -> Future[Any]:
        outer: Future[Any] = Future()
        outer.set_running_or_notify_cancel()

        def copy(done: Future[TaskResult]) -> None:
            result = done.result()
            try:
                outer.set_result(result.unwrap())
            except Exception as exc:  # noqa: BLE001 - a TaskError carries the record
                outer.set_exception(exc)

        inner.add_done_callback(copy)
        return outer


def _ids(task_ids: Iterable[str] | None, items: list[TaskItem]) -> list[str]:
    if task_ids is None:
        return [f"task-{item.key}" for item in items]
    ids = list(task_ids)
    if len(ids) != len(items):
        raise ConfigError(f"{len(ids)} task ids for {len(items)} tasks")
    return ids


def _check_options(options: TaskOptions, what: str) -> None:
    """Refuse what this version cannot honour, rather than ignore it silently."""
    if options.cpu_affinity or options.gpu_affinity:
        raise ConfigError(
            f"{what}: cpu_affinity/gpu_affinity are not honoured yet; remove them (each task is "
            "already pinned to the CPU slot it runs on)"
        )
    if options.ngpus_per_process:
        raise ConfigError(
            f"{what}: ngpus_per_process={options.ngpus_per_process}, but GPU placement is not "
            "available in this version"
        )


def _check_supported(task: Task) -> None:
    """Refuse what this version cannot honour, rather than ignore it silently."""
    if task.cpu_affinity or task.gpu_affinity:
        raise ConfigError(
            f"task {task.task_id}: cpu_affinity/gpu_affinity are not honoured yet; "
            "remove them (each task is already pinned to the CPU slot it runs on)"
        )
    if task.ngpus_per_process:
        raise ConfigError(
            f"task {task.task_id}: ngpus_per_process={task.ngpus_per_process}, but "
            "GPU placement is not available in this version"
        )


_live: weakref.WeakSet[Launcher] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for launcher in list(_live):
        launcher.shutdown()
