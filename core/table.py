"""The task table: every task's state, and the one place that decides what happens to it.

Pure and synchronous (no sockets, no clock reads: the time comes in as ``now``). The top master
feeds it events — tasks submitted, children registered, attempts done, slots lost, cancels — and
performs the actions it returns:

- ``Send(child, entries)``: start these tasks on slots behind ``child``;
- ``CancelOn(child, slot, keys, hard)``: stop these tasks on a slot (``hard``: replace its worker,
  for a Python call, which cannot be interrupted in place);
- ``Deliver(finals)``: these tasks have ended for good, each exactly once.

Retries: a task whose worker or node is lost while it runs starts again elsewhere, up to
``max_retries`` times; a task that failed by itself (exception, non-zero exit, timeout) starts
again only up to its ``failure_retries``. Tasks queued behind a lost slot are queued again
without counting an attempt. A result for an attempt that is no longer current (its slot was
declared lost and the task re-placed) is dropped, so no task is delivered twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from core.protocol import Done, Entry, NodeInfo, Outcome, Placement, SlotInfo
from core.scheduler import NARROW, Need, Scheduler

WORKER_LOST = "core.errors.WorkerLost"
NODE_LOST = "core.errors.NodeLost"
UNPLACEABLE = "core.errors.Unplaceable"
LAUNCHER_BROKEN = "core.errors.LauncherBroken"


class NewTask(NamedTuple):
    """A task as the table takes it: its payload (pickled TaskItem) and what it asks for."""

    key: int
    payload: bytes
    fn: bytes | None = None
    need: Need = NARROW
    max_retries: int = 1
    failure_retries: int = 0

    @property
    def is_call(self) -> bool:
        """A Python call (cancelled by replacing its worker) rather than a command."""
        return self.fn is not None


class Final(NamedTuple):
    """A task's one and only result: how its last attempt ended and where it ran."""

    key: int
    attempts: int
    outcome: Outcome | bytes
    """An Outcome made here, or the worker's pickled Outcome."""
    status: str
    hosts: tuple[str, ...] = ()
    cpus: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    history: tuple[str, ...] = ()
    """What happened to its earlier attempts (lost, or failed and retried)."""


_entry = partial(tuple.__new__, Entry)  # NamedTuples without their Python-level __new__
_final = partial(tuple.__new__, Final)


class Send(NamedTuple):
    """Start ``entries`` on slots behind ``child``."""

    child: bytes
    entries: list[Entry]


class CancelOn(NamedTuple):
    """Stop ``keys`` on ``slot`` behind ``child``; ``hard`` replaces the slot's worker."""

    child: bytes
    slot: str
    keys: tuple[int, ...]
    hard: bool


class Deliver(NamedTuple):
    """These tasks have ended for good."""

    finals: list[Final]


Action = Send | CancelOn | Deliver


@dataclass(slots=True)
class _Task:
    new: NewTask
    attempt: int = 0  # placements so far; a result counts only for the current one
    slot: int | None = None
    placement: Placement | None = None
    lost_runs: int = 0
    failed_runs: int = 0
    history: list[str] | None = None  # what happened to earlier attempts
    helper_lost: str | None = None  # a node of this multi-node task was lost: why
    cancelling: bool = False


@dataclass(slots=True)
class _NodeCounts:
    done: int = 0
    failed: int = 0


class _SlotRef(NamedTuple):
    name: str
    route: bytes
    hosts: tuple[str, ...]
    cpus: tuple[int, ...]
    counts: _NodeCounts


class TaskTable:
    """Task states, placement (through the Scheduler) and retries, for one top master."""

    def __init__(self, prefetch: int = 64) -> None:
        self.scheduler = Scheduler(prefetch)
        self.tasks: dict[int, _Task] = {}
        self.slot_refs: list[_SlotRef] = []
        self.slot_index: dict[str, int] = {}
        self.counts: dict[str, _NodeCounts] = {}
        self._unplaceable: dict[Need, str | None] = {}

    # -- inventory --------------------------------------------------------------------------

    def add_child(self, child: bytes, slots: Sequence[SlotInfo], nodes: Sequence[NodeInfo]) -> None:
        """A child registered with the slots (and nodes) behind it."""
        for node in nodes:
            self.scheduler.add_node(node.node, node.gpus)
            self.counts.setdefault(node.node, _NodeCounts())
        for slot in slots:
            self.scheduler.add_node(slot.node)
            self.counts.setdefault(slot.node, _NodeCounts())
            self.slot_index[slot.slot] = self.scheduler.add_slot(slot.node, slot.cpu)
            counts = self.counts[slot.node]
            self.slot_refs.append(_SlotRef(slot.slot, child, (slot.node,), (slot.cpu,), counts))
        self._unplaceable.clear()

    def ready(self) -> None:
        """Every child has registered: spread the first tasks over all nodes."""
        self.scheduler.interleave()

    def slots_up(self, slots: Iterable[SlotInfo]) -> None:
        """Slots are back (their replacement workers registered)."""
        for slot in slots:
            index = self.slot_index.get(slot.slot)
            if index is not None:
                self.scheduler.slot_up(index)
        self._unplaceable.clear()

    def slots_down(
        self, names: Iterable[str], reason: str, now: float, node_lost: bool = False,
        gone: bool = False, running: tuple[int, int] | None = None,
    ) -> list[Action]:  # fmt: skip
        """Slots are down (``gone``: for good, e.g. their node was lost).

        The task that was running (``running``, as the dead worker recorded it; for a lost node,
        the oldest task placed on each slot) starts again or fails; the others placed there are
        queued again without counting an attempt (some may have ended with their results still
        held by the worker: they run again, and are delivered once). Tasks that no slot left
        could ever hold fail.
        """
        finals: list[Final] = []
        requeue: list[int] = []
        stops: list[Action] = []
        for name in names:
            index = self.slot_index.get(name)
            if index is None:
                continue
            holder = self.scheduler.holder(index) if gone or node_lost else None
            if holder is not None and self.tasks[holder].helper_lost is None:
                stops.append(self._stop_for_lost_helper(holder, reason))
            for position, key in enumerate(self.scheduler.slot_down(index, gone or node_lost)):
                task = self.tasks[key]
                if task.cancelling:
                    outcome = _ended("cancelled", "cancelled while running", now)
                    finals.append(self._final(key, task, outcome, slot=index))
                    continue
                task.slot = None
                if running is not None:
                    was_running = (key, task.attempt) == running
                else:
                    was_running = node_lost and position == 0
                if not was_running:
                    requeue.append(key)
                elif task.lost_runs < task.new.max_retries:
                    task.lost_runs += 1
                    _note(task, f"attempt {task.lost_runs + task.failed_runs} was lost: {reason}")
                    requeue.append(key)
                else:
                    runs = task.lost_runs + task.failed_runs + 1
                    why = reason if runs == 1 else f"{reason}; it was lost on all {runs} attempts"
                    outcome = _ended("failed", why, now, (WORKER_LOST, NODE_LOST)[node_lost])
                    finals.append(self._final(key, task, outcome, slot=index))
        needs = {key: self.tasks[key].new.need for key in requeue}
        self.scheduler.requeue(requeue, needs)
        self._unplaceable.clear()
        for key, why in self.scheduler.pending_unplaceable():
            self.scheduler.cancel_pending({key})
            task = self.tasks[key]
            finals.append(self._final(key, task, _ended("failed", why, now, UNPLACEABLE)))
        return ([Deliver(finals)] if finals else []) + stops

    def _stop_for_lost_helper(self, key: int, reason: str) -> Action:
        """A multi-node task lost one of its nodes: stop it on its leader; it ends as lost."""
        task = self.tasks[key]
        task.helper_lost = reason
        assert task.slot is not None
        ref = self.slot_refs[task.slot]
        return CancelOn(ref.route, ref.name, (key,), False)

    def child_lost(self, child: bytes, reason: str, now: float) -> list[Action]:
        """A direct child (a sub-master) is gone with every slot behind it."""
        names = [ref.name for ref in self.slot_refs if ref.route == child]
        return self.slots_down(names, reason, now, node_lost=True)

    # -- tasks ------------------------------------------------------------------------------

    def why_unplaceable(self, need: Need) -> str | None:
        """Why no node of the launcher could ever run a task asking for ``need``."""
        if need not in self._unplaceable:
            self._unplaceable[need] = self.scheduler.why_unplaceable(need)
        return self._unplaceable[need]

    def submit(self, tasks: Iterable[NewTask], group: int, now: float) -> list[Action]:
        """Queue tasks (one group per batch); those that can never run end at once."""
        finals: list[Final] = []
        table, scheduler = self.tasks, self.scheduler
        narrow: list[int] = []
        narrow_ok = self.why_unplaceable(NARROW) is None
        for new in tasks:
            task = table[new.key] = _Task(new)
            if new.need is NARROW and narrow_ok:
                narrow.append(new.key)  # the common case, queued together below
                continue
            why = self.why_unplaceable(new.need)
            if why is None:
                scheduler.submit(new.key, new.need, group)
            else:
                text = f"the task {why}; it can never run on this launcher"
                finals.append(self._final(new.key, task, _ended("failed", text, now, UNPLACEABLE)))
        if narrow:
            scheduler.submit_narrow(narrow, group)
        return [Deliver(finals)] if finals else []

    def dispatch(self) -> list[Action]:
        """Place what can start now; one Send per child."""
        sends: dict[bytes, list[Entry]] = {}
        refs, tasks = self.slot_refs, self.tasks
        for key, slot, placement in self.scheduler.assign():
            task = tasks[key]
            task.attempt += 1
            task.slot, task.placement = slot, placement
            ref = refs[slot]
            entry = _entry((ref.name, key, task.attempt, task.new.fn, placement, task.new.payload))
            entries = sends.get(ref.route)
            if entries is None:
                sends[ref.route] = [entry]
            else:
                entries.append(entry)
        return [Send(child, entries) for child, entries in sends.items()]

    def done(self, items: Iterable[Done], now: float = 0.0) -> list[Action]:
        """Attempts ended (``now``: the time, for what the table itself decides)."""
        finals: list[Final] = []
        requeue: list[int] = []
        scheduler, tasks, refs = self.scheduler, self.tasks, self.slot_refs
        current = []
        for item in items:
            task = tasks.get(item.key)
            if task is None or task.attempt != item.attempt or task.slot is None:
                continue  # a stale attempt (its slot was declared lost) or already ended
            current.append((item, task))
        scheduler.finished_many([(i.key, t.slot, i.duration_s) for i, t in current])  # type: ignore[misc]
        for item, task in current:
            status = item.status
            if task.helper_lost is not None:  # stopped because a node of it was lost
                finals.extend(self._lost_run(item.key, task, task.helper_lost, requeue, now))
                continue
            if status == "success" and task.placement is None and task.history is None:
                del tasks[item.key]  # the common case, as _final does it
                ref = refs[task.slot]  # type: ignore[index]
                ref.counts.done += 1
                attempts = task.failed_runs + 1
                fields = (item.key, attempts, item.payload, status, ref.hosts, ref.cpus, (), ())
                finals.append(_final(fields))
                continue
            if (
                status in ("failed", "timeout")
                and not task.cancelling
                and task.failed_runs < task.new.failure_retries
            ):
                task.failed_runs += 1
                _note(task, f"attempt {task.lost_runs + task.failed_runs} ended {status}; retried")
                task.slot = None
                requeue.append(item.key)
                continue
            finals.append(self._final(item.key, task, item.payload, item.status))
        if requeue:
            scheduler.requeue(requeue, {k: self.tasks[k].new.need for k in requeue})
        return [Deliver(finals)] if finals else []

    def _lost_run(
        self, key: int, task: _Task, reason: str, requeue: list[int], now: float
    ) -> list[Final]:
        """A run of ``task`` was lost with its node: queue it again, or fail it (NodeLost)."""
        task.slot, task.helper_lost = None, None
        if task.lost_runs < task.new.max_retries:
            task.lost_runs += 1
            _note(task, f"attempt {task.lost_runs + task.failed_runs} was lost: {reason}")
            requeue.append(key)
            return []
        runs = task.lost_runs + task.failed_runs + 1
        why = reason if runs == 1 else f"{reason}; it was lost on all {runs} attempts"
        return [self._final(key, task, _ended("failed", why, now, NODE_LOST))]

    def cancel(self, keys: Iterable[int], now: float) -> list[Action]:
        """Cancel tasks: queued ones end at once, running ones are told to stop."""
        wanted = {key for key in keys if key in self.tasks}
        dropped = self.scheduler.cancel_pending(wanted)
        before = _ended("cancelled", "cancelled before it started", now)
        finals = [self._final(key, self.tasks[key], before) for key in dropped]
        by_slot: dict[int, list[int]] = {}
        for key in wanted.difference(dropped):
            task = self.tasks[key]
            if task.slot is not None and not task.cancelling:
                task.cancelling = True
                by_slot.setdefault(task.slot, []).append(key)
        actions: list[Action] = [Deliver(finals)] if finals else []
        for slot, slot_keys in by_slot.items():
            running = self.scheduler.running_on(slot)
            hard = running in slot_keys and self.tasks[running].new.is_call
            ref = self.slot_refs[slot]
            actions.append(CancelOn(ref.route, ref.name, tuple(slot_keys), hard))
        return actions

    def shutdown(self, now: float) -> list[Action]:
        """The launcher stops: every task not ended ends ``cancelled``."""
        keys = list(self.tasks)
        why = _ended("cancelled", "the launcher shut down", now)
        finals = [self._final(key, self.tasks[key], why) for key in keys]
        return [Deliver(finals)] if finals else []

    def fail_all(self, why: str, now: float) -> list[Action]:
        """The launcher broke: every task not ended fails with ``why``."""
        outcome = _ended("failed", why, now, LAUNCHER_BROKEN)
        finals = [self._final(key, self.tasks[key], outcome) for key in list(self.tasks)]
        return [Deliver(finals)] if finals else []

    # -- inspection -------------------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        """Slots that are up."""
        return self.scheduler.num_up

    def status(self) -> dict[str, dict[str, int]]:
        """Per node: tasks running (or queued on its slots), done and failed so far.

        ``lost`` is 1 once every slot of the node is gone.
        """
        running: dict[str, int] = dict.fromkeys(self.counts, 0)
        alive: dict[str, int] = dict.fromkeys(self.counts, 0)
        nodes = self.scheduler.nodes
        for node in nodes:
            alive[node.name] = node.num_alive
        for slot in self.scheduler.slots:
            running[nodes[slot.node].name] += len(slot.queue)
        return {
            name: {
                "running": running[name],
                "done": c.done,
                "failed": c.failed,
                "lost": int(alive[name] == 0),
            }
            for name, c in self.counts.items()
        }

    def _final(
        self,
        key: int,
        task: _Task,
        outcome: Outcome | bytes,
        status: str = "",
        slot: int | None = None,
    ) -> Final:
        """The task ends for good: drop it and say where it ran."""
        del self.tasks[key]
        status = status or outcome.status  # type: ignore[union-attr]
        attempts = task.lost_runs + task.failed_runs + (1 if task.attempt else 0)
        where = task.slot if slot is None else slot
        if task.placement is not None:
            parts = task.placement.parts
            hosts, cpus, gpus = tuple(p.node for p in parts), parts[0].cpus, parts[0].gpus
            counts: _NodeCounts | None = self.counts[hosts[0]]
        elif where is not None:
            ref = self.slot_refs[where]
            hosts, cpus, gpus, counts = ref.hosts, ref.cpus, (), ref.counts
        else:
            hosts, cpus, gpus, counts = (), (), (), None
        if counts is not None:
            if status == "success":
                counts.done += 1
            else:
                counts.failed += 1
        history = tuple(task.history) if task.history else ()
        return Final(key, attempts, outcome, status, hosts, cpus, gpus, history)


def _note(task: _Task, line: str) -> None:
    if task.history is None:
        task.history = []
    task.history.append(line)


def _ended(status: str, why: str, now: float, exception_type: str | None = None) -> Outcome:
    return Outcome.ended(status, why, now, exception_type)
