"""The launcher service: start once, submit batches many times, stream results, shut down.

::

    Launcher.submit_tasks ─► ClientLink (deque + wake pipe) ─► Master (manager thread, TaskTable)
          ▲                                                    │ Submit / Cancel, by slot
          │ Batch (futures, stream)                            ▼
          └──────── ClientLink.deliver (TaskResult) ◄── Results ── sub-masters ── workers
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import logging
import os
import pickle
import shutil
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import cloudpickle

from core.batch import Batch
from core.config import LauncherConfig, SystemConfig
from core.errors import ConfigError, LauncherBroken, LaunchError
from core.master import CancelTasks, Command, Master, Stop, SubmitTasks
from core.nodes import NodeSpec, discover_nodes
from core.profile import write_profile
from core.protocol import Outcome, dumps, item_fields
from core.result import TaskResult, TaskStatus
from core.runplan import plan_run
from core.scheduler import NARROW, Need, Scheduler
from core.spawn import kill_run
from core.spec_values import contain_run_dir
from core.table import Final, NewTask
from core.task import DEFAULT_OPTIONS, Task, TaskOptions
from core.transport import Poller, private_dir

_STATUS = {s.value: s for s in TaskStatus}
_new_task = partial(tuple.__new__, NewTask)  # a NamedTuple without its Python-level __new__
log = logging.getLogger("ensemble_mcp.master")
_START_MARGIN_S = 30.0


class _ClientLink:
    """The Launcher side of the top Master: a command queue with a wake-up pipe."""

    def __init__(self) -> None:
        self.commands: deque[Command] = deque()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.owners: dict[int, tuple[Batch, int]] = {}
        self.started_event = threading.Event()
        self.start_error: str | None = None
        self.nslots = 0
        self.inventory: Scheduler | None = None
        self.broken_reason: str | None = None

    def push(self, command: Command) -> None:
        self.commands.append(command)
        with contextlib.suppress(BlockingIOError):
            os.write(self.write_fd, b"\0")

    def watch(self, poller: Poller) -> None:
        poller.add(self.read_fd)

    def take(self, ready: set[object]) -> list[Command]:
        if self.read_fd in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.read_fd, 65536):
                    pass
        out = []
        while self.commands:
            out.append(self.commands.popleft())
        return out

    def deliver(self, finals: list[Final]) -> None:
        by_batch: dict[int, tuple[Batch, list[tuple[int, TaskResult]]]] = {}
        owners = self.owners
        for final in finals:
            owner = owners.pop(final.key, None)
            if owner is None:
                continue
            batch, index = owner
            entry = by_batch.get(id(batch))
            if entry is None:
                entry = by_batch[id(batch)] = (batch, [])
            entry[1].append((index, _result(batch, index, final)))
        for batch, done in by_batch.values():
            batch._finish(done)

    def started(self, nslots: int, error: str | None, inventory: Scheduler | None = None) -> None:
        self.nslots, self.start_error, self.inventory = nslots, error, inventory
        self.started_event.set()

    def broken(self, why: str) -> None:
        self.broken_reason = why
        if not self.started_event.is_set():
            self.started(0, why)

    def fail_rest(self, why: str, status: str) -> None:
        """End every task the master never took (submitted as it stopped or failed)."""
        self.commands.clear()
        exc_type = "core.errors.LauncherBroken" if status == "failed" else None
        outcome = Outcome.ended(status, why, time.time(), exc_type)
        self.deliver([_final_of(key, outcome) for key in list(self.owners)])

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def _final_of(key: int, outcome: Outcome) -> Final:
    return Final(key, 0, outcome, outcome.status)


def _result(batch: Batch, index: int, final: Final) -> TaskResult:
    """The one place a TaskResult is made: from a task's final outcome and placement."""
    outcome = final.outcome
    if isinstance(outcome, bytes):
        try:  # the Outcome's fields as a plain tuple (Outcome.pack), read in place
            outcome = pickle.loads(outcome)  # noqa: S301 - from our authenticated workers
        except BaseException as exc:  # noqa: BLE001 - one bad result (even SystemExit) fails one task
            why = f"the task's result could not be unpickled here: {exc!r}"
            outcome = Outcome.ended("failed", why, time.time(), type(exc).__qualname__)
    status, value, stdout, stderr, returncode, exception, exc_type, start, end = outcome
    hosts = final.hosts
    return TaskResult(
        batch.task_ids[index], _STATUS[status], value, stdout, stderr, returncode, exception,
        exc_type, start or None, end or None, hosts[0] if hosts else None, list(final.cpus),
        list(final.gpus), batch.submit_time, final.attempts, list(hosts), list(final.history),
    )  # fmt: skip


class Launcher:
    """A long-lived launcher: worker processes on the slots of the run's nodes, fed over ZeroMQ.

    Example:
        >>> with Launcher() as launcher:                          # doctest: +SKIP
        ...     batch = launcher.submit_tasks([Task(task_id="a", executable=["hostname"])])
        ...     print(batch.results()[0].status)

    Args:
        system_config: what each node offers (default: each node's own CPUs and GPUs).
        launcher_config: how the launcher runs (default: chosen for the node count).
        pin_resources: bind each worker, and each task, to its CPUs.
        nodes: the run's host names, or NodeSpecs with slot counts (default: discovered, see
            ``core.nodes``: a PBS or Slurm job's nodes, a hostfile, or this host).
        return_stdout: overrides the config's ``return_stdout`` (the MCP server always wants
            commands' stdout, whatever the config chosen for the node count says).
    """

    def __init__(
        self,
        system_config: SystemConfig | None = None,
        launcher_config: LauncherConfig | None = None,
        *,
        pin_resources: bool = True,
        nodes: Sequence[str] | Sequence[NodeSpec] | None = None,
        return_stdout: bool | None = None,
    ) -> None:
        self.system_config = system_config
        self.launcher_config = launcher_config or LauncherConfig.auto()
        self._given_config = launcher_config
        self.pin_resources = pin_resources
        self._nodes = None if nodes is None else list(nodes)
        self._return_stdout = return_stdout
        self._link: _ClientLink | None = None
        self._thread: threading.Thread | None = None
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._functions: dict[int, tuple[Callable[..., Any], bytes, bytes]] = {}
        self._run_id = uuid.uuid4().hex[:16]
        self._run_dir: Path | None = None
        self._broken: str | None = None
        self._sent_functions: set[bytes] = set()
        self._profiler: ThreadPoolExecutor | None = None
        self._profiler_lock = threading.Lock()
        self._log_handler: logging.Handler | None = None

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
        """Start the worker tree and wait until every worker has registered.

        Raises:
            ConfigError: the configuration cannot work on these nodes.
            LaunchError: a worker or sub-master could not start (host, argv and output tail).
        """
        with self._lock:
            if self._thread is not None:
                return self
            cfg = self._given_config
            log_dir = None
            if cfg is not None and cfg.worker_logs:
                log_dir = os.path.abspath(cfg.log_dir)
                os.makedirs(log_dir, exist_ok=True)
            if self._nodes and all(isinstance(n, NodeSpec) for n in self._nodes):
                nodes: list[NodeSpec] = self._nodes  # type: ignore[assignment]
            else:
                found = discover_nodes(self._nodes)  # type: ignore[arg-type]
                log.info("launcher %s: %s", self._run_id, found)
                nodes = list(found.nodes)
            given = self._given_config
            if self._return_stdout is not None:
                given = (given or LauncherConfig.auto(len(nodes))).model_copy(
                    update={"return_stdout": self._return_stdout}
                )
            plan = plan_run(
                self.system_config, given, nodes,
                run_id=self._run_id, pin=self.pin_resources, log_dir=log_dir, cwd=os.getcwd(),
            )  # fmt: skip
            self.launcher_config = config = plan.config
            self._log_handler = _master_log_handler(config, self._run_id)
            self._run_dir = run_dir = private_dir()
            self._link = link = _ClientLink()
            master = Master(plan.tree, plan.top, link, run_dir, config.prefetch,
                            config.report_interval)  # fmt: skip
            self._thread = threading.Thread(
                target=self._manage, args=(master, link), name="ensemble-mcp-manager", daemon=True
            )
            self._thread.start()
            _live.add(self)
        wait_s = config.launch_timeout + _START_MARGIN_S
        if not link.started_event.wait(wait_s):
            self.shutdown()
            raise LaunchError(f"workers did not register within {wait_s:.0f} s")
        if link.start_error is not None:
            error = link.start_error
            self.shutdown()
            raise LaunchError(error)
        return self

    def _manage(self, master: Master, link: _ClientLink) -> None:
        try:
            master.run()
        except BaseException as exc:  # the manager thread must never die silently
            self._broken = link.broken_reason or f"the launcher's manager failed: {exc!r}"
            link.broken(self._broken)
            log.exception("the launcher %s is broken; its tasks failed", self._run_id)
        finally:  # whatever the master never took ends too
            crashed = link.broken_reason is not None
            why = link.broken_reason or "the launcher was shut down"
            link.fail_rest(why, "failed" if crashed else "cancelled")

    def shutdown(self, wait: bool = True) -> None:
        """Stop every process of this launcher; unfinished tasks end ``cancelled``."""
        with self._lock:
            thread, link = self._thread, self._link
            if thread is None or link is None:
                return
            self._broken = self._broken or "the launcher was shut down"
            link.push(Stop())
        if wait:
            thread.join()
            if self._profiler is not None:
                self._profiler.shutdown(wait=True)
            if self._log_handler is not None:
                log.removeHandler(self._log_handler)
                self._log_handler.close()
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

    def _push(self, command: Command) -> None:
        if self._link is None:
            raise LauncherBroken("the launcher is not started; call start() first")
        self._link.push(command)

    def _cancel(self, keys: list[int]) -> None:
        if self._link is not None:
            self._link.push(CancelTasks(keys))

    def _write_profile(self, batch: Batch) -> None:
        """Hand a finished batch's profile to the writer thread (not the master's)."""
        config = self.launcher_config
        with self._profiler_lock:  # the client and the manager thread may both get here
            if self._profiler is None:
                self._profiler = ThreadPoolExecutor(1, thread_name_prefix="ensemble-mcp-profile")
        batch.profile = self._profiler.submit(
            write_profile, batch.results(), config.profile, config.profile_dir,  # type: ignore[arg-type]
            slots=self.slots, num_slots=self.num_slots, run_id=self._run_id,
        )  # fmt: skip

    @property
    def slots(self) -> list[tuple[str, int]]:
        """Every slot as ``(node, cpu)``, as the launcher started (empty before ``start``)."""
        inventory = self._link.inventory if self._link else None
        if inventory is None:
            return []
        return [(inventory.nodes[s.node].name, s.cpu) for s in inventory.slots]

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

    def _submit(
        self,
        tasks: list[NewTask],
        task_ids: list[str],
        functions: dict[bytes, bytes],
        refused: dict[int, Outcome],
    ) -> Batch:
        """Hand tasks to the master as one group; ``refused`` (by index) end at once."""
        if self._link is not None and self._link.broken_reason is not None:
            self._broken = self._link.broken_reason
        if self._broken is not None or self._link is None:
            raise LauncherBroken(self._broken or "the launcher is not started; call start()")
        keys = [task.key for task in tasks]
        batch = Batch(self._cancel, task_ids, keys)
        if self.launcher_config.profile is not None:
            batch.on_done = self._write_profile
        owners = self._link.owners
        for index, key in enumerate(keys):
            owners[key] = (batch, index)
        new = {d: b for d, b in functions.items() if d not in self._sent_functions}
        self._sent_functions.update(new)
        accepted = [task for i, task in enumerate(tasks) if i not in refused]
        if accepted:
            self._push(SubmitTasks(accepted, new))
        if refused:
            for index in refused:
                owners.pop(keys[index], None)
            batch._finish([
                (index, _result(batch, index, Final(keys[index], 0, outcome, outcome.status)))
                for index, outcome in refused.items()
            ])  # fmt: skip
        return batch

    def submit_tasks(self, tasks: Iterable[Task]) -> Batch:
        """Submit tasks; returns at once with their Batch.

        Raises:
            ConfigError: a task asks for what no launcher can give (a Python callable over
                several processes, an affinity list that cannot be shared evenly).
        """
        new_tasks: list[NewTask] = []
        task_ids: list[str] = []
        functions: dict[bytes, bytes] = {}
        refused: dict[int, Outcome] = {}
        config = self.launcher_config
        run_dirs: dict[str | None, str | None] = {}
        defaults = self._retries(None, None)
        with self._lock:
            for index, task in enumerate(tasks):
                run_dir = run_dirs.get(task.run_dir, "")
                if run_dir == "":
                    run_dir = run_dirs[task.run_dir] = self._task_dir(task.run_dir, task.task_id)
                if (task.nnodes == task.ppn == 1 and not task.ngpus_per_process
                        and not task.cpu_affinity and not task.gpu_affinity):  # fmt: skip
                    need = NARROW  # the common case, without building a Need
                else:
                    need = Need.of(task.nnodes, task.ppn, task.ngpus_per_process,
                                   task.cpu_affinity, task.gpu_affinity)  # fmt: skip
                if task.kind == "python":
                    if task.nprocs > 1:
                        raise ConfigError(
                            f"task {task.task_id}: a Python callable runs in one process; "
                            f"nnodes={task.nnodes}, ppn={task.ppn} need a command"
                        )
                    digest, blob = self._function(task.executable)  # type: ignore[arg-type]
                    functions[digest] = blob
                    item = item_fields(digest, task.args, task.kwargs, None, task.env or None,
                                       run_dir, task.timeout)  # fmt: skip
                else:
                    item = item_fields(
                        None, (), {}, task.argv(), task.env or None, run_dir, task.timeout,
                        task.nnodes, task.ppn, config.task_executor_name == "mpi",
                    )  # fmt: skip
                if task.max_retries is None and task.failure_retries is None:
                    retries = defaults
                else:
                    retries = self._retries(task.max_retries, task.failure_retries)
                new_tasks.append(self._new(item, need, refused, index, retries))
                task_ids.append(task.task_id)
            return self._submit(new_tasks, task_ids, functions, refused)

    def _task_dir(self, run_dir: str | None, task: str) -> str | None:
        """The directory a task runs in: ``run_dir``, kept inside ``run_root`` when one is set."""
        root = self.launcher_config.run_root
        if root is None:
            return run_dir
        try:
            return contain_run_dir(run_dir, root)
        except ValueError as exc:
            raise ConfigError(f"{task}: {exc}") from None

    def _retries(self, max_retries: int | None, failure_retries: int | None) -> tuple[int, int]:
        """A task's retry counts: its own, or the launcher's where it has none."""
        config = self.launcher_config
        return (
            config.max_retries if max_retries is None else max_retries,
            config.failure_retries if failure_retries is None else failure_retries,
        )

    def _new(
        self,
        item: tuple[Any, ...],
        need: Need,
        refused: dict[int, Outcome],
        index: int,
        retries: tuple[int, int],
    ) -> NewTask:
        """A task for the table, with ``item`` (a TaskItem's fields) pickled here, once.

        A plain tuple is cheaper to pickle and unpickle than the NamedTuple.
        """
        key = next(self._keys)
        try:
            payload = dumps(item)
        except Exception as exc:  # noqa: BLE001 - an unpicklable argument fails its task only
            why = f"the task's arguments could not be sent to a worker: {exc!r}"
            refused[index] = Outcome.ended("failed", why, time.time(), type(exc).__qualname__)
            payload = b""
        fields = (key, payload, item[0], need, *retries)
        return _new_task(fields)

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
        if options.nprocs > 1:
            raise ConfigError(
                f"a Python callable runs in one process; nnodes={options.nnodes}, "
                f"ppn={options.ppn} need a command"
            )
        need = _need(options)
        env, timeout = options.env or None, options.timeout
        run_dir = self._task_dir(options.run_dir, "the tasks")
        retries = self._retries(options.max_retries, options.failure_retries)
        refused: dict[int, Outcome] = {}
        with self._lock:
            digest, blob = self._function(fn)
            new_tasks = [
                self._new(
                    item_fields(digest, args, kwargs, None, env, run_dir, timeout),
                    need,
                    refused,
                    i,
                    retries,
                )
                for i, (args, kwargs) in enumerate(calls)
            ]
            ids = _ids(task_ids, new_tasks)
            return self._submit(new_tasks, ids, {digest: blob}, refused)

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
        need = _need(options)
        env, timeout = options.env or None, options.timeout
        run_dir = self._task_dir(options.run_dir, "the tasks")
        retries = self._retries(options.max_retries, options.failure_retries)
        mpi = self.launcher_config.task_executor_name == "mpi"
        nnodes, ppn = options.nnodes, options.ppn
        refused: dict[int, Outcome] = {}
        with self._lock:
            new_tasks = [
                self._new(
                    item_fields(None, (), {}, list(argv), env, run_dir, timeout, nnodes, ppn, mpi),
                    need,
                    refused,
                    i,
                    retries,
                )
                for i, argv in enumerate(commands)
            ]
            return self._submit(new_tasks, _ids(task_ids, new_tasks), {}, refused)

    def why_unplaceable(self, options: TaskOptions) -> str | None:
        """Why no node of this launcher can ever run a task with ``options``; None if one can.

        Judged on the nodes the launcher started with.
        """
        inventory = self._link.inventory if self._link else None
        if inventory is None:
            return "the launcher is not started"
        why = inventory.why_unplaceable(_need(options))
        return None if why is None else f"the task {why}"

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; the future gives its value or raises."""
        return self._value_future(self.map_tasks(fn, [(args, kwargs)]).futures[0])

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


def _master_log_handler(config: LauncherConfig, run_id: str) -> logging.Handler | None:
    """``master_logs``: the master's lines (status every ``report_interval``) to a file."""
    if not config.master_logs:
        return None
    os.makedirs(config.log_dir, exist_ok=True)
    handler = logging.FileHandler(Path(config.log_dir) / f"master-{run_id}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _need(options: TaskOptions) -> Need:
    if options is DEFAULT_OPTIONS:  # identity: a pydantic == compares every field
        return NARROW
    return Need.of(options.nnodes, options.ppn, options.ngpus_per_process, options.cpu_affinity,
                   options.gpu_affinity)  # fmt: skip


def _ids(task_ids: Iterable[str] | None, tasks: list[NewTask]) -> list[str]:
    if task_ids is None:
        return [f"task-{task.key}" for task in tasks]
    ids = list(task_ids)
    if len(ids) != len(tasks):
        raise ConfigError(f"{len(ids)} task ids for {len(tasks)} tasks")
    return ids


_live: weakref.WeakSet[Launcher] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for launcher in list(_live):
        launcher.shutdown()
