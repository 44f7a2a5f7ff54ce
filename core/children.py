"""The children of one master (workers or sub-masters): their processes, socket and routes.

The top master and every sub-master hold a ``Children``: it binds the socket the children
connect to, starts them (here, or on another node through ``mpiexec``/``srun``/``ssh``), knows
which child leads to which slot, forwards Submits and Cancels by slot, keeps heartbeats with
sub-masters, and tells its owner when a child registers, goes silent or exits. It decides
nothing about tasks.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import shutil
import signal
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ProtocolError
from core.protocol import (
    Cancel,
    Entry,
    Heartbeat,
    Message,
    NodeInfo,
    Shutdown,
    SlotInfo,
    Submit,
)
from core.spawn import (
    ChildProcess,
    child_argv,
    child_env,
    kill_left_by,
    start_child,
    stop_children,
)

if TYPE_CHECKING:
    from core.mpi import Command, MpiLauncher

from core.transport import (
    Channel,
    CurveKeys,
    PeerGone,
    Poller,
    address_towards,
    new_context,
    stop_authenticator,
)
from core.tree import Share

log = logging.getLogger("ensemble_mcp.master")
_MAX_EARLY_DEATHS = 3  # replacements of a slot that die before registering, in a row
_QUICK_DEATH_S = 10.0  # a worker that dies sooner than this after its start died "quickly"
_MAX_BACKOFF_S = 30.0
_RECORD = struct.Struct("qq")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What every worker of a run is told."""

    pin: bool = True
    return_stdout: bool = False
    tail_bytes: int = 65536
    gpu_selector: str = "ZE_AFFINITY_MASK"
    mpiexec: str = "mpiexec"
    task_mpi: bool = False
    report_interval_s: float = 0.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How a node's slots are found: the CPUs and GPUs given, or the node's own."""

    cpus: tuple[int, ...] | None = None
    gpus: tuple[str, ...] | None = None
    slots: tuple[tuple[str, int], ...] = ()
    """Per node, the most slots to use (from a hostfile's counts)."""

    def slots_of(self, node: str) -> int | None:
        """The slot cap of ``node``, if the node list gave one."""
        return dict(self.slots).get(node)


@dataclass(frozen=True, slots=True)
class TreeOptions:
    """How a master builds the tree below it; handed down to every sub-master."""

    run_id: str
    node: str
    levels: int
    """Sub-master levels at and below this master (0: its children are workers)."""
    share: Share | None = None
    nchildren: int | None = None
    local_tcp: bool = False
    """Links within a node over ``tcp://`` (``comm_name='zmq'``) rather than ``ipc://``."""
    bind_host: str | None = None
    """The address to listen on for children on other nodes (None: the route's address)."""
    keys: CurveKeys | None = None
    remote_launcher: tuple[str, str] = ("multiprocessing", "mpiexec")
    """How children start on other hosts: ``(child_executor_name, mpiexec path)``."""
    node_config: NodeConfig = NodeConfig()
    worker: WorkerSettings = WorkerSettings()
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 10.0
    launch_timeout_s: float = 60.0
    log_dir: str | None = None
    cwd: str = "."


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What a worker process is handed by its parent."""

    endpoint: str
    identity: bytes
    node: str
    cpu: int
    slot: str
    settings: WorkerSettings
    keys: CurveKeys | None = None
    cwd: str = "."
    record: str = ""
    """A 16-byte file where the worker notes the task it runs (read by its parent if it dies)."""


@dataclass(frozen=True, slots=True)
class SubMasterOptions:
    """What a sub-master process is handed: its parent, its identity, its share."""

    parent_endpoint: str
    identity: bytes
    tree: TreeOptions


@dataclass(slots=True)
class Child:
    """One child process and what is known of it."""

    identity: bytes
    process: ChildProcess
    started: float
    slot: SlotInfo | None = None
    """A worker's slot."""
    share: Share | None = None
    """A sub-master's share."""
    registered: bool = False
    slots: tuple[SlotInfo, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()
    last_seen: float = 0.0
    sent: set[bytes] = field(default_factory=set)
    restarts: int = 0
    """Workers of this slot in a row that died before they registered."""
    quick: int = 0
    """Workers of this slot in a row that died soon after they started."""
    killed: bool = False
    """Killed on purpose (a hard cancel): its death says nothing about the slot."""
    running: tuple[int, int] | None = None
    """For a dead worker: ``(key, attempt)`` it was running, from its record."""

    @property
    def is_worker(self) -> bool:
        """A worker (one slot) rather than a sub-master."""
        return self.slot is not None

    def what(self) -> str:
        """``worker on h1, cpu 3`` / ``sub-master on h2`` for messages."""
        if self.slot is not None:
            return f"worker on {self.slot.node}, cpu {self.slot.cpu}"
        return f"sub-master on {self.process.host}"


class Children:
    """The processes one master started, the socket they talk to it on, and the routes."""

    def __init__(
        self, tree: TreeOptions, poller: Poller, run_dir: Path, hosts: Iterable[str]
    ) -> None:
        self.tree = tree
        self.poller = poller
        self.run_dir = run_dir
        self.ctx = new_context()
        self.router = Channel.bind_router(self.ctx, self._endpoint(set(hosts)), tree.keys)
        poller.add(self.router)
        self.all: dict[bytes, Child] = {}
        self.by_pidfd: dict[int, bytes] = {}
        self.route: dict[str, bytes] = {}
        self.functions: dict[bytes, bytes] = {}
        self._generation = itertools.count()
        self._next_heartbeat = 0.0
        self._launcher: MpiLauncher | None = None
        self._restarts: list[tuple[float, SlotInfo, int, int]] = []

    def _endpoint(self, hosts: set[str]) -> str:
        """Where children connect: ``tcp://`` (CURVE) if any is on another node, else local."""
        remote = sorted(hosts - {self.tree.node})
        if remote:
            return f"tcp://{self.tree.bind_host or address_towards(remote[0])}:0"
        if self.tree.local_tcp:
            return "tcp://127.0.0.1:0"
        return f"ipc://{self.run_dir}/m-{os.getpid()}-{id(self):x}.sock"

    # -- starting ---------------------------------------------------------------------------

    def replace(self, child: Child) -> bool:
        """Start a replacement for a dead worker; False when its slot should be given up.

        A slot whose workers keep dying before they register is given up after
        ``_MAX_EARLY_DEATHS``; one whose workers keep dying soon after they start (a task that
        kills its worker, a broken environment) is restarted after a growing pause, so that
        nothing spins, and never given up for that alone.
        """
        assert child.slot is not None
        now = time.monotonic()
        restarts = 0 if child.registered else child.restarts + 1
        if restarts > _MAX_EARLY_DEATHS:
            return False
        if child.killed:
            quick = 0
        else:
            quick = child.quick + 1 if now - child.started < _QUICK_DEATH_S else 0
        delay = 0.0 if quick <= 1 else min(_MAX_BACKOFF_S, 0.25 * 2 ** (quick - 2))
        self._restarts.append((now + delay, child.slot, restarts, quick))
        return True

    def start_due(self, now: float) -> float | None:
        """Start the replacements whose pause is over; the time of the next one, if any."""
        waiting = []
        for due, slot, restarts, quick in self._restarts:
            if due <= now:
                child = self.start_worker(slot, restarts)
                child.quick = quick
            else:
                waiting.append((due, slot, restarts, quick))
        self._restarts = waiting
        return min((due for due, *_ in waiting), default=None)

    def start_worker(self, slot: SlotInfo, restarts: int = 0) -> Child:
        """Start a worker for ``slot`` on this node."""
        name = f"w{slot.cpu}-{next(self._generation)}-{os.getpid()}"
        record = self.run_dir / f"{name}.running"
        record.write_bytes(RunningRecord.IDLE)
        options = WorkerOptions(
            self.router.endpoint, name.encode(), slot.node, slot.cpu, slot.slot,
            self.tree.worker, self.tree.keys, self.tree.cwd, str(record),
        )  # fmt: skip
        child = self._start(name, "worker", options, self.tree.node)
        child.slot, child.restarts = slot, restarts
        return child

    def start_submaster(self, share: Share) -> Child:
        """Start a sub-master for ``share`` on its first node (here, or through the launcher)."""
        name = f"m-{share.host}-{next(self._generation)}-{os.getpid()}"
        sub = _replace(self.tree, node=share.host, levels=share.levels - 1, share=share,
                       bind_host=None)  # fmt: skip
        options = SubMasterOptions(self.router.endpoint, name.encode(), sub)
        child = self._start(name, "master", options, share.host)
        child.share = share
        return child

    def _start(self, name: str, role: str, options: object, host: str) -> Child:
        argv = child_argv(role)
        env = child_env(self.tree.run_id, name)
        if host != self.tree.node:
            command = self._remote(host, argv, env)
            argv, env = list(command.argv), {**env, **command.env}
        log_dir = Path(self.tree.log_dir) if self.tree.log_dir else self.run_dir
        log_path = log_dir / f"{role}-{name}.log"
        process = start_child(name.encode(), argv, env, options, log_path, host)
        child = Child(name.encode(), process, started=time.monotonic())
        self.all[child.identity] = child
        self.by_pidfd[process.pidfd] = child.identity
        self.poller.add(process.pidfd)
        return child

    def _remote(self, host: str, argv: list[str], env: dict[str, str]) -> Command:
        """The command that starts ``argv`` on ``host`` (through mpiexec, srun or ssh)."""
        from core.mpi import Flavour, launch_on_host, ssh_command  # masters only, not workers

        kind, mpiexec = self.tree.remote_launcher
        if kind == "ssh":
            return ssh_command(host, argv, env=env)
        if self._launcher is None:
            self._launcher = _mpi_launcher(mpiexec)
        srun_cpus = None
        if self._launcher.flavour is Flavour.SRUN:
            srun_cpus = self.tree.node_config.slots_of(host)
        return launch_on_host(self._launcher, host, argv, env=env, srun_cpus=srun_cpus)

    # -- events -----------------------------------------------------------------------------

    def registered(self, identity: bytes, slots: tuple[SlotInfo, ...],
                   nodes: tuple[NodeInfo, ...]) -> Child | None:  # fmt: skip
        """A child registered; returns it (None if unknown)."""
        child = self.all.get(identity)
        if child is None:
            log.warning("ignoring a registration from unknown child %r", identity)
            return None
        child.registered, child.slots, child.nodes = True, slots, nodes
        child.last_seen = time.monotonic()
        for slot in slots:
            self.route[slot.slot] = identity
        return child

    def incoming(self) -> Iterator[tuple[bytes, Message]]:
        """The messages waiting from children, each sender noted as alive.

        A bad frame (ProtocolError) is logged and dropped; the others are still read.
        """
        while True:
            try:
                got = self.router.recv_nowait()
            except ProtocolError:
                log.exception("dropping a bad message from a child")
                continue
            if got is None:
                return
            sender, message = got
            assert sender is not None  # a ROUTER names every sender
            self.heard_from(sender)
            yield sender, message

    def heard_from(self, identity: bytes) -> None:
        """Any message from a child proves it alive."""
        child = self.all.get(identity)
        if child is not None:
            child.last_seen = time.monotonic()

    def exited(self, pidfd: int) -> tuple[Child, str]:
        """A child's process ended: forget it; returns it and why (exit code or signal)."""
        identity = self.by_pidfd.pop(pidfd)
        self.poller.remove(pidfd)
        child = self.all.pop(identity)
        code = child.process.popen.wait()
        child.process.close()
        if child.is_worker:
            kill_left_by(identity)  # a command it ran sits in its own session: not signalled
            record = self.run_dir / f"{identity.decode()}.running"
            child.running = RunningRecord.read(record)
            record.unlink(missing_ok=True)
        for slot in child.slots:
            if self.route.get(slot.slot) == identity:
                del self.route[slot.slot]
        if code >= 0:
            reason = f"exit code {code}"
        else:
            reason = f"signal {signal.Signals(-code).name}"
        return child, reason

    def overdue(self, now: float) -> list[Child]:
        """Sub-masters silent past the heartbeat timeout, or unregistered past the launch timeout.

        Also sends the registered sub-masters a heartbeat when one is due.
        """
        tree = self.tree
        late = []
        for child in self.all.values():
            if child.is_worker:
                continue
            if child.registered:
                if now - child.last_seen > tree.heartbeat_timeout_s:
                    late.append(child)
            elif now - child.started > tree.launch_timeout_s:
                late.append(child)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + tree.heartbeat_interval_s
            for child in self.all.values():
                if child.registered and not child.is_worker:
                    self.send(child.identity, Heartbeat())
        return late

    def kill(self, child: Child) -> None:
        """SIGKILL a child's process session now (its exit is reported as usual)."""
        child.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.popen.pid, signal.SIGKILL)

    # -- messages ---------------------------------------------------------------------------

    def send(self, identity: bytes, message: Message) -> bool:
        """Send to a child; False if it cannot be reached (its exit will be reported)."""
        try:
            self.router.send(message, to=identity)
        except PeerGone:
            log.warning("could not reach child %s", identity.decode(errors="replace"))
            return False
        return True

    def submit(self, entries: Iterable[Entry], functions: dict[bytes, bytes] | None = None) -> None:
        """Forward tasks to the children that lead to their slots (with the callables they lack).

        Entries whose slot has no route (its child just died) are dropped: the owner learns of
        the loss from the exit and re-queues them.
        """
        if functions:
            self.functions.update(functions)
        batches: dict[bytes, list[Entry]] = {}
        route = self.route
        for entry in entries:
            child = route.get(entry.slot)
            if child is not None:
                batches.setdefault(child, []).append(entry)
        for identity, batch in batches.items():
            state = self.all[identity]
            needed = {e.fn for e in batch if e.fn is not None}.difference(state.sent)
            state.sent.update(needed)
            blobs = {d: self.functions[d] for d in needed}
            self.send(identity, Submit(entries=batch, functions=blobs))

    def cancel(self, slot: str, keys: tuple[int, ...], hard: bool) -> None:
        """Forward a Cancel to the child that leads to ``slot``; ``hard`` on a worker kills it."""
        identity = self.route.get(slot)
        if identity is None:
            return
        child = self.all[identity]
        if hard and child.is_worker:
            self.kill(child)  # a Python call cannot be interrupted in place
        else:
            self.send(identity, Cancel(slot=slot, keys=keys, hard=hard))

    def shutdown(self) -> None:
        """Tell every child to stop, stop their processes, close the socket."""
        for child in self.all.values():
            if child.registered:
                self.send(child.identity, Shutdown())
        stop_children([child.process for child in self.all.values()])
        for child in self.all.values():
            if child.is_worker:
                kill_left_by(child.identity)
        self.all.clear()
        self.router.close()
        stop_authenticator(self.ctx)
        self.ctx.term()


class RunningRecord:
    """The task a worker runs, noted in a small shared file.

    If the worker dies, its parent reads which task was running and blames that one alone.
    """

    IDLE = struct.pack("qq", -1, 0)

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, 16)
        finally:
            os.close(fd)
        self.note = partial(_RECORD.pack_into, self.map, 0)
        """``note(key, attempt)``: the worker starts ``key``; ``note(-1, 0)``: it is idle."""

    @staticmethod
    def read(path: Path) -> tuple[int, int] | None:
        """``(key, attempt)`` running when the worker stopped, or None if idle or unknown."""
        try:
            key, attempt = struct.unpack("qq", path.read_bytes()[:16])
        except (OSError, struct.error):
            return None
        return None if key < 0 else (key, attempt)


def _mpi_launcher(mpiexec: str) -> MpiLauncher:
    """``srun`` inside a Slurm job (when it is on PATH), else ``mpiexec``, flavour detected."""
    from core.mpi import detect_launcher

    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        return detect_launcher("srun")
    return detect_launcher(mpiexec)


def _replace(options: TreeOptions, **changes: object) -> TreeOptions:
    values = {f: getattr(options, f) for f in options.__slots__}
    values.update(changes)
    return TreeOptions(**values)
