"""The pure scheduler: resources and placement, events in, placements out (no processes)."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.scheduler import Need, Scheduler


def make(
    nodes: int = 1, cpus: int = 2, gpus: tuple[str, ...] = (), prefetch: int = 64
) -> Scheduler:
    scheduler = Scheduler(prefetch)
    for n in range(nodes):
        scheduler.add_node(f"n{n}", gpus)
        for cpu in range(cpus):
            scheduler.add_slot(f"n{n}", cpu)
    scheduler.interleave()
    return scheduler


def where(scheduler: Scheduler, slot: int) -> tuple[str, int]:
    s = scheduler.slots[slot]
    return scheduler.nodes[s.node].name, s.cpu


def test_tasks_are_spread_evenly_before_any_duration_is_known() -> None:
    scheduler = make()
    for key in range(10):
        scheduler.submit(key)
    placed = scheduler.assign()
    # one running + one prefetched per slot until durations are known
    assert sorted(a.slot for a in placed) == [0, 0, 1, 1]
    assert [a.key for a in placed] == [0, 1, 2, 3]
    assert scheduler.num_pending == 6


def test_a_small_batch_spreads_over_every_node_first() -> None:
    scheduler = make(nodes=3, cpus=4)
    for key in range(3):
        scheduler.submit(key)
    assert sorted(where(scheduler, a.slot)[0] for a in scheduler.assign()) == ["n0", "n1", "n2"]


def test_prefetch_deepens_for_tiny_tasks_and_vanishes_for_long_ones() -> None:
    scheduler = make(prefetch=64)
    scheduler.submit(0)
    (a,) = scheduler.assign()
    scheduler.finished(a.key, a.slot, duration_s=1e-5)
    assert scheduler.extra == 64
    for _ in range(50):
        scheduler.mean_duration_s = 1.0
    assert scheduler.extra == 0


def test_long_tasks_are_not_queued_behind_each_other_near_the_end() -> None:
    scheduler = make(cpus=1)
    scheduler.mean_duration_s = 10.0
    for key in range(2):
        scheduler.submit(key)
    assert [a.key for a in scheduler.assign()] == [0]
    scheduler.finished(0, 0, 10.0)
    assert [a.key for a in scheduler.assign()] == [1]


def test_groups_are_served_round_robin() -> None:
    scheduler = make(cpus=1, prefetch=0)
    scheduler.mean_duration_s = 1.0
    for key in range(5):
        scheduler.submit(key, group=1)
    scheduler.submit(100, group=2)
    order = []
    for _ in range(3):
        (a,) = scheduler.assign()
        order.append(a.key)
        scheduler.finished(a.key, a.slot, 1.0)
    assert order == [0, 100, 1]


def test_a_multi_process_task_takes_idle_slots_of_one_node_and_holds_them() -> None:
    scheduler = make(nodes=2, cpus=4)
    scheduler.submit(1, Need(ppn=3))
    (a,) = scheduler.assign()
    assert a.placement is not None and len(a.placement.parts) == 1
    part = a.placement.parts[0]
    assert len(part.cpus) == 3 and where(scheduler, a.slot) == (part.node, part.cpus[0])
    node = scheduler.node_index[part.node]
    assert len(scheduler.nodes[node].idle) == 1  # the fourth CPU of that node
    scheduler.finished(1, a.slot, 1.0)
    assert len(scheduler.nodes[node].idle) == 4


def test_a_two_node_task_gets_a_share_on_each_node() -> None:
    scheduler = make(nodes=3, cpus=2)
    scheduler.submit(1, Need(nnodes=2, ppn=2))
    (a,) = scheduler.assign()
    assert a.placement is not None
    assert [len(p.cpus) for p in a.placement.parts] == [2, 2]
    assert len({p.node for p in a.placement.parts}) == 2


def test_gpu_tasks_get_distinct_devices_then_shared_ones() -> None:
    scheduler = make(cpus=8, gpus=("0", "0", "1", "1"))
    for key in range(4):
        scheduler.submit(key, Need(gpus_per_proc=1))
    placed = scheduler.assign()
    gpus = [a.placement.gpus for a in placed if a.placement]
    assert sorted(gpus[:2]) == [("0",), ("1",)]
    assert sorted(g for (g,) in gpus) == ["0", "0", "1", "1"]
    scheduler.submit(9, Need(gpus_per_proc=1))
    assert scheduler.assign() == []  # every GPU unit is taken: it waits
    scheduler.finished(placed[0].key, placed[0].slot, 1.0)
    (a,) = scheduler.assign()
    assert a.placement is not None and a.placement.gpus == placed[0].placement.gpus


def test_affinity_asks_for_exactly_those_cpus_and_gpus() -> None:
    scheduler = make(cpus=4, gpus=("0", "1"))
    scheduler.submit(1, Need.of(cpu_affinity=[2, 3], gpu_affinity=["1"]))
    (a,) = scheduler.assign()
    assert a.placement is not None
    assert (a.placement.cpus, a.placement.gpus) == ((2, 3), ("1",))


def test_a_blocked_wide_task_reserves_slots_that_narrow_tasks_then_leave_alone() -> None:
    scheduler = make(cpus=2, prefetch=0)
    scheduler.mean_duration_s = 1.0
    scheduler.submit(0)
    scheduler.submit(1)
    first = scheduler.assign()
    assert len(first) == 2  # both CPUs busy
    scheduler.submit(10, Need(ppn=2), group=2)
    for key in range(2, 6):
        scheduler.submit(key)
    assert scheduler.assign() == []
    scheduler.finished(first[0].key, first[0].slot, 1.0)
    assert scheduler.assign() == []  # the freed slot is kept for the wide task
    scheduler.finished(first[1].key, first[1].slot, 1.0)
    (wide,) = scheduler.assign()
    assert wide.key == 10
    scheduler.finished(10, wide.slot, 1.0)
    assert sorted(a.key for a in scheduler.assign()) == [2, 3]


def test_a_lost_slot_returns_its_tasks_and_requeued_ones_go_first() -> None:
    scheduler = make(cpus=2)
    for key in range(4):
        scheduler.submit(key)
    placed = scheduler.assign()
    on_zero = [a.key for a in placed if a.slot == 0]
    assert scheduler.slot_down(0) == on_zero
    scheduler.requeue(on_zero, {})
    scheduler.finished(placed[1].key, 1, 1e-4)  # tiny: prefetch deepens
    again = scheduler.assign()
    assert again and again[0].key == on_zero[0] and again[0].slot == 1


@pytest.mark.parametrize(
    ("need", "reason"),
    [
        (Need(ppn=3), "asks for ppn=3, but the largest node has 2 CPU slots"),
        (Need(nnodes=3), "3 nodes, but 2 of the launcher's 2 nodes can hold a share"),
        (Need(gpus_per_proc=1), "the node with the most GPUs has 0"),
        (Need.of(cpu_affinity=[7]), "no node has all of CPUs 7 (node n0 has 0-1)"),
    ],
)
def test_a_request_no_node_could_hold_is_explained(need: Need, reason: str) -> None:
    scheduler = make(nodes=2)
    assert scheduler.why_unplaceable(Need()) is None
    assert reason in (scheduler.why_unplaceable(need) or "")


def test_slots_gone_for_good_make_queued_wide_tasks_unplaceable() -> None:
    scheduler = make(nodes=2, cpus=2)
    scheduler.submit(0, Need(nnodes=2))
    scheduler.slot_down(0)  # being replaced: nothing changes
    scheduler.slot_down(1)
    assert scheduler.pending_unplaceable() == []
    scheduler.slot_down(0, gone=True)
    scheduler.slot_down(1, gone=True)
    ((key, why),) = scheduler.pending_unplaceable()
    assert key == 0 and "2 nodes" in why


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ppn": 2, "cpu_affinity": [0, 1, 2]}, "3 CPUs for ppn=2"),
        ({"cpu_affinity": [1, 1]}, "names a CPU twice"),
        ({"ppn": 2, "ngpus_per_process": 1, "gpu_affinity": ["0"]}, "need 2"),
    ],
)
def test_affinity_lists_that_cannot_be_shared_evenly_are_refused(
    fields: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Need.of(**fields)


def test_a_batch_of_blocked_wide_tasks_beside_others_does_not_break_placement() -> None:
    scheduler = make(cpus=4, gpus=("0",))
    for key in range(3):
        scheduler.submit(key, Need(gpus_per_proc=1), group=1)  # one fits, two wait
    scheduler.submit(10, Need(gpus_per_proc=1), group=2)
    scheduler.submit(20, group=3)
    placed = scheduler.assign()
    assert sorted(a.key for a in placed) == [0, 20]
    assert scheduler.assign() == []


def test_a_reservation_is_dropped_when_one_of_its_slots_is_gone_for_good() -> None:
    scheduler = make(cpus=4, prefetch=0)
    scheduler.mean_duration_s = 1.0
    for key in range(4):
        scheduler.submit(key)
    first = scheduler.assign()
    scheduler.submit(9, Need(ppn=4), group=2)
    assert scheduler.assign() == []
    assert scheduler.reservation is not None
    reserved = next(iter(scheduler.reservation.slots))
    scheduler.slot_down(reserved)  # its worker died: being replaced
    scheduler.slot_down(reserved, gone=True)  # ... and it never comes back
    assert scheduler.reservation is None
    assert [a for a in first if a.slot == reserved]
