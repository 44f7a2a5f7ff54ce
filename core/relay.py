"""A sub-master: starts its share of the tree, routes work down and results up, decides nothing.

It runs on the first node of its share (``python -m core master -``, started by its parent here
or through ``mpiexec``/``srun``/``ssh``). Tasks come down already placed on slots by the top
master's task table; the sub-master forwards each to the child leading to its slot, without
unpickling it. Results go up untouched. It replaces a worker that dies (reporting the slot down,
then up again) and reports a lost sub-master's slots down for good. It exits when told to, or
when its parent has been silent for the heartbeat timeout — killing its subtree first.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time

from core.children import Child, Children, SubMasterOptions, TreeOptions
from core.errors import LaunchError
from core.inventory import probe_node
from core.protocol import (
    Cancel,
    Heartbeat,
    NodeInfo,
    Register,
    Results,
    Shutdown,
    SlotInfo,
    SlotsDown,
    SlotsUp,
    Submit,
)
from core.spawn import die_with_parent
from core.transport import Channel, Poller, new_context, private_dir
from core.tree import children_of

log = logging.getLogger("ensemble_mcp.master")


class Relay:
    """The loop of one sub-master process."""

    def __init__(self, options: SubMasterOptions) -> None:
        self.options = options
        self.tree: TreeOptions = options.tree
        self.run_dir = private_dir()
        self.poller = Poller()
        self.ctx = new_context()
        self.parent = Channel.connect_dealer(
            self.ctx, options.parent_endpoint, options.identity, self.tree.keys
        )
        self.poller.add(self.parent)
        share = self.tree.share
        assert share is not None
        parts = children_of(share, self.tree.nchildren) if self.tree.levels > 0 else []
        self.children = Children(self.tree, self.poller, self.run_dir, (p.host for p in parts))
        self.nodes: tuple[NodeInfo, ...] = ()
        self.up = False
        self.stopping = False
        self.parent_seen = time.monotonic()
        self.next_beat = 0.0
        self.next_restart: float | None = None

    # -- plan -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start this share's children: workers on its node, or sub-masters of its parts."""
        tree, share = self.tree, self.tree.share
        assert share is not None
        if tree.levels > 0:
            for part in children_of(share, tree.nchildren):
                self.children.start_submaster(part)
            return
        config = tree.node_config
        found = probe_node() if config.cpus is None or config.gpus is None else None
        cpus = share.cpus or config.cpus or found.cpus  # type: ignore[union-attr]
        cap = config.slots_of(tree.node)
        if cap is not None:
            cpus = cpus[:cap]
        gpus = config.gpus if config.gpus is not None else found.gpus  # type: ignore[union-attr]
        self.nodes = (NodeInfo(tree.node, tuple(gpus)),)
        for cpu in cpus:
            self.children.start_worker(SlotInfo(f"{tree.node}:{cpu}", tree.node, cpu))

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until told to stop or the parent is gone; the subtree stops first."""
        try:
            self.start()
            while not self.stopping:
                ready = self.poller.poll(self._wait_ms())
                if self.children.router in ready:
                    self._from_children()
                for fd in [fd for fd in self.children.by_pidfd if fd in ready]:
                    self._exited(fd)
                if self.parent in ready:
                    self._from_parent()
                self._tick()
        finally:
            self.children.shutdown()
            self.parent.close()
            self.ctx.term()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _wait_ms(self) -> float:
        wake = (
            self.next_beat if self.next_restart is None else min(self.next_beat, self.next_restart)
        )
        return max(0.0, (wake - time.monotonic()) * 1000)

    def _tick(self) -> None:
        now = time.monotonic()
        tree = self.tree
        self.next_restart = self.children.start_due(now)
        if now - self.parent_seen > tree.heartbeat_timeout_s:
            log.error("no word from the parent for %.0f s: stopping", now - self.parent_seen)
            self.stopping = True
            return
        for child in self.children.overdue(now):
            if child.registered:
                why, limit = "went silent for", tree.heartbeat_timeout_s
            else:
                why, limit = "did not register within", tree.launch_timeout_s
            log.error("%s %s %.0f s: killing it", child.what(), why, limit)
            self.children.kill(child)
        if now >= self.next_beat:
            self.next_beat = now + tree.heartbeat_interval_s
            if self.up:
                self.parent.send(Heartbeat())

    def _from_children(self) -> None:
        for sender, message in self.children.incoming():
            if isinstance(message, Results):
                self.parent.send(message)
            elif isinstance(message, Register):
                self._registered(sender, message)
            elif isinstance(message, (SlotsDown, SlotsUp)):
                self.parent.send(message)

    def _registered(self, sender: bytes, message: Register) -> None:
        child = self.children.registered(sender, message.slots, message.nodes)
        if child is None:
            return
        if self.up:  # a replacement worker
            self.parent.send(SlotsUp(slots=message.slots))
            return
        if all(c.registered for c in self.children.all.values()):
            self.up = True
            slots = tuple(s for c in self.children.all.values() for s in c.slots)
            nodes = self.nodes + tuple(n for c in self.children.all.values() for n in c.nodes)
            self.parent.send(Register(pid=os.getpid(), slots=slots, nodes=nodes))

    def _exited(self, pidfd: int) -> None:
        child, reason = self.children.exited(pidfd)
        if self.stopping:
            return
        if not self.up and not child.registered and (not child.is_worker or child.restarts):
            raise LaunchError(f"{child.what()} died before it registered ({reason}) "
                              f"{child.process.describe()}")  # fmt: skip
        if child.is_worker:
            self._worker_exited(child, reason)
        else:
            lost = f"the {child.what()} was lost ({reason})"
            log.error(lost)
            slots = tuple(s.slot for s in child.slots)
            if slots:
                self.parent.send(SlotsDown(slots=slots, reason=lost, node_lost=True))

    def _worker_exited(self, child: Child, reason: str) -> None:
        assert child.slot is not None
        why = f"the worker process running it died ({reason}) on node {child.slot.node}, " \
              f"cpu {child.slot.cpu}"  # fmt: skip
        if child.registered:
            self.parent.send(SlotsDown(slots=(child.slot.slot,), reason=why,
                                       running=child.running))  # fmt: skip
        if not self.children.replace(child):
            log.error("%s keeps dying before it registers (%s); leaving its slot down",
                      child.what(), reason)  # fmt: skip
            self.parent.send(SlotsDown(slots=(child.slot.slot,), reason=why, gone=True))
            return
        log.warning("%s exited (%s); starting a replacement", child.what(), reason)

    def _from_parent(self) -> None:
        while True:
            try:
                got = self.parent.recv_nowait()
            except Exception:
                log.exception("dropping a bad message from the parent")
                continue
            if got is None:
                return
            message = got[1]
            self.parent_seen = time.monotonic()
            if isinstance(message, Submit):
                self.children.submit(message.entries, message.functions)
            elif isinstance(message, Cancel):
                self.children.cancel(message.slot, message.keys, message.hard)
            elif isinstance(message, Shutdown):
                self.stopping = True
                return


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through Relay.run's finally: children stop first


def main(options: SubMasterOptions) -> None:
    """Run a sub-master process until its parent shuts it down (or is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    die_with_parent()  # here: the master's thread; elsewhere: the MPI daemon or ssh session
    os.chdir(options.tree.cwd)
    Relay(options).run()
