"""The top master: the I/O loop of the launcher, in the client's manager thread.

It owns the ``TaskTable`` (which decides) and the ``Children`` (its direct children: the workers
of this node at ``nlevels=0``, else sub-masters). Each turn of the loop turns what arrived — the
client's commands, children's messages, exits, timeouts — into table events, and performs the
actions the table returns. It decides nothing itself.

::

    client commands ─► TaskTable.submit/cancel ─┐
    Results / SlotsDown / exits ─► TaskTable ───┼─► actions: Send ─► Children.submit (by slot)
                                                │            CancelOn ─► Children.cancel
                                                └──────────► Deliver ─► ClientLink.deliver
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from core.children import Children, TreeOptions
from core.protocol import Heartbeat, NodeInfo, Register, Results, SlotInfo, SlotsDown, SlotsUp
from core.scheduler import Scheduler
from core.table import Action, CancelOn, Deliver, Final, NewTask, Send, TaskTable
from core.transport import Poller
from core.tree import Share

log = logging.getLogger("ensemble_mcp.master")


@dataclass(frozen=True, slots=True)
class SubmitTasks:
    """Client -> master: queue these tasks as one group."""

    tasks: list[NewTask]
    functions: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelTasks:
    """Client -> master: cancel these tasks."""

    keys: list[int]


@dataclass(frozen=True, slots=True)
class Stop:
    """Client -> master: shut the launcher down."""


Command = SubmitTasks | CancelTasks | Stop


class ClientLink(Protocol):
    """Where the top master's commands come from and where its results go."""

    def watch(self, poller: Poller) -> None:
        """Register what wakes the loop when the client has something."""

    def take(self, ready: set[object]) -> list[Command]:
        """Commands that arrived (non-blocking)."""

    def deliver(self, finals: list[Final]) -> None:
        """Hand ended tasks to the client."""

    def started(self, nslots: int, error: str | None, inventory: Scheduler | None = None) -> None:
        """The tree is up (or could not start: ``error``); ``inventory``: its nodes and slots."""

    def broken(self, why: str) -> None:
        """The master failed: refuse new work at once."""


@dataclass(frozen=True, slots=True)
class TopPlan:
    """What the top master starts."""

    slots: tuple[SlotInfo, ...] = ()
    """At ``nlevels=0``: one worker per slot of this node."""
    gpus: tuple[str, ...] = ()
    """At ``nlevels=0``: this node's GPU units."""
    shares: tuple[Share, ...] = ()
    """At ``nlevels>=1``: one sub-master per share."""


class Master:
    """The top of the launcher tree."""

    def __init__(
        self, tree: TreeOptions, plan: TopPlan, link: ClientLink, run_dir: Path, prefetch: int,
        report_interval_s: float,
    ) -> None:  # fmt: skip
        self.tree = tree
        self.plan = plan
        self.link = link
        self.poller = Poller()
        hosts = [share.host for share in plan.shares] or [tree.node]
        self.children = Children(tree, self.poller, run_dir, hosts)
        link.watch(self.poller)
        self.table = TaskTable(prefetch)
        self.groups = 0
        self.up = False
        self.stopping = False
        self.report_interval_s = report_interval_s
        self.next_restart: float | None = None
        self.next_report = time.monotonic() + report_interval_s

    def run(self) -> None:
        """Start the children, then serve until stopped."""
        try:
            for slot in self.plan.slots:
                self.children.start_worker(slot)
            for share in self.plan.shares:
                self.children.start_submaster(share)
            while not self.stopping:
                ready = self.poller.poll(self._wait_ms())
                now = time.time()
                if self.children.router in ready:
                    self._from_children(now)
                for fd in [fd for fd in self.children.by_pidfd if fd in ready]:
                    self._exited(fd, now)
                for command in self.link.take(ready):  # type: ignore[arg-type]
                    self._command(command, now)
                self._tick(now)
                if self.up and not self.stopping:
                    self._perform(self.table.dispatch())
        except BaseException as exc:  # a launcher bug: every task must still end, failed
            why = f"the launcher's manager failed: {exc!r}"
            self.link.broken(why)  # the client takes no more work from now on
            self._perform(self.table.fail_all(why, time.time()))
            raise
        finally:
            self._perform(self.table.shutdown(time.time()))
            self.children.shutdown()

    def _wait_ms(self) -> float | None:
        if self.next_restart is not None:
            return max(0.0, (self.next_restart - time.monotonic()) * 1000)
        if not self.up or any(not c.is_worker for c in self.children.all.values()):
            return self.tree.heartbeat_interval_s * 1000  # heartbeats and start-up deadlines
        if log.isEnabledFor(logging.INFO):
            return max(0.0, (self.next_report - time.monotonic()) * 1000)
        return None  # only events wake the loop

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.children.submit(action.entries)
            elif isinstance(action, CancelOn):
                self.children.cancel(action.slot, action.keys, action.hard)
            elif isinstance(action, Deliver):
                self.link.deliver(action.finals)

    # -- events -----------------------------------------------------------------------------

    def _from_children(self, now: float) -> None:
        table = self.table
        for sender, message in self.children.incoming():
            if isinstance(message, Results):
                self._perform(table.done(message.done, now))
            elif isinstance(message, Register):
                self._registered(sender, message)
            elif isinstance(message, SlotsDown):
                m = message
                actions = table.slots_down(m.slots, m.reason, now, m.node_lost, m.gone, m.running)
                self._perform(actions)
            elif isinstance(message, SlotsUp):
                table.slots_up(message.slots)
            elif not isinstance(message, Heartbeat):
                log.warning("unexpected %s from a child", type(message).__name__)

    def _registered(self, sender: bytes, message: Register) -> None:
        child = self.children.registered(sender, message.slots, message.nodes)
        if child is None:
            return
        if self.up:  # a replacement worker (nlevels=0)
            self.table.slots_up(message.slots)
            return
        if all(c.registered for c in self.children.all.values()):
            gpus = (NodeInfo(self.tree.node, self.plan.gpus),) if self.plan.slots else ()
            for c in self.children.all.values():
                self.table.add_child(c.identity, c.slots, gpus + c.nodes)
            self.table.ready()
            self.up = True
            self.link.started(self.table.num_slots, None, self.table.scheduler.inventory())

    def _exited(self, pidfd: int, now: float) -> None:
        child, reason = self.children.exited(pidfd)
        if self.stopping:
            return
        if not child.registered and not self.up:
            error = f"the {child.what()} died before it registered ({reason}) " + \
                    child.process.describe()  # fmt: skip
            log.error(error)
            self.link.started(0, error)
            self.stopping = True
            return
        if child.is_worker:
            assert child.slot is not None
            why = f"the worker process running it died ({reason}) on node {child.slot.node}, " \
                  f"cpu {child.slot.cpu}"  # fmt: skip
            if child.registered:
                actions = self.table.slots_down([child.slot.slot], why, now, running=child.running)
                self._perform(actions)
            if self.children.replace(child):
                log.warning("%s exited (%s); starting a replacement", child.what(), reason)
            else:
                log.error("%s keeps dying before it registers; its slot stays down", child.what())
                self._perform(self.table.slots_down([child.slot.slot], why, now, gone=True))
            return
        lost = f"the {child.what()} was lost ({reason})"
        log.error("%s; its tasks run again elsewhere or fail", lost)
        self._perform(self.table.child_lost(child.identity, lost, now))

    def _command(self, command: SubmitTasks | CancelTasks | Stop, now: float) -> None:
        if isinstance(command, SubmitTasks):
            self.children.functions.update(command.functions)
            self.groups += 1
            self._perform(self.table.submit(command.tasks, self.groups, now))
        elif isinstance(command, CancelTasks):
            self._perform(self.table.cancel(command.keys, now))
        else:
            self.stopping = True

    def _tick(self, now: float) -> None:
        monotonic = time.monotonic()
        self.next_restart = self.children.start_due(monotonic)
        for child in self.children.overdue(monotonic):
            if not child.registered and not self.up:
                limit = self.tree.launch_timeout_s
                error = f"the {child.what()} did not register within {limit:.0f} s "
                error += child.process.describe()
                self.link.started(0, error)
                self.stopping = True
                return
            log.error("%s went silent: killing it", child.what())
            self.children.kill(child)  # its exit reports the loss
        if monotonic >= self.next_report:
            self.next_report = monotonic + self.report_interval_s
            if self.up and log.isEnabledFor(logging.INFO):
                per_node = "; ".join(
                    f"{node}: {c['running']} running, {c['done']} done, {c['failed']} failed"
                    + (" (lost)" if c["lost"] else "")
                    for node, c in self.table.status().items()
                )
                log.info("status: %d pending; %s", self.table.scheduler.num_pending, per_node)
