"""The pure scheduler: events in, placements out (no processes)."""

from __future__ import annotations

from core.scheduler import Assignment, Scheduler


def make(children: int = 2, node: str = "n0", prefetch: int = 64) -> Scheduler:
    scheduler = Scheduler(prefetch)
    for i in range(children):
        scheduler.add_child(f"w{i}".encode(), node)
    return scheduler


def test_tasks_are_spread_evenly_before_any_duration_is_known() -> None:
    scheduler = make()
    for key in range(10):
        scheduler.submit(key)
    placed = scheduler.assign()
    # one running + one prefetched per slot until durations are known
    assert sorted(a.child for a in placed) == [b"w0", b"w0", b"w1", b"w1"]
    assert [a.key for a in placed] == [0, 1, 2, 3]
    assert scheduler.num_pending == 6


def test_prefetch_deepens_for_tiny_tasks_and_vanishes_for_long_ones() -> None:
    scheduler = make(prefetch=64)
    scheduler.finished(b"w0", -1, duration_s=1e-5)
    assert scheduler.extra == 64
    for _ in range(50):
        scheduler.finished(b"w0", -1, duration_s=1.0)
    assert scheduler.extra == 0


def test_long_tasks_are_not_queued_behind_each_other_near_the_end() -> None:
    scheduler = make(children=1)
    scheduler.mean_duration_s = 10.0
    for key in range(2):
        scheduler.submit(key)
    assert scheduler.assign() == [Assignment(b"w0", 0)]
    assert scheduler.assign() == []
    scheduler.finished(b"w0", 0, 10.0)
    assert scheduler.assign() == [Assignment(b"w0", 1)]


def test_long_tasks_get_one_queued_behind_while_the_queue_is_long() -> None:
    scheduler = make(children=2)
    scheduler.mean_duration_s = 10.0
    for key in range(10):
        scheduler.submit(key)
    assert sorted(a.child for a in scheduler.assign()) == [b"w0", b"w0", b"w1", b"w1"]


def test_a_wide_task_waits_for_enough_idle_slots_on_one_node_and_reserves_them() -> None:
    scheduler = make(children=2)
    scheduler.mean_duration_s = 10.0
    scheduler.submit(0)
    scheduler.submit(1, nprocs=2)
    scheduler.submit(2)
    assert scheduler.assign() == [Assignment(b"w0", 0)]  # FIFO: the wide task blocks task 2
    scheduler.finished(b"w0", 0, 10.0)
    (wide,) = scheduler.assign()
    assert wide.key == 1 and {wide.child, *wide.helpers} == {b"w0", b"w1"}
    assert scheduler.assign() == []  # both slots are taken by the wide task
    scheduler.finished(wide.child, 1, 10.0)
    assert all(state.reserved_by is None for state in scheduler.children.values())
    assert [a.key for a in scheduler.assign()] == [2]


def test_a_wide_task_never_spans_nodes() -> None:
    scheduler = Scheduler()
    scheduler.add_child(b"a", "n0")
    scheduler.add_child(b"b", "n1")
    scheduler.submit(0, nprocs=2)
    assert scheduler.assign() == []
    assert not scheduler.can_ever_place(2)


def test_losing_a_child_returns_its_running_task_and_requeues_the_rest_in_order() -> None:
    scheduler = make(children=1, prefetch=64)
    scheduler.mean_duration_s = 1e-5
    for key in range(5):
        scheduler.submit(key)
    assert [a.key for a in scheduler.assign()] == [0, 1, 2, 3, 4]
    running, requeued = scheduler.remove_child(b"w0")
    assert (running, requeued) == ([0], [1, 2, 3, 4])
    assert scheduler.pending == [1, 2, 3, 4]


def test_cancelling_pending_tasks_drops_only_those() -> None:
    scheduler = make(children=0)
    for key in range(5):
        scheduler.submit(key)
    assert scheduler.cancel_pending({1, 3, 9}) == [1, 3]
    assert scheduler.pending == [0, 2, 4]


def test_batches_are_served_round_robin_so_a_small_one_is_not_stuck_behind_a_big_one() -> None:
    scheduler = make(children=2)
    scheduler.mean_duration_s = 10.0
    for key in range(100):
        scheduler.submit(key, group=0)
    scheduler.submit(1000, group=1)
    first = [a.key for a in scheduler.assign()]
    assert 1000 in first
    assert scheduler.num_pending == 101 - len(first)


def test_groups_take_turns_within_one_placement_round() -> None:
    scheduler = make(children=1, prefetch=64)
    scheduler.mean_duration_s = 1e-5
    for key in range(10):
        scheduler.submit(key, group=0)
    for key in range(100, 103):
        scheduler.submit(key, group=1)
    keys = [a.key for a in scheduler.assign()]
    assert keys[:6] == [0, 100, 1, 101, 2, 102]
    assert sorted(keys) == [*range(10), 100, 101, 102]
