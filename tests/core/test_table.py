"""The task table, without processes: events in, actions out; cancel, loss, retries, once-only."""

from __future__ import annotations

import pickle

from core.protocol import Done, NodeInfo, Outcome, SlotInfo
from core.scheduler import Need
from core.table import CancelOn, Deliver, Final, NewTask, Send, TaskTable

NOW = 1000.0


def table(
    nodes: dict[bytes, list[str]], cpus: int = 2, gpus: int = 0, prefetch: int = 0
) -> TaskTable:
    """A table whose children (route -> node names) bring ``cpus`` slots per node."""
    t = TaskTable(prefetch)
    for child, names in nodes.items():
        slots = [SlotInfo(f"{n}:{c}", n, c) for n in names for c in range(cpus)]
        infos = [NodeInfo(n, tuple(str(g) for g in range(gpus))) for n in names]
        t.add_child(child, slots, infos)
    t.ready()
    t.scheduler.mean_duration_s = 1.0  # long tasks: no prefetch, one task per slot
    return t


def sent(actions: list) -> dict[int, tuple[bytes, str, int]]:
    """Key -> (child, slot, attempt) of every Send."""
    return {e.key: (a.child, e.slot, e.attempt) for a in actions if isinstance(a, Send)
            for e in a.entries}  # fmt: skip


def finals(actions: list) -> dict[int, Final]:
    return {f.key: f for a in actions if isinstance(a, Deliver) for f in a.finals}


def ok(key: int, attempt: int = 1) -> Done:
    return Done(key, attempt, "success", 1.0, pickle.dumps(Outcome("success", key)))


def failed(key: int, attempt: int = 1) -> Done:
    return Done(key, attempt, "failed", 1.0, pickle.dumps(Outcome("failed")))


def test_tasks_are_sent_to_the_child_of_their_slot_and_delivered_once() -> None:
    t = table({b"a": ["h1"], b"b": ["h2"]})
    assert t.submit([NewTask(k, b"p") for k in range(4)], 1, NOW) == []
    placed = sent(t.dispatch())
    assert sorted(placed) == [0, 1, 2, 3]
    assert {child for child, _, _ in placed.values()} == {b"a", b"b"}
    done = finals(t.done([ok(0)]))
    assert done[0].status == "success" and done[0].attempts == 1
    assert done[0].hosts == (placed[0][1].split(":")[0],)
    assert t.done([ok(0)]) == []  # a duplicate is dropped
    assert 0 not in t.tasks


def test_a_lost_worker_reruns_only_the_task_it_was_running() -> None:
    t = table({b"a": ["h1"]}, cpus=1, prefetch=8)
    t.scheduler.mean_duration_s = 1e-4  # tiny tasks: prefetch deep
    t.submit([NewTask(k, b"p") for k in range(3)], 1, NOW)
    placed = sent(t.dispatch())
    assert len(placed) == 3  # one running, two queued on the one slot
    actions = t.slots_down(["h1:0"], "the worker died", NOW, running=(1, 1))
    assert finals(actions) == {}
    t.slots_up([SlotInfo("h1:0", "h1", 0)])
    again = sent(t.dispatch())
    assert sorted(again) == [0, 1, 2]
    assert again[1][2] == 2 and again[0][2] == 2  # new attempts everywhere
    result = finals(t.done([ok(1, 2), ok(0, 2), ok(2, 2)]))
    assert result[1].attempts == 2 and result[0].attempts == 1 and result[2].attempts == 1
    assert result[1].history == ("attempt 1 was lost: the worker died",)
    assert t.done([ok(1, 1)]) == []  # the lost attempt's late result is ignored


def test_a_task_that_keeps_killing_its_worker_fails_after_its_retries() -> None:
    t = table({b"a": ["h1"]}, cpus=1)
    t.submit([NewTask(7, b"p", max_retries=1)], 1, NOW)
    for attempt in (1, 2):
        assert sent(t.dispatch()) == {7: (b"a", "h1:0", attempt)}
        actions = t.slots_down(["h1:0"], "the worker died (signal SIGKILL)", NOW,
                               running=(7, attempt))  # fmt: skip
        t.slots_up([SlotInfo("h1:0", "h1", 0)])
    final = finals(actions)[7]
    assert (final.status, final.attempts) == ("failed", 2)
    assert isinstance(final.outcome, Outcome)
    assert final.outcome.exception_type == "core.errors.WorkerLost"
    assert "lost on all 2 attempts" in (final.outcome.exception or "")


def test_a_lost_node_requeues_its_tasks_on_the_others_and_says_so() -> None:
    t = table({b"a": ["h1"], b"b": ["h2"]}, cpus=1)
    t.submit([NewTask(k, b"p") for k in range(2)], 1, NOW)
    placed = sent(t.dispatch())
    on_b = next(k for k, (child, _, _) in placed.items() if child == b"b")
    assert finals(t.child_lost(b"b", "the sub-master on h2 was lost", NOW)) == {}
    done_a = next(k for k in placed if k != on_b)
    t.done([ok(done_a)])
    assert sent(t.dispatch()) == {on_b: (b"a", "h1:0", 2)}
    final = finals(t.done([ok(on_b, 2)]))[on_b]
    assert final.hosts == ("h1",) and final.attempts == 2
    assert final.history == ("attempt 1 was lost: the sub-master on h2 was lost",)


def test_losing_every_node_a_queued_task_could_use_fails_it_as_unplaceable() -> None:
    t = table({b"a": ["h1"], b"b": ["h2"]}, cpus=1)
    t.submit([NewTask(1, b"p", need=Need(nnodes=2))], 1, NOW)
    t.submit([NewTask(2, b"p")], 2, NOW)  # waits behind nothing: placed at once
    t.child_lost(b"b", "lost", NOW)
    final = finals(t.slots_down([], "", NOW))  # no event needed: the loss already decided
    assert final == {}
    assert 1 not in t.tasks
    assert 2 in t.tasks


def test_cancel_ends_queued_tasks_at_once_and_stops_running_ones_on_their_slot() -> None:
    t = table({b"a": ["h1"]}, cpus=1)
    t.submit([NewTask(1, b"p", fn=b"digest"), NewTask(2, b"p")], 1, NOW)
    assert list(sent(t.dispatch())) == [1]
    actions = t.cancel([1, 2], NOW)
    assert finals(actions)[2].status == "cancelled"
    (cancel,) = [a for a in actions if isinstance(a, CancelOn)]
    assert cancel == CancelOn(b"a", "h1:0", (1,), True)  # a Python call: its worker goes
    result = finals(t.slots_down(["h1:0"], "killed", NOW, running=(1, 1)))
    assert result[1].status == "cancelled"


def test_a_failed_task_is_retried_only_when_asked() -> None:
    t = table({b"a": ["h1"]}, cpus=1)
    t.submit([NewTask(1, b"p"), NewTask(2, b"p", failure_retries=1)], 1, NOW)
    t.dispatch()
    assert finals(t.done([failed(1)]))[1].status == "failed"
    assert sent(t.dispatch()) == {2: (b"a", "h1:0", 1)}
    assert finals(t.done([failed(2)])) == {}
    assert sent(t.dispatch()) == {2: (b"a", "h1:0", 2)}
    final = finals(t.done([ok(2, 2)]))[2]
    assert (final.status, final.attempts) == ("success", 2)
    assert final.history == ("attempt 1 ended failed; retried",)


def test_never_placeable_tasks_end_at_submission_with_the_reason() -> None:
    t = table({b"a": ["h1"]}, cpus=2)
    actions = t.submit([NewTask(1, b"p", need=Need(ppn=4)), NewTask(2, b"p")], 1, NOW)
    final = finals(actions)[1]
    assert isinstance(final.outcome, Outcome)
    assert final.outcome.exception_type == "core.errors.Unplaceable"
    assert "ppn=4, but the largest node has 2 CPU slots" in (final.outcome.exception or "")
    assert final.attempts == 0
    assert list(sent(t.dispatch())) == [2]


def test_shutdown_cancels_everything_left() -> None:
    t = table({b"a": ["h1"]}, cpus=1)
    t.submit([NewTask(k, b"p") for k in range(3)], 1, NOW)
    t.dispatch()
    result = finals(t.shutdown(NOW))
    assert sorted(result) == [0, 1, 2] and {f.status for f in result.values()} == {"cancelled"}


def test_status_counts_per_node() -> None:
    t = table({b"a": ["h1"], b"b": ["h2"]}, cpus=1)
    t.submit([NewTask(k, b"p") for k in range(2)], 1, NOW)
    placed = sent(t.dispatch())
    key_h1 = next(k for k, (child, _, _) in placed.items() if child == b"a")
    t.done([failed(key_h1)])
    assert t.status() == {"h1": {"running": 0, "done": 0, "failed": 1, "lost": 0},
                          "h2": {"running": 1, "done": 0, "failed": 0, "lost": 0}}  # fmt: skip
    t.child_lost(b"b", "lost", NOW)
    assert t.status()["h2"]["lost"] == 1


def test_losing_the_other_node_of_a_two_node_task_stops_it_and_runs_it_again() -> None:
    t = table({b"a": ["h1"], b"b": ["h2"], b"c": ["h3"]}, cpus=1)
    t.submit([NewTask(1, b"p", need=Need(nnodes=2))], 1, NOW)
    ((child, slot, attempt),) = sent(t.dispatch()).values()
    placement = t.tasks[1].placement
    assert placement is not None
    helper = placement.parts[1].node
    lost = {b"a": "h1", b"b": "h2", b"c": "h3"}
    helper_child = next(c for c, n in lost.items() if n == helper)
    actions = t.child_lost(helper_child, f"the sub-master on {helper} was lost", NOW)
    assert CancelOn(child, slot, (1,), False) in actions  # stopped on its leader
    cancelled = Done(1, attempt, "cancelled", 1.0, pickle.dumps(Outcome("cancelled")))
    assert finals(t.done([cancelled], NOW)) == {}  # not delivered: it runs again
    ((_, _, again),) = sent(t.dispatch()).values()
    final = finals(t.done([ok(1, again)]))[1]
    assert final.status == "success" and final.attempts == 2
    assert final.history == (f"attempt 1 was lost: the sub-master on {helper} was lost",)
