"""The master loop: places tasks on child processes and passes results up.

The same ``Master`` runs in two places: in the client's manager thread (the top of the tree,
``Upstream`` = the Launcher's command queue and result callback) and as a sub-master process
(``Upstream`` = a DEALER socket to its own parent). Its children are workers (one slot each) or
sub-masters (many slots); they are started here, watched through pidfds, and replaced when they
die.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from core.errors import LaunchError, ProtocolError
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
from core.scheduler import Scheduler
from core.spawn import ChildProcess, die_with_parent, kill_left_by, spawn_local, stop_children
from core.transport import Channel, CurveKeys, PeerGone, Poller, new_context, stop_authenticator
from core.worker import WorkerOptions

log = logging.getLogger("ensemble_mcp.master")


@dataclass(frozen=True, slots=True)
class TreeOptions:
    """How a master builds the tree below it."""

    run_id: str
    run_dir: Path
    node: str
    cpus: tuple[int, ...]
    levels_below: int = 0
    nchildren: int | None = None
    transport: str = "ipc"
    bind_host: str = "127.0.0.1"
    pin: bool = True
    return_stdout: bool = False
    tail_bytes: int = 65536
    gpu_selector: str = "ZE_AFFINITY_MASK"
    prefetch: int = 64
    report_interval_s: float = 10.0
    keys: CurveKeys | None = None
    log_dir: str | None = None


@dataclass(frozen=True, slots=True)
class SubMasterOptions:
    """What a sub-master process is handed: its parent, its identity, its subtree."""

    parent_endpoint: str
    identity: bytes
    tree: TreeOptions
    parent_keys: CurveKeys | None = None


class Upstream(Protocol):
    """Where a master's work comes from and where its results go."""

    def watch(self, poller: Poller) -> None:
        """Register what wakes the loop when the upstream has something."""

    def take(self, ready: set[object]) -> list[Submit | Cancel | Shutdown]:
        """Commands that arrived (non-blocking)."""

    def deliver(self, results: list[ResultItem]) -> None:
        """Pass finished tasks up."""

    def started(self, nslots: int, cpus: tuple[int, ...], error: str | None) -> None:
        """The subtree is up (or could not start: ``error``)."""


@dataclass(slots=True)
class _ChildState:
    node: str = ""
    cpus: tuple[int, ...] = ()
    nslots: int = 1
    process: ChildProcess | None = None
    registered: bool = False
    is_worker: bool = True
    slot_cpus: tuple[int, ...] = ()
    sent: set[bytes] = field(default_factory=set)


class Master:
    """One level of the launcher tree."""

    def __init__(self, tree: TreeOptions, upstream: Upstream) -> None:
        self.tree = tree
        self.upstream = upstream
        self.ctx = new_context()
        if tree.transport == "tcp":
            endpoint = f"tcp://{tree.bind_host}:0"
        else:
            endpoint = f"ipc://{tree.run_dir}/m-{os.getpid()}-{id(self):x}.sock"
        self.router = Channel.bind_router(self.ctx, endpoint, tree.keys)
        self.poller = Poller()
        self.poller.add(self.router)
        upstream.watch(self.poller)
        self.scheduler = Scheduler(tree.prefetch)
        self.children: dict[bytes, _ChildState] = {}
        self.by_pidfd: dict[int, bytes] = {}
        self.items: dict[int, TaskItem] = {}
        self.placed: dict[int, bytes] = {}
        self.wide_cpus: dict[int, tuple[int, ...]] = {}
        self.functions: dict[bytes, bytes] = {}
        self.cancelling: set[int] = set()
        self.generation = itertools.count()
        self.groups = itertools.count()
        self.up = False
        self.stopping = False
        self.next_report = time.monotonic() + tree.report_interval_s
        self.counts = {"done": 0, "failed": 0}

    # -- tree -------------------------------------------------------------------------------

    def _plan(self) -> list[tuple[bool, tuple[int, ...]]]:
        """(is_worker, slot cpus) for each child to start."""
        cpus = self.tree.cpus
        if self.tree.levels_below == 0:
            return [(True, (cpu,)) for cpu in cpus]
        n = self.tree.nchildren or max(1, math.isqrt(len(cpus)))
        n = min(n, len(cpus))
        size = -(-len(cpus) // n)
        return [(False, cpus[i : i + size]) for i in range(0, len(cpus), size)]

    def _start_child(self, is_worker: bool, cpus: tuple[int, ...]) -> None:
        tag = "w" if is_worker else "m"
        identity = f"{tag}{cpus[0]}-{next(self.generation)}-{os.getpid()}".encode()
        tree = self.tree
        options: WorkerOptions | SubMasterOptions
        if is_worker:
            options = WorkerOptions(
                endpoint=self.router.endpoint,
                identity=identity,
                node=tree.node,
                cpus=cpus,
                gpu_selector=tree.gpu_selector,
                pin=tree.pin,
                return_stdout=tree.return_stdout,
                tail_bytes=tree.tail_bytes,
                keys=tree.keys,
                report_interval_s=tree.report_interval_s if tree.log_dir else 0.0,
            )
        else:
            sub = TreeOptions(
                **{
                    **{f: getattr(tree, f) for f in tree.__slots__},
                    "cpus": cpus,
                    "levels_below": tree.levels_below - 1,
                }
            )
            options = SubMasterOptions(self.router.endpoint, identity, sub, tree.keys)
        role = "worker" if is_worker else "master"
        log_path = Path(tree.log_dir) / f"{role}-{identity.decode()}.log" if tree.log_dir else None
        process = spawn_local(role, options, tree.run_dir, identity, tree.run_id, log_path)
        self.children[identity] = _ChildState(process=process, is_worker=is_worker, slot_cpus=cpus)
        self.by_pidfd[process.pidfd] = identity
        self.poller.add(process.pidfd)

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Start the children, then serve until shut down."""
        try:
            for is_worker, cpus in self._plan():
                self._start_child(is_worker, cpus)
            while not self.stopping:
                ready = self.poller.poll(self._poll_timeout_ms())
                if self.router.socket in ready:
                    self._drain_children()
                for fd in [fd for fd in self.by_pidfd if fd in ready]:
                    self._child_exited(fd)
                for command in self.upstream.take(ready):
                    self._command(command)
                self._dispatch()
                self._report()
        finally:
            self._shutdown()

    def _poll_timeout_ms(self) -> float | None:
        if log.isEnabledFor(logging.INFO):
            return max(0.0, (self.next_report - time.monotonic()) * 1000)
        return None

    def _report(self) -> None:
        now = time.monotonic()
        if now >= self.next_report:
            self.next_report = now + self.tree.report_interval_s
            log.info(
                "status: %d done, %d failed, %d running or queued on children, %d pending",
                self.counts["done"],
                self.counts["failed"],
                len(self.placed),
                self.scheduler.num_pending,
            )

    def _drain_children(self) -> None:
        while True:
            try:
                sender, message = self.router.recv(block=False)
            except Exception as exc:
                if type(exc).__name__ != "Again":
                    log.exception("dropping a bad message from a child")
                    continue
                return
            assert sender is not None
            if isinstance(message, Results):
                self._results(sender, message.items)
            elif isinstance(message, Register):
                self._registered(sender, message)
            elif isinstance(message, Rejected):
                self._rejected(sender, message)

    def _registered(self, child: bytes, message: Register) -> None:
        state = self.children.get(child)
        if state is None:
            log.warning("ignoring a registration from unknown child %r", child)
            return
        state.node, state.cpus, state.nslots = message.node, message.cpus, message.nslots
        state.registered = True
        self.scheduler.add_child(child, message.node, message.nslots)
        log.info(
            "child %s registered: node %s, cpus %s",
            child.decode(),
            message.node,
            list(message.cpus),
        )
        if not self.up and all(c.registered for c in self.children.values()):
            self.up = True
            cpus = tuple(sorted(c for s in self.children.values() for c in s.cpus))
            self.upstream.started(sum(s.nslots for s in self.children.values()), cpus, None)

    def _results(self, child: bytes, items: list[ResultItem]) -> None:
        state = self.children.get(child)
        out = []
        for item in items:
            key = item.key
            self.items.pop(key, None)
            self.placed.pop(key, None)
            self.cancelling.discard(key)
            self.scheduler.finished(child, key, item.end_time - item.start_time)
            if not item.node and state is not None:
                item = item._replace(node=state.node, cpus=self.wide_cpus.pop(key, state.cpus))
            self.counts["done" if item.status == "success" else "failed"] += 1
            out.append(item)
        self.upstream.deliver(out)

    def _rejected(self, child: bytes, message: Rejected) -> None:
        """Resend the tasks of an undecodable Submit one by one; one alone fails."""
        items = [self.items[key] for key in message.keys if key in self.items]
        if len(items) == 1:
            self._refuse(child, Submit(items=items), ProtocolError(message.error))
            return
        for item in items:
            self._send(child, Submit(items=[item]))

    def _command(self, command: Submit | Cancel | Shutdown) -> None:
        if isinstance(command, Submit):
            self.functions.update(command.functions)
            group = next(self.groups)
            for item in command.items:
                self.items[item.key] = item
                self.scheduler.submit(item.key, item.nprocs, group)
            if command.cpus:
                self.wide_cpus.update(command.cpus)
        elif isinstance(command, Cancel):
            self._cancel(set(command.keys))
        else:
            self.stopping = True

    def _cancel(self, keys: set[int]) -> None:
        now = time.time()
        dropped = self.scheduler.cancel_pending(keys)
        for key in dropped:
            self.items.pop(key, None)
        if dropped:
            self.upstream.deliver(
                [_ended(key, "cancelled", "cancelled before it started", now) for key in dropped]
            )
        by_child: dict[bytes, list[int]] = {}
        for key in keys.difference(dropped):
            child = self.placed.get(key)
            if child is not None:
                by_child.setdefault(child, []).append(key)
                self.cancelling.add(key)
        for child, child_keys in by_child.items():
            self._send(child, Cancel(keys=child_keys))
            state = self.children[child]
            running = self.scheduler.running_on(child)
            item = self.items.get(running) if running is not None else None
            if (
                state.is_worker
                and running in child_keys
                and item is not None
                and item.fn is not None
                and state.process is not None
            ):
                # A Python call cannot be interrupted in place: replace its worker.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(state.process.popen.pid, signal.SIGKILL)

    def _dispatch(self) -> None:
        if self.stopping or not self.scheduler.num_pending:
            return
        batches: dict[bytes, list[TaskItem]] = {}
        wide: dict[bytes, dict[int, tuple[int, ...]]] = {}
        for child, key, helpers in self.scheduler.assign():
            item = self.items[key]
            self.placed[key] = child
            batches.setdefault(child, []).append(item)
            if helpers:
                cpus = self.children[child].cpus + tuple(
                    c for h in helpers for c in self.children[h].cpus
                )
                self.wide_cpus[key] = cpus
                wide.setdefault(child, {})[key] = cpus
        for child, items in batches.items():
            state = self.children[child]
            needed = {i.fn for i in items if i.fn is not None}.difference(state.sent)
            functions = {d: self.functions[d] for d in needed}
            state.sent.update(needed)
            self._send(child, Submit(items=items, functions=functions, cpus=wide.get(child, {})))

    def _send(self, child: bytes, message: Submit | Cancel | Shutdown) -> None:
        try:
            self.router.send(message, to=child)
        except PeerGone:  # its pidfd will tell
            log.warning("could not reach child %s", child.decode())
        except Exception as exc:  # noqa: BLE001 - some argument cannot be pickled
            if not isinstance(message, Submit) or len(message.items) == 1:
                self._refuse(child, message, exc)
                return
            for item in message.items:
                self._send(
                    child, Submit(items=[item], functions=message.functions, cpus=message.cpus)
                )

    def _refuse(
        self, child: bytes, message: Submit | Cancel | Shutdown, exc: BaseException
    ) -> None:
        if not isinstance(message, Submit):
            log.error("could not send %s to %s: %r", type(message).__name__, child.decode(), exc)
            return
        now = time.time()
        for item in message.items:
            self.items.pop(item.key, None)
            self.placed.pop(item.key, None)
            self.scheduler.finished(child, item.key)
        self.upstream.deliver(
            [
                _ended(
                    item.key,
                    "failed",
                    f"the task's arguments could not be sent to a worker: {exc!r}",
                    now,
                    exc_type=type(exc).__qualname__,
                )
                for item in message.items
            ]
        )

    def _child_exited(self, pidfd: int) -> None:
        child = self.by_pidfd.pop(pidfd)
        self.poller.remove(pidfd)
        state = self.children.pop(child)
        assert state.process is not None
        code = state.process.popen.wait()
        state.process.close()
        if state.is_worker:
            kill_left_by(child)  # a command it ran sits in its own session: not signalled
        reason = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if self.stopping:
            return
        if not state.registered:
            error = (
                f"{'worker' if state.is_worker else 'sub-master'} {child.decode()} on "
                f"{self.tree.node} died before it registered ({reason}); its log ends "
                f"with:\n{state.process.log_tail()}"
            )
            log.error(error)
            if not self.up:
                self.upstream.started(0, (), error)
                self.stopping = True
                return
        lost, _ = self.scheduler.remove_child(child) if state.registered else ([], [])
        now = time.time()
        results = []
        for key in lost:
            item = self.items.pop(key, None)
            self.placed.pop(key, None)
            if key in self.cancelling:
                self.cancelling.discard(key)
                results.append(
                    _ended(key, "cancelled", "cancelled while running", now, state.node, state.cpus)
                )
            else:
                what = "worker" if state.is_worker else "sub-master"
                results.append(
                    _ended(
                        key,
                        "failed",
                        f"the {what} process running this task died ({reason}) on "
                        f"node {state.node}, cpus {list(state.cpus)}",
                        now,
                        state.node,
                        state.cpus,
                        "core.errors.WorkerLost",
                    )
                )
            del item
        for key in [k for k, c in self.placed.items() if c == child]:
            del self.placed[key]
        if results:
            self.upstream.deliver(results)
        log.warning("child %s exited (%s); starting a replacement", child.decode(), reason)
        self._start_child(state.is_worker, state.slot_cpus)

    def _shutdown(self) -> None:
        self.stopping = True
        for child, state in self.children.items():
            if state.registered:
                self._send(child, Shutdown())
        processes = [s.process for s in self.children.values() if s.process is not None]
        stop_children(processes)
        now = time.time()
        leftover = [_ended(key, "cancelled", "the launcher shut down", now) for key in self.items]
        self.items.clear()
        if leftover:
            self.upstream.deliver(leftover)
        self.router.close()
        stop_authenticator(self.ctx)
        self.ctx.term()


def _ended(
    key: int,
    status: str,
    why: str,
    now: float,
    node: str = "",
    cpus: tuple[int, ...] = (),
    exc_type: str | None = None,
) -> ResultItem:
    return ResultItem(key, status, None, None, None, None, why, exc_type, now, now, node, cpus)


class ParentLink:
    """Upstream of a sub-master: a DEALER socket to its parent."""

    def __init__(self, options: SubMasterOptions) -> None:
        self.options = options
        self.ctx = new_context()
        self.channel = Channel.connect_dealer(
            self.ctx, options.parent_endpoint, options.identity, options.parent_keys
        )

    def watch(self, poller: Poller) -> None:
        """Wake the loop when the parent sends something."""
        poller.add(self.channel)

    def take(self, ready: set[object]) -> list[Submit | Cancel | Shutdown]:
        """The parent's commands that arrived."""
        commands: list[Submit | Cancel | Shutdown] = []
        if self.channel.socket not in ready:
            return commands
        while self.channel.socket.poll(0):
            try:
                message = self.channel.recv()[1]
            except UndecodableSubmit as exc:
                self.channel.send(Rejected(keys=exc.keys, error=str(exc)))
                continue
            if isinstance(message, (Submit, Cancel, Shutdown)):
                commands.append(message)
        return commands

    def deliver(self, results: list[ResultItem]) -> None:
        """Send results to the parent."""
        self.channel.send(Results(items=results))

    def started(self, nslots: int, cpus: tuple[int, ...], error: str | None) -> None:
        """Register with the parent once the subtree is up."""
        if error is not None:
            raise LaunchError(error)
        self.channel.send(
            Register(node=self.options.tree.node, pid=os.getpid(), cpus=cpus, nslots=nslots)
        )

    def close(self) -> None:
        """Close the link."""
        self.channel.close()
        self.ctx.term()


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through Master.run's finally: children stop first


def main(options: SubMasterOptions) -> None:
    """Run a sub-master process until its parent shuts it down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    die_with_parent()
    link = ParentLink(options)
    try:
        Master(options.tree, link).run()
    finally:
        link.close()
