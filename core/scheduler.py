"""Pure task placement: which child runs which task next. No sockets, no clocks.

Each child (a worker with one slot, or a sub-master with many) has ``nslots`` slots on one node.
A task needing one process is queued on a child up to a prefetch depth that adapts to the mean
task duration (deep for tiny tasks, none beyond the running task for long ones). A task needing
``nprocs > 1`` slots waits for idle children on one node whose slots add up to ``nprocs``; they
are reserved for it and its first child (the leader) runs it. Placement is first-in first-out.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

_TARGET_QUEUE_S = 0.002  # prefetch enough to cover this much work per slot
_EWMA = 0.2


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
    """Places queued tasks on children, FIFO, with adaptive prefetch."""

    def __init__(self, prefetch: int = 64) -> None:
        self.prefetch = prefetch
        self.children: dict[bytes, _Child] = {}
        self.pending: deque[tuple[int, int]] = deque()
        self.reservations: dict[int, tuple[bytes, ...]] = {}
        self.mean_duration_s: float | None = None
        self.wide: dict[int, int] = {}
        self._num_slots = 0

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
        while_long = 1 if len(self.pending) > 2 * self.num_slots else 0
        return min(self.prefetch, max(by_duration, while_long))

    @property
    def num_slots(self) -> int:
        """Slots of all children."""
        return self._num_slots

    def add_child(self, child: bytes, node: str, nslots: int = 1) -> None:
        """A child registered."""
        self.children[child] = _Child(node, nslots)
        self._num_slots += nslots

    def remove_child(self, child: bytes) -> tuple[list[int], list[int]]:
        """A child is gone: returns (the tasks it was running, the tasks to queue again)."""
        state = self.children.pop(child)
        self._num_slots -= state.nslots
        if state.reserved_by is not None and state.reserved_by in self.reservations:
            self.reservations[state.reserved_by] = tuple(
                c for c in self.reservations[state.reserved_by] if c != child)
        outstanding = list(state.outstanding)
        running, requeue = outstanding[: state.nslots], outstanding[state.nslots:]
        for key in running:
            self._release(key)
        for key in reversed(requeue):
            self.pending.appendleft((key, self.wide.get(key, 1)))
        return running, requeue

    def submit(self, key: int, nprocs: int = 1) -> None:
        """Queue a task."""
        self.pending.append((key, nprocs))
        if nprocs > 1:
            self.wide[key] = nprocs

    def cancel_pending(self, keys: set[int]) -> list[int]:
        """Drop queued (not yet placed) tasks among ``keys``; returns those dropped."""
        dropped = [key for key, _ in self.pending if key in keys]
        for key in dropped:
            self.wide.pop(key, None)
        if dropped:
            self.pending = deque(item for item in self.pending if item[0] not in keys)
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
                duration_s if mean is None else mean + _EWMA * (duration_s - mean))

    def _release(self, key: int) -> None:
        self.wide.pop(key, None)
        for helper in self.reservations.pop(key, ()):
            if helper in self.children:
                self.children[helper].reserved_by = None

    def assign(self) -> list[Assignment]:
        """Place as many queued tasks as the children can take now."""
        out: list[Assignment] = []
        while self.pending:
            key, nprocs = self.pending[0]
            if nprocs > 1:
                placed = self._place_wide(key, nprocs)
                if placed is None:
                    break
                out.append(placed)
                self.pending.popleft()
                continue
            if not self._place_narrow(out):
                break
        return out

    def _place_narrow(self, out: list[Assignment]) -> bool:
        """Place the run of one-slot tasks at the head of the queue; False if nothing fit."""
        extra = self.extra
        open_children = [
            (len(s.outstanding) / s.nslots, child, s.nslots * (1 + extra) - len(s.outstanding))
            for child, s in self.children.items()
            if s.reserved_by is None and len(s.outstanding) < s.nslots * (1 + extra)
        ]
        if not open_children:
            return False
        open_children.sort()
        room = sum(r for _, _, r in open_children)
        narrow = 0
        for _, nprocs in itertools.islice(self.pending, room):
            if nprocs > 1:
                break
            narrow += 1
        share = -(-narrow // len(open_children))
        placed = 0
        for _, child, room in open_children:
            state = self.children[child]
            for _ in range(min(room, share)):
                if not self.pending or self.pending[0][1] > 1:
                    break
                key = self.pending.popleft()[0]
                state.outstanding.append(key)
                out.append(Assignment(child, key))
                placed += 1
        return placed > 0

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
