"""Pure placement of tasks on the CPU slots and GPUs of the launcher's nodes. No I/O, no clocks.

Resources: each node has CPU *slots* (one worker process per CPU) and GPU *units* (a GPU id, or
the same id several times when a GPU is shared, e.g. ``gpus=['0', '0', '1', '1']``).

Policy:

- **Queues.** Tasks arrive in groups (one per submitted batch); groups are served round-robin so
  that a small batch is not stuck behind a large one; within a group, in order. Tasks handed back
  by a lost slot form a group that is served first.
- **Narrow tasks** (one process, one CPU, no GPU, no affinity) go to the least-loaded slots: idle
  slots first, then slots whose queue is shorter than ``1 + extra``. ``extra`` (prefetch) adapts to
  the mean task duration, so tiny tasks are queued deep and long tasks never wait behind a busy
  slot while another is idle.
- **Wide tasks** (several processes or nodes, GPUs, or explicit CPU/GPU ids) start only on idle
  slots: ``nnodes`` nodes, each with ``ppn`` idle slots (or exactly the ``cpu_affinity`` CPUs) and
  ``ppn * ngpus_per_process`` free GPU units (or exactly the ``gpu_affinity`` ids). The first slot
  is the leader that starts the task; the others are held idle for it.
- **Backfill without starvation.** Narrow tasks, and wide tasks that fit, run on whatever is free
  ahead of a wide task that does not fit yet (backfill). The first wide task that does not fit
  gets a *reservation*: the slots (and GPU units) it will start on, chosen where most is free
  now. Nothing new starts on reserved slots, so they drain and the task starts as soon as they
  are free; then the next blocked wide task may reserve.
- **Never placeable.** A request that no node (or set of nodes) could ever hold is refused at
  submission with the reason (``why_unplaceable``), never left waiting.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from core.errors import ConfigError
from core.protocol import HostPart, Placement

_TARGET_QUEUE_S = 0.002  # prefetch enough to cover this much work per slot
_EWMA = 0.2
_REQUEUED = -1  # the group of tasks handed back by a lost slot: served first
_WIDE_LOOKAHEAD = 8  # wide tasks tried per group and pass beyond a blocked one


class Need(NamedTuple):
    """What one task asks for."""

    nnodes: int = 1
    ppn: int = 1
    gpus_per_proc: int = 0
    cpus: tuple[int, ...] | None = None
    """``cpu_affinity``: exactly these CPU ids on each node."""
    gpu_ids: tuple[str, ...] | None = None
    """``gpu_affinity``: exactly these GPU ids on each node."""

    @classmethod
    def of(
        cls,
        nnodes: int = 1,
        ppn: int = 1,
        ngpus_per_process: int = 0,
        cpu_affinity: Sequence[int] | None = None,
        gpu_affinity: Sequence[str] | None = None,
    ) -> Need:
        """The need of a task with these settings (the ``Task`` fields of the same names).

        ``cpu_affinity`` lists the CPUs of each node the task's ``ppn`` processes are bound to
        (each gets an equal share); ``gpu_affinity`` the GPU ids of each node they see (each
        process ``ngpus_per_process`` of them, or an equal share when that is 0).

        Raises:
            ConfigError: an affinity list that cannot be shared evenly by the processes.
        """
        cpus = tuple(cpu_affinity) if cpu_affinity else None
        gpu_ids = tuple(str(g) for g in gpu_affinity) if gpu_affinity else None
        if cpus is not None:
            if len(set(cpus)) != len(cpus):
                raise ConfigError(f"cpu_affinity {list(cpus)} names a CPU twice")
            if len(cpus) % ppn:
                raise ConfigError(
                    f"cpu_affinity has {len(cpus)} CPUs for ppn={ppn} processes per node; give "
                    "a multiple of ppn (each process gets the same number of CPUs)"
                )
        per_proc = ngpus_per_process
        if gpu_ids is not None:
            if ngpus_per_process and len(gpu_ids) != ppn * ngpus_per_process:
                raise ConfigError(
                    f"gpu_affinity has {len(gpu_ids)} GPUs, but ppn={ppn} processes with "
                    f"ngpus_per_process={ngpus_per_process} need {ppn * ngpus_per_process}"
                )
            if len(gpu_ids) % ppn:
                raise ConfigError(
                    f"gpu_affinity has {len(gpu_ids)} GPUs for ppn={ppn} processes per node; "
                    "give a multiple of ppn (each process sees the same number of GPUs)"
                )
            per_proc = len(gpu_ids) // ppn
        need = cls(nnodes, ppn, per_proc, cpus, gpu_ids)
        return NARROW if need == NARROW else need

    @property
    def cpus_per_node(self) -> int:
        """CPU slots held on each node."""
        return len(self.cpus) if self.cpus else self.ppn

    @property
    def gpus_per_node(self) -> int:
        """GPU units held on each node."""
        return len(self.gpu_ids) if self.gpu_ids else self.ppn * self.gpus_per_proc

    def describe(self) -> str:
        """The request in the words of the Task fields."""
        words = []
        if self.nnodes > 1:
            words.append(f"nnodes={self.nnodes}")
        words.append(f"ppn={self.ppn}")
        if self.gpus_per_proc:
            words.append(f"ngpus_per_process={self.gpus_per_proc}")
        if self.cpus:
            words.append(f"cpu_affinity={list(self.cpus)}")
        if self.gpu_ids:
            words.append(f"gpu_affinity={list(self.gpu_ids)}")
        return ", ".join(words)


NARROW = Need()


class Assignment(NamedTuple):
    """Start ``key`` on ``slot``; ``placement`` is set for wide tasks (their whole share)."""

    key: int
    slot: int
    placement: Placement | None = None


_assignment = partial(tuple.__new__, Assignment)  # without the NamedTuple's Python __new__


@dataclass(slots=True)
class _Slot:
    index: int
    node: int
    cpu: int
    queue: deque[int] = field(default_factory=deque)
    up: bool = True
    gone: bool = False  # down for good (its node was lost), not just being replaced
    held_by: int | None = None  # a started wide task holds it (as leader or helper)
    reserved: bool = False
    in_idle: bool = False
    in_room: bool = False

    @property
    def free(self) -> bool:
        """Up, holding nothing and running nothing."""
        return self.up and self.held_by is None and not self.queue


@dataclass(slots=True)
class _Node:
    index: int
    name: str
    gpus: tuple[str, ...]
    slots: list[int] = field(default_factory=list)
    idle: set[int] = field(default_factory=set)  # free and not reserved
    free_gpus: set[int] = field(default_factory=set)  # indices into gpus
    num_up: int = 0
    num_alive: int = 0  # slots not gone for good (up, or down while a worker is replaced)


@dataclass(slots=True)
class _Hold:
    """What a started wide task holds until it ends."""

    slots: tuple[int, ...]
    gpus: dict[int, tuple[int, ...]]  # node index -> GPU unit indices


@dataclass(slots=True)
class _Reservation:
    key: int
    slots: frozenset[int]
    gpus: dict[int, int]  # node index -> GPU units kept for it
    by_node: dict[int, tuple[int, ...]] = field(default_factory=dict)  # node index -> its slots


@dataclass(slots=True)
class _Group:
    narrow: deque[int] = field(default_factory=deque)
    wide: deque[int] = field(default_factory=deque)


class Scheduler:
    """Places queued tasks on slots; see the module docstring for the policy."""

    def __init__(self, prefetch: int = 64) -> None:
        self.prefetch = prefetch
        self.nodes: list[_Node] = []
        self.node_index: dict[str, int] = {}
        self.slots: list[_Slot] = []
        self.groups: dict[int, _Group] = {}
        self.needs: dict[int, Need] = {}
        self.holds: dict[int, _Hold] = {}
        self.reservation: _Reservation | None = None
        self.idle: deque[int] = deque()
        self.room: deque[int] = deque()
        self.room_cap = 1
        self.mean_duration_s: float | None = None
        self.num_up = 0
        self.num_pending = 0
        self._rotate = 0

    # -- inventory --------------------------------------------------------------------------

    def add_node(self, name: str, gpus: tuple[str, ...] = ()) -> int:
        """Add a node (or give a known node without GPUs its GPUs); returns its index."""
        index = self.node_index.get(name)
        if index is None:
            index = len(self.nodes)
            self.nodes.append(_Node(index, name, tuple(gpus), free_gpus=set(range(len(gpus)))))
            self.node_index[name] = index
        elif gpus and not self.nodes[index].gpus:
            node = self.nodes[index]
            node.gpus, node.free_gpus = tuple(gpus), set(range(len(gpus)))
        return index

    def add_slot(self, node: str, cpu: int) -> int:
        """Add a CPU slot on ``node`` (added first with ``add_node``); returns its index."""
        n = self.node_index[node]
        index = len(self.slots)
        slot = _Slot(index, n, cpu)
        self.slots.append(slot)
        self.nodes[n].slots.append(index)
        self.nodes[n].num_up += 1
        self.nodes[n].num_alive += 1
        self.num_up += 1
        self._refresh(slot)
        return index

    def interleave(self) -> None:
        """Order idle slots across nodes (node A cpu 0, node B cpu 0, ...).

        Call after adding the inventory, so that a small batch spreads over every node.
        """
        position = {i: k for node in self.nodes for k, i in enumerate(node.slots)}
        self.idle = deque(sorted(self.idle, key=lambda i: (position[i], self.slots[i].node)))

    def slot_down(self, index: int, gone: bool = False) -> list[int]:
        """A slot is down (``gone``: for good); returns the tasks placed on it, running first.

        A helper slot returns nothing: a wide task's processes belong to its leader, which
        reports how the task ended.
        """
        slot = self.slots[index]
        if gone and not slot.gone:
            slot.gone = True
            self.nodes[slot.node].num_alive -= 1
            if slot.reserved:  # a reservation must not wait for a slot that will not come back
                self._drop_reservation()
        if not slot.up:
            return []
        slot.up = False
        self.num_up -= 1
        self.nodes[slot.node].num_up -= 1
        keys = list(slot.queue)
        slot.queue.clear()
        for key in keys:
            self._release(key)
        if slot.reserved:
            self._drop_reservation()
        self._refresh(slot)
        return keys

    def holder(self, index: int) -> int | None:
        """The wide task a helper slot is held for, when its leader is another slot."""
        key = self.slots[index].held_by
        hold = self.holds.get(key) if key is not None else None
        return key if hold is not None and hold.slots[0] != index else None

    def slot_up(self, index: int) -> None:
        """A slot is back (a replacement worker registered)."""
        slot = self.slots[index]
        if not slot.up and not slot.gone:
            slot.up = True
            self.num_up += 1
            self.nodes[slot.node].num_up += 1
            self._refresh(slot)

    # -- tasks ------------------------------------------------------------------------------

    def why_unplaceable(self, need: Need) -> str | None:
        """Why no node, or set of nodes, still alive could ever hold ``need``; None if some can."""
        nodes = [n for n in self.nodes if n.num_alive]
        if not nodes:
            return "the launcher has no slot left"
        fitting = sum(1 for n in nodes if self._holds_share(n, need))
        if fitting >= need.nnodes:
            return None
        if fitting:
            return (
                f"asks for {need.describe()}: {need.nnodes} nodes, but {fitting} of the "
                f"launcher's {len(nodes)} nodes can hold a share"
            )
        return f"asks for {need.describe()}, but {self._shortfall(nodes, need)}"

    def _holds_share(self, node: _Node, need: Need) -> bool:
        """Whether ``node``, when idle, holds one node's share of ``need``."""
        if need.cpus:
            alive = {self.slots[i].cpu for i in node.slots if not self.slots[i].gone}
            if not set(need.cpus) <= alive:
                return False
        elif need.ppn > node.num_alive:
            return False
        if need.gpu_ids:
            counts = {g: node.gpus.count(g) for g in need.gpu_ids}
            if any(need.gpu_ids.count(g) > n for g, n in counts.items()):
                return False
        return need.gpus_per_node <= len(node.gpus)

    def _shortfall(self, nodes: list[_Node], need: Need) -> str:
        """What the best node lacks, in words."""
        if need.cpus:
            have = [{self.slots[i].cpu for i in n.slots if not self.slots[i].gone} for n in nodes]
            if not any(set(need.cpus) <= cpus for cpus in have):
                wanted, first = _ids(sorted(need.cpus)), _ids(sorted(have[0]))
                return f"no node has all of CPUs {wanted} (node {nodes[0].name} has {first})"
        most = max(n.num_alive for n in nodes)
        if need.cpus_per_node > most:
            return f"the largest node has {most} CPU slot{'s' if most != 1 else ''}"
        gpus = max(len(n.gpus) for n in nodes)
        if need.gpu_ids and not any(set(need.gpu_ids) <= set(n.gpus) for n in nodes):
            shown = sorted({g for n in nodes for g in n.gpus})
            gpus_seen = ", ".join(shown) or "none"
            return f"no node has all of GPUs {list(need.gpu_ids)} (GPUs: {gpus_seen})"
        if need.gpus_per_node > gpus:
            return f"the node with the most GPUs has {gpus}"
        return "no single node has all of it at once"

    def submit(self, key: int, need: Need = NARROW, group: int = 0) -> None:
        """Queue a task in ``group`` (one group per submitted batch)."""
        queues = self.groups.get(group)
        if queues is None:
            queues = self.groups[group] = _Group()
        if need == NARROW:
            queues.narrow.append(key)
        else:
            queues.wide.append(key)
            self.needs[key] = need
        self.num_pending += 1

    def submit_narrow(self, keys: list[int], group: int = 0) -> None:
        """Queue one-CPU tasks in ``group``, in order (``submit`` for many at once)."""
        queues = self.groups.get(group)
        if queues is None:
            queues = self.groups[group] = _Group()
        queues.narrow.extend(keys)
        self.num_pending += len(keys)

    def requeue(self, keys: list[int], needs: dict[int, Need]) -> None:
        """Queue tasks again ahead of every other group (their slot was lost)."""
        if not keys:
            return
        queues = self.groups.pop(_REQUEUED, None) or _Group()
        for key in reversed(keys):
            need = needs.get(key, NARROW)
            if need == NARROW:
                queues.narrow.appendleft(key)
            else:
                queues.wide.appendleft(key)
                self.needs[key] = need
        self.groups = {_REQUEUED: queues, **self.groups}
        self.num_pending += len(keys)

    def cancel_pending(self, keys: set[int]) -> list[int]:
        """Drop queued (not yet placed) tasks among ``keys``; returns those dropped."""
        dropped: list[int] = []
        for group, queues in list(self.groups.items()):
            for queue in (queues.narrow, queues.wide):
                if any(key in keys for key in queue):
                    kept = [key for key in queue if key not in keys]
                    dropped.extend(key for key in queue if key in keys)
                    queue.clear()
                    queue.extend(kept)
            if not queues.narrow and not queues.wide:
                del self.groups[group]
        for key in dropped:
            self.needs.pop(key, None)
            if self.reservation is not None and self.reservation.key == key:
                self._drop_reservation()
        self.num_pending -= len(dropped)
        return dropped

    def pending_unplaceable(self) -> list[tuple[int, str]]:
        """Queued tasks that no node left could ever hold (after slots were lost), with why."""
        out = []
        reasons: dict[Need, str | None] = {}
        for queues in self.groups.values():
            for key in queues.wide:
                need = self.needs[key]
                if need not in reasons:
                    reasons[need] = self.why_unplaceable(need)
                if reasons[need] is not None:
                    out.append((key, str(reasons[need])))
            if queues.narrow and not any(n.num_alive for n in self.nodes):
                out.extend((key, "the launcher has no slot left") for key in queues.narrow)
        return out

    def finished(self, key: int, slot: int, duration_s: float | None = None) -> None:
        """The task ``key``, placed on ``slot``, ended."""
        state = self.slots[slot]
        queue = state.queue
        if queue and queue[0] == key:
            queue.popleft()
        elif key in queue:
            queue.remove(key)
        if self.holds:
            self._release(key)
        self._refresh(state)
        if duration_s is not None:
            mean = self.mean_duration_s
            self.mean_duration_s = (
                duration_s if mean is None else mean + _EWMA * (duration_s - mean)
            )

    def finished_many(self, ended: list[tuple[int, int, float]]) -> None:
        """``finished`` for many ``(key, slot, duration_s)`` at once (the master's hot path)."""
        slots, holds, refresh = self.slots, self.holds, self._refresh
        mean = self.mean_duration_s
        for key, slot, duration_s in ended:
            state = slots[slot]
            queue = state.queue
            if queue and queue[0] == key:
                queue.popleft()
            elif key in queue:
                queue.remove(key)
            if holds:
                self._release(key)
            refresh(state)
            mean = duration_s if mean is None else mean + _EWMA * (duration_s - mean)
        self.mean_duration_s = mean

    @property
    def extra(self) -> int:
        """Tasks queued per slot beyond the running one.

        Enough to cover ``_TARGET_QUEUE_S`` of work; and one while the queue is long, so that a
        slot never waits for a round trip to its master (near the end of the queue none, so that
        no task waits behind a long one while a slot is idle).
        """
        if self.mean_duration_s is None:
            return min(1, self.prefetch)
        by_duration = int(_TARGET_QUEUE_S / max(self.mean_duration_s, 1e-7))
        while_long = 1 if self.num_pending > 2 * self.num_up else 0
        return min(self.prefetch, max(by_duration, while_long))

    # -- placement --------------------------------------------------------------------------

    def assign(self) -> list[Assignment]:
        """Place as many queued tasks as the slots can take now."""
        out: list[Assignment] = []
        if not self.num_pending:
            return out
        if self.needs:
            self._assign_wide(out)
        if self.num_pending:
            self._assign_narrow(out)
        return out

    def _assign_narrow(self, out: list[Assignment]) -> None:
        cap = 1 + self.extra
        if cap < self.room_cap:  # shallower prefetch: slots at the old depth are skipped lazily
            self.room_cap = cap
        groups = self.groups
        nodes, append = self.nodes, out.append
        while True:
            took = False
            for group in list(groups):
                queues = groups[group]
                narrow = queues.narrow
                # one group at a time takes as many as it can in a row, round-robin by batch
                take = len(narrow) if len(groups) == 1 else 1
                for _ in range(take):
                    if not narrow:  # a group of wide tasks only (or emptied): nothing to take
                        break
                    slot = self._next_slot(cap)
                    if slot is None:
                        if not narrow and not queues.wide:
                            del groups[group]
                        self._rotate_groups()
                        return
                    key = narrow.popleft()
                    self.num_pending -= 1
                    queue = slot.queue
                    if not queue:
                        nodes[slot.node].idle.discard(slot.index)
                    queue.append(key)
                    if not slot.in_room and len(queue) < self.room_cap:
                        slot.in_room = True
                        self.room.append(slot.index)
                    append(_assignment((key, slot.index, None)))
                    took = True
                if not narrow and not queues.wide:
                    del groups[group]
            if not took:
                break
        self._rotate_groups()

    def _rotate_groups(self) -> None:
        if len(self.groups) > 1:  # the next round starts with the next group
            first = next(iter(self.groups))
            self.groups[first] = self.groups.pop(first)

    def _next_slot(self, cap: int) -> _Slot | None:
        idle, slots = self.idle, self.slots
        while idle:
            slot = slots[idle.popleft()]
            slot.in_idle = False
            if slot.free and not slot.reserved:
                return slot
        if cap > self.room_cap:  # deeper prefetch now, and no idle slot left: widen the room
            for s in slots:
                s.in_room = self._has_room(s, cap)
            self.room = deque(s.index for s in slots if s.in_room)
            self.room_cap = cap
        room = self.room
        while room:
            slot = slots[room[0]]
            if self._has_room(slot, cap):
                if len(slot.queue) + 1 >= cap:
                    room.popleft()
                    slot.in_room = False
                else:
                    room.rotate(-1)
                return slot
            room.popleft()
            slot.in_room = False
        return None

    @staticmethod
    def _has_room(slot: _Slot, cap: int) -> bool:
        return slot.up and slot.held_by is None and not slot.reserved and len(slot.queue) < cap

    def _refresh(self, slot: _Slot) -> None:
        """Put a slot whose state changed back where placement looks for it."""
        usable = slot.up and slot.held_by is None and not slot.reserved
        if usable and not slot.queue:
            self.nodes[slot.node].idle.add(slot.index)
            if not slot.in_idle:
                slot.in_idle = True
                self.idle.append(slot.index)
        else:
            self.nodes[slot.node].idle.discard(slot.index)
            if usable and not slot.in_room and len(slot.queue) < self.room_cap:
                slot.in_room = True
                self.room.append(slot.index)

    def _assign_wide(self, out: list[Assignment]) -> None:
        reserved_key = self.reservation.key if self.reservation is not None else None
        no_room: set[Need] = set()  # needs that found no room in this pass: same answer again
        for group in list(self.groups):
            queues = self.groups[group]
            blocked = position = 0
            while position < len(queues.wide) and blocked < _WIDE_LOOKAHEAD:
                key = queues.wide[position]
                need = self.needs[key]
                if need in no_room and key != reserved_key:
                    blocked += 1
                    position += 1
                    continue
                placed = self._place_wide(key, need)
                if placed is None:
                    if key != reserved_key:
                        no_room.add(need)
                    if self.reservation is None:
                        self._reserve(key, self.needs[key])
                    blocked += 1
                    position += 1
                    continue
                del queues.wide[position]
                del self.needs[key]
                self.num_pending -= 1
                out.append(placed)
            if not queues.narrow and not queues.wide:
                del self.groups[group]

    def _place_wide(self, key: int, need: Need) -> Assignment | None:
        reservation = self.reservation
        mine = reservation.slots if reservation is not None and reservation.key == key else None
        chosen: list[tuple[_Node, list[_Slot], list[int]]] = []
        count = len(self.nodes)
        for k in range(count):
            node = self.nodes[(self._rotate + k) % count]
            share = self._share(node, need, mine)
            if share is not None:
                chosen.append((node, *share))
                if len(chosen) == need.nnodes:
                    break
        if len(chosen) < need.nnodes:
            return None
        self._rotate = (chosen[-1][0].index + 1) % count  # spread wide tasks over the nodes
        if mine is not None:
            self._drop_reservation()
        parts = []
        held: list[int] = []
        gpus: dict[int, tuple[int, ...]] = {}
        for node, slots, units in chosen:
            for slot in slots:
                slot.held_by = key
                node.idle.discard(slot.index)
                held.append(slot.index)
            node.free_gpus.difference_update(units)
            gpus[node.index] = tuple(units)
            parts.append(HostPart(node.name, tuple(s.cpu for s in slots),
                                  tuple(node.gpus[u] for u in units)))  # fmt: skip
        self.holds[key] = _Hold(tuple(held), gpus)
        leader = self.slots[held[0]]
        leader.queue.append(key)
        return Assignment(key, leader.index, Placement(tuple(parts)))

    def _share(
        self, node: _Node, need: Need, mine: frozenset[int] | None
    ) -> tuple[list[_Slot], list[int]] | None:
        """The idle slots and free GPU units of ``node`` that ``need`` would take, or None."""
        if mine is None and len(node.idle) < need.cpus_per_node:
            return None  # the common "no": checked before anything is built
        slots = self.slots
        spare = len(node.free_gpus)
        reservation = self.reservation
        if reservation is not None and mine is None:
            spare -= reservation.gpus.get(node.index, 0)
        if need.gpus_per_node > spare:
            return None
        candidates = node.idle
        if mine is not None and reservation is not None:
            kept = reservation.by_node.get(node.index, ())
            candidates = candidates | {i for i in kept if slots[i].free}
        if need.cpus:
            by_cpu = {slots[i].cpu: i for i in candidates}
            if not all(cpu in by_cpu for cpu in need.cpus):
                return None
            chosen = [slots[by_cpu[cpu]] for cpu in need.cpus]
        else:
            if len(candidates) < need.ppn:
                return None
            chosen = [slots[i] for i in sorted(candidates)[: need.ppn]]
        units = self._units(node, need)
        return None if units is None else (chosen, units)

    def _units(self, node: _Node, need: Need) -> list[int] | None:
        """GPU units of ``node`` for ``need``: distinct devices before shared ones."""
        if need.gpu_ids:
            units: list[int] = []
            for gpu in need.gpu_ids:
                unit = next((u for u in sorted(node.free_gpus)
                             if node.gpus[u] == gpu and u not in units), None)  # fmt: skip
                if unit is None:
                    return None
                units.append(unit)
            return units
        if not need.gpus_per_node:
            return []
        busy = {node.gpus[u] for u in range(len(node.gpus)) if u not in node.free_gpus}
        free = sorted(node.free_gpus, key=lambda u: (node.gpus[u] in busy, u))
        return free[: need.gpus_per_node] if len(free) >= need.gpus_per_node else None

    def _reserve(self, key: int, need: Need) -> None:
        """Keep the slots (and GPU units) where ``need`` will fit soonest for ``key``.

        Nodes are ranked by what they lack (GPUs first), then by how many CPUs are idle there
        now; on the chosen nodes, the slots with the least work left are kept.
        """
        slots = self.slots

        def cost(i: int) -> int:  # how long until the slot is free, roughly
            s = slots[i]
            return (1000 if s.held_by is not None else 0) + len(s.queue)

        ranked = sorted(
            (max(0, need.gpus_per_node - len(node.free_gpus)), -len(node.idle), node.index)
            for node in self.nodes
            if self._holds_share(node, need)
        )
        chosen: list[tuple[int, list[int]]] = []
        for *_, index in ranked:
            up = [i for i in self.nodes[index].slots if slots[i].up and not slots[i].reserved]
            if need.cpus:
                pick = [i for i in up if slots[i].cpu in need.cpus]
            else:
                pick = heapq.nsmallest(need.ppn, up, key=cost)
            if len(pick) >= need.cpus_per_node:
                chosen.append((index, pick))
                if len(chosen) == need.nnodes:
                    break
        if len(chosen) < need.nnodes:
            return
        picked = frozenset(i for _, pick in chosen for i in pick)
        for i in picked:
            slots[i].reserved = True
            self._refresh(slots[i])
        gpus = {index: need.gpus_per_node for index, _ in chosen if need.gpus_per_node}
        by_node = {index: tuple(pick) for index, pick in chosen}
        self.reservation = _Reservation(key, picked, gpus, by_node)

    def _drop_reservation(self) -> None:
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            for i in reservation.slots:
                self.slots[i].reserved = False
                self._refresh(self.slots[i])

    def _release(self, key: int) -> None:
        """Free what a wide task held."""
        hold = self.holds.pop(key, None)
        if hold is None:
            return
        for i in hold.slots:
            slot = self.slots[i]
            slot.held_by = None
            self._refresh(slot)
        for n, units in hold.gpus.items():
            self.nodes[n].free_gpus.update(units)

    # -- inspection -------------------------------------------------------------------------

    def inventory(self) -> Scheduler:
        """A new Scheduler with the same nodes, slots and GPUs, and no tasks (a snapshot)."""
        copy = Scheduler(self.prefetch)
        for node in self.nodes:
            copy.add_node(node.name, node.gpus)
        for slot in self.slots:
            if slot.up:
                copy.add_slot(self.nodes[slot.node].name, slot.cpu)
        return copy

    @property
    def pending(self) -> list[int]:
        """Queued task keys, group by group (for inspection)."""
        return [k for g in self.groups.values() for k in (*g.wide, *g.narrow)]

    def running_on(self, slot: int) -> int | None:
        """The task ``slot`` is running now (its oldest placed one), if any."""
        queue = self.slots[slot].queue
        return queue[0] if queue else None


def _ids(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"
