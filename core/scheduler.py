"""Pure task placement: which child runs which task next. No sockets, no clocks.

Each child (a worker with one slot, or a sub-master with many) has ``nslots`` slots on one node.
Tasks arrive in groups (one group per submitted batch) and groups are served round-robin, so a
small batch is not stuck behind a large one; within a group, tasks go in order. A task needing
one process is queued on a child up to a prefetch depth that adapts to the mean task duration
(deep for tiny tasks, none beyond the running task for long ones near the end of the queue).
A task needing ``nprocs > 1`` slots waits for idle children on one node whose slots add up to
``nprocs``; they are reserved for it and its first child (the leader) runs it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

_TARGET_QUEUE_S = 0.002  # prefetch enough to cover this much work per slot
_EWMA = 0.2
_REQUEUED = -1  # the group of tasks handed back by a lost child: served first


@dataclass(slots=True)
class _Child:
    node: str
    nslots: int
    outstanding: deque[int] = field(default_factory=deque)
    reserved_by: int | None = None


class Assignment(NamedTuple):
    """Send ``key`` to ``child``; ``helpers`` are the other children reserved for it."""

    child: bytes
    key: int
    helpers: tuple[bytes, ...] = ()


class Scheduler:
    """Places queued tasks on children: groups round-robin, FIFO within a group."""

    def __init__(self, prefetch: int = 64) -> None:
        self.prefetch = prefetch
        self.children: dict[bytes, _Child] = {}
        self.queues: dict[int, deque[tuple[int, int]]] = {}
        self.reservations: dict[int, tuple[bytes, ...]] = {}
        self.mean_duration_s: float | None = None
        self.wide: dict[int, int] = {}
        self.num_slots = 0
        self.num_pending = 0

    @property
    def pending(self) -> list[int]:
        """Queued task keys, group by group (for inspection)."""
        return [key for queue in self.queues.values() for key, _ in queue]

    @property
    def extra(self) -> int:
        """Tasks queued per slot beyond the running one.

        Enough to cover ``_TARGET_QUEUE_S`` of work; and one while the queue is long, so that a
        slot never waits for a round trip to the master (near the end of the queue none, so
        that no task waits behind a long one while a slot is idle).
        """
        if self.mean_duration_s is None:
            return min(1, self.prefetch)
        by_duration = int(_TARGET_QUEUE_S / max(self.mean_duration_s, 1e-7))
        while_long = 1 if self.num_pending > 2 * self.num_slots else 0
        return min(self.prefetch, max(by_duration, while_long))

    def add_child(self, child: bytes, node: str, nslots: int = 1) -> None:
        """A child registered."""
        self.children[child] = _Child(node, nslots)
        self.num_slots += nslots

    def remove_child(self, child: bytes) -> tuple[list[int], list[int]]:
        """A child is gone: returns (the tasks it was running, the tasks to queue again)."""
        state = self.children.pop(child)
        self.num_slots -= state.nslots
        if state.reserved_by is not None and state.reserved_by in self.reservations:
            self.reservations[state.reserved_by] = tuple(
                c for c in self.reservations[state.reserved_by] if c != child
            )
        outstanding = list(state.outstanding)
        running, requeue = outstanding[: state.nslots], outstanding[state.nslots :]
        for key in running:
            self._release(key)
        if requeue:
            queue = self.queues.pop(_REQUEUED, deque())
            queue.extendleft((key, self.wide.get(key, 1)) for key in reversed(requeue))
            self.queues = {_REQUEUED: queue, **self.queues}
            self.num_pending += len(requeue)
        return running, requeue

    def submit(self, key: int, nprocs: int = 1, group: int = 0) -> None:
        """Queue a task in ``group`` (one group per submitted batch)."""
        queue = self.queues.get(group)
        if queue is None:
            queue = self.queues[group] = deque()
        queue.append((key, nprocs))
        self.num_pending += 1
        if nprocs > 1:
            self.wide[key] = nprocs

    def cancel_pending(self, keys: set[int]) -> list[int]:
        """Drop queued (not yet placed) tasks among ``keys``; returns those dropped."""
        dropped: list[int] = []
        for group, queue in list(self.queues.items()):
            gone = [key for key, _ in queue if key in keys]
            if gone:
                dropped.extend(gone)
                kept = deque(item for item in queue if item[0] not in keys)
                if kept:
                    self.queues[group] = kept
                else:
                    del self.queues[group]
        for key in dropped:
            self.wide.pop(key, None)
        self.num_pending -= len(dropped)
        return dropped

    def finished(self, child: bytes, key: int, duration_s: float | None = None) -> None:
        """``child`` reported ``key`` as ended."""
        state = self.children.get(child)
        if state is not None:
            try:
                state.outstanding.remove(key)
            except ValueError:
                pass
        self._release(key)
        if duration_s is not None:
            mean = self.mean_duration_s
            self.mean_duration_s = (
                duration_s if mean is None else mean + _EWMA * (duration_s - mean)
            )

    def _release(self, key: int) -> None:
        self.wide.pop(key, None)
        for helper in self.reservations.pop(key, ()):
            if helper in self.children:
                self.children[helper].reserved_by = None

    def assign(self) -> list[Assignment]:
        """Place as many queued tasks as the children can take now."""
        out: list[Assignment] = []
        for group in list(self.queues):  # wide tasks at the head of each group first
            queue = self.queues[group]
            while queue and queue[0][1] > 1:
                placed = self._place_wide(*queue[0])
                if placed is None:
                    break
                queue.popleft()
                self.num_pending -= 1
                out.append(placed)
            if not queue:
                del self.queues[group]
        self._place_narrow(out)
        return out

    def _place_narrow(self, out: list[Assignment]) -> None:
        """Place one-slot tasks, taking one from each group's head in turn."""
        extra = self.extra
        open_children = sorted(
            (len(s.outstanding) / s.nslots, child, s.nslots * (1 + extra) - len(s.outstanding))
            for child, s in self.children.items()
            if s.reserved_by is None and len(s.outstanding) < s.nslots * (1 + extra)
        )
        room = sum(r for _, _, r in open_children)
        keys: list[int] = []
        while len(keys) < room:
            took = False
            for group in list(self.queues):
                queue = self.queues[group]
                if queue and queue[0][1] == 1 and len(keys) < room:
                    keys.append(queue.popleft()[0])
                    took = True
                    if not queue:
                        del self.queues[group]
            if not took:
                break
        if len(self.queues) > 1:  # the next round starts with the next group
            first = next(iter(self.queues))
            self.queues[first] = self.queues.pop(first)
        self.num_pending -= len(keys)
        share = -(-len(keys) // max(1, len(open_children)))
        position = 0
        for _, child, child_room in open_children:
            state = self.children[child]
            for key in keys[position : position + min(child_room, share)]:
                state.outstanding.append(key)
                out.append(Assignment(child, key))
            position += min(child_room, share)
        for key in keys[position:]:  # rounding left some: give them wherever room is left
            for _, child, _ in open_children:
                state = self.children[child]
                if len(state.outstanding) < state.nslots * (1 + extra):
                    state.outstanding.append(key)
                    out.append(Assignment(child, key))
                    break

    def _place_wide(self, key: int, nprocs: int) -> Assignment | None:
        by_node: dict[str, list[bytes]] = {}
        for child, state in self.children.items():
            if state.reserved_by is None and not state.outstanding:
                by_node.setdefault(state.node, []).append(child)
        for children in by_node.values():
            chosen: list[bytes] = []
            for child in children:
                chosen.append(child)
                if sum(self.children[c].nslots for c in chosen) >= nprocs:
                    leader, *helpers = chosen
                    self.children[leader].outstanding.append(key)
                    for helper in helpers:
                        self.children[helper].reserved_by = key
                    self.reservations[key] = tuple(helpers)
                    return Assignment(leader, key, tuple(helpers))
        return None

    def can_ever_place(self, nprocs: int) -> bool:
        """True if some node has ``nprocs`` slots in all."""
        per_node: dict[str, int] = {}
        for state in self.children.values():
            per_node[state.node] = per_node.get(state.node, 0) + state.nslots
        return any(n >= nprocs for n in per_node.values())

    def running_on(self, child: bytes) -> int | None:
        """The task ``child`` is running now (its oldest outstanding one)."""
        state = self.children.get(child)
        return state.outstanding[0] if state and state.outstanding else None
