"""The launcher service end to end on this node: real worker processes, real ZeroMQ sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

from core import Launcher, LauncherConfig, Task, TaskFailed, TaskStatus
from core.spawn import processes_of_run
from tests.conftest import pids_with_env, wait_until_gone


def square(x: int) -> int:
    return x * x


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def boom(x: int) -> int:
    raise ValueError(f"bad value {x}")


def die() -> None:
    os._exit(7)


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def where() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("ENSEMBLE_MCP_TEST_VAR")


@pytest.fixture(
    scope="module",
    params=[
        pytest.param({"nlevels": 0}, id="nlevels0-ipc"),
        pytest.param({"nlevels": 1, "comm_name": "zmq"}, id="nlevels1-tcp-curve"),
    ],
)
def launcher(request: pytest.FixtureRequest) -> Iterator[Launcher]:
    config = LauncherConfig(return_stdout=True, **request.param)
    with Launcher(launcher_config=config) as service:
        yield service
    assert processes_of_run(service.run_id) == []


def test_map_returns_values_in_submission_order(launcher: Launcher) -> None:
    assert list(launcher.map(square, range(200))) == [x * x for x in range(200)]


def test_async_functions_run_to_completion(launcher: Launcher) -> None:
    assert list(launcher.map(async_double, [1, 2, 3])) == [2, 4, 6]


def test_submit_raises_task_failed_with_the_remote_traceback(launcher: Launcher) -> None:
    future = launcher.submit(boom, 3)
    with pytest.raises(TaskFailed) as info:
        future.result(timeout=30)
    result = info.value.result
    assert result.status is TaskStatus.FAILED
    assert result.exception_type == "builtins.ValueError"
    assert result.exception is not None
    assert result.exception.startswith("ValueError: bad value 3")
    assert "### task" in result.exception and "in boom" in result.exception


def test_one_failing_task_never_fails_the_others(launcher: Launcher) -> None:
    tasks = [
        Task(task_id=f"t{i}", executable=boom if i == 2 else square, args=(i,)) for i in range(5)
    ]
    results = launcher.submit_tasks(tasks).results(timeout=30)
    assert [r.task_id for r in results] == [f"t{i}" for i in range(5)]
    assert [r.status.value for r in results] == ["success"] * 2 + ["failed"] + ["success"] * 2
    assert [r.result for r in results if r.ok] == [0, 1, 9, 16]


def test_commands_capture_stdout_stderr_and_exit_code(launcher: Launcher) -> None:
    script = "import sys; print('out', sys.argv[1]); print('err', file=sys.stderr); sys.exit(3)"
    tasks = [
        Task(task_id="ok", executable=["echo", "a b", "$(id)"]),
        Task(task_id="bad", executable=[sys.executable, "-c", script, "x y"]),
        Task(task_id="missing", executable=["/nonexistent/program"]),
    ]
    ok, bad, missing = launcher.submit_tasks(tasks).results(timeout=30)
    assert (ok.status, ok.stdout, ok.returncode) == (TaskStatus.SUCCESS, "a b $(id)\n", 0)
    assert (bad.status, bad.returncode) == (TaskStatus.FAILED, 3)
    assert (bad.stdout, bad.stderr, bad.exception) == ("out x y\n", "err\n", "exit code 3")
    assert missing.status is TaskStatus.FAILED
    assert missing.exception is not None and "/nonexistent/program" in missing.exception


def test_commands_get_env_and_run_dir(launcher: Launcher, tmp_path) -> None:
    run_dir = tmp_path / "run" / "a"
    task = Task(
        task_id="env",
        executable=["sh", "-c", "echo $ENSEMBLE_MCP_TEST_VAR; pwd"],
        env={"ENSEMBLE_MCP_TEST_VAR": "hello"},
        run_dir=str(run_dir),
    )
    (result,) = launcher.submit_tasks([task]).results(timeout=30)
    assert result.stdout == f"hello\n{run_dir}\n"


def test_a_command_past_its_timeout_is_killed(launcher: Launcher, mark: str) -> None:
    name, value = mark.split("=")
    task = Task(task_id="slow", executable=["sleep", "30"], timeout=0.3, env={name: value})
    (result,) = launcher.submit_tasks([task]).results(timeout=30)
    assert result.status is TaskStatus.TIMEOUT
    assert result.returncode == -15
    assert wait_until_gone(mark) == []


def test_a_python_task_past_its_timeout_ends_with_timeout(launcher: Launcher) -> None:
    task = Task(task_id="slow", executable=sleep_then, args=(30, 1), timeout=0.2)
    (result,) = launcher.submit_tasks([task]).results(timeout=30)
    assert result.status is TaskStatus.TIMEOUT
    assert list(launcher.map(square, [4])) == [16]


def test_cancel_ends_running_and_queued_tasks_and_leaves_no_process(
    launcher: Launcher, mark: str
) -> None:
    name, value = mark.split("=")
    tasks = [Task(task_id=f"s{i}", executable=["sleep", "30"], env={name: value}) for i in range(6)]
    tasks.append(Task(task_id="py", executable=sleep_then, args=(30, 0)))
    batch = launcher.submit_tasks(tasks)
    deadline = time.monotonic() + 10
    while len(pids_with_env(mark)) < min(2, launcher.num_slots) and time.monotonic() < deadline:
        time.sleep(0.01)
    batch.cancel()
    results = batch.results(timeout=30)
    assert {r.status for r in results} == {TaskStatus.CANCELLED}
    assert wait_until_gone(mark) == []
    assert list(launcher.map(square, range(4))) == [0, 1, 4, 9]


def touch_then_sleep(path: str, seconds: float) -> None:
    open(path, "w").close()
    time.sleep(seconds)


def test_a_running_python_task_is_cancelled_by_replacing_its_worker(
    launcher: Launcher, tmp_path
) -> None:
    started = tmp_path / "started"
    batch = launcher.submit_tasks(
        [Task(task_id="py", executable=touch_then_sleep, args=(str(started), 30))]
    )
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists()
    batch.cancel()
    (result,) = batch.results(timeout=30)
    assert result.status is TaskStatus.CANCELLED
    assert list(launcher.map(square, range(4))) == [0, 1, 4, 9]


def test_a_task_that_kills_its_worker_fails_alone_and_the_service_goes_on(
    launcher: Launcher,
) -> None:
    tasks = [Task(task_id="die", executable=die)] + [
        Task(task_id=f"ok{i}", executable=square, args=(i,)) for i in range(20)
    ]
    results = launcher.submit_tasks(tasks).results(timeout=60)
    assert results[0].status is TaskStatus.FAILED
    assert results[0].exception_type == "core.errors.WorkerLost"
    assert "exit code 7" in (results[0].exception or "")
    assert [r.result for r in results[1:]] == [i * i for i in range(20)]


def test_many_batches_on_one_service_keep_their_results_apart(launcher: Launcher) -> None:
    batches = [
        launcher.map_tasks(square, [((b * 100 + i,), {}) for i in range(50)]) for b in range(8)
    ]
    for b, batch in enumerate(batches):
        assert [r.result for r in batch.results(timeout=30)] == [
            (b * 100 + i) ** 2 for i in range(50)
        ]


def test_stream_yields_every_result_on_an_event_loop(launcher: Launcher) -> None:
    batch = launcher.map_tasks(square, [((i,), {}) for i in range(100)])

    async def collect() -> list[int]:
        return [r.result async for r in batch.stream()]

    assert sorted(asyncio.run(collect())) == [i * i for i in range(100)]


def test_futures_resolve_to_records_and_carry_node_and_cpus(launcher: Launcher) -> None:
    batch = launcher.submit_tasks([Task(task_id="w", executable=where)])
    record = batch.futures[0].result(timeout=30)
    assert record.ok and record.node and len(record.cpus) == 1
    assert record.duration_s is not None and record.duration_s >= 0


def test_workers_are_persistent_processes(launcher: Launcher) -> None:
    pids = {pid for pid, _ in launcher.map(where_pid_only, range(200))}
    assert 1 <= len(pids) <= launcher.num_slots


def where_pid_only(_: int) -> tuple[int, None]:
    return os.getpid(), None


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec (apt: openmpi-bin)")
def test_a_two_process_command_runs_under_mpiexec_on_two_reserved_slots(launcher: Launcher) -> None:
    rank = "echo rank=${OMPI_COMM_WORLD_RANK:-$PMI_RANK} size=${OMPI_COMM_WORLD_SIZE:-$PMI_SIZE}"
    task = Task(
        task_id="mpi",
        executable=["sh", "-c", rank],
        ppn=2,
        env={
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_btl_base_warn_component_unused": "0",
        },
    )
    (result,) = launcher.submit_tasks([task]).results(timeout=60)
    assert result.status is TaskStatus.SUCCESS, result.stderr
    assert sorted((result.stdout or "").split("\n")[:2]) == ["rank=0 size=2", "rank=1 size=2"]
    assert len(set(result.cpus)) == 2


def test_a_three_level_tree_runs_tasks_and_leaves_no_process() -> None:
    config = LauncherConfig(nlevels=3, nchildren=2)
    with Launcher(launcher_config=config) as deep:
        assert list(deep.map(square, range(50))) == [x * x for x in range(50)]
        assert len(processes_of_run(deep.run_id)) > deep.num_slots  # sub-masters in between
    assert processes_of_run(deep.run_id) == []


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ({"ppn": 64}, "asks for ppn=64, but the largest node has"),
        ({"nnodes": 2}, "asks for nnodes=2, ppn=1: 2 nodes, but 1 of the launcher's 1 nodes"),
        ({"ngpus_per_process": 1}, "the node with the most GPUs has 0"),
        ({"cpu_affinity": [999]}, "no node has all of CPUs 999"),
    ],
)
def test_a_task_no_node_can_ever_hold_fails_at_once_with_the_reason(
    launcher: Launcher, field: dict, reason: str
) -> None:
    batch = launcher.submit_tasks([Task(task_id="t0", executable=["true"], **field)])
    (result,) = batch.results(timeout=5)
    assert result.status is TaskStatus.FAILED
    assert result.exception_type == "core.errors.Unplaceable"
    assert result.exception is not None and reason in result.exception
    assert "can never run on this launcher" in result.exception
    assert result.attempts == 0


def test_a_small_batch_is_not_stuck_behind_a_big_one(launcher: Launcher) -> None:
    big = launcher.map_tasks(sleep_then, [((0.01, i), {}) for i in range(200)])
    small = launcher.map_tasks(square, [((3,), {})])
    assert small.results(timeout=30)[0].result == 9
    assert big.num_done < len(big) // 2
    big.cancel()
    big.results(timeout=30)


def test_a_worker_killed_under_a_running_command_takes_the_command_with_it(
    launcher: Launcher, mark: str
) -> None:
    name, value = mark.split("=")
    task = Task(
        task_id="k", executable=["sh", "-c", "sleep 60 & kill -9 $PPID; wait"], env={name: value}
    )
    (result,) = launcher.submit_tasks([task]).results(timeout=30)
    assert result.status is TaskStatus.FAILED
    assert result.exception_type == "core.errors.WorkerLost"
    assert wait_until_gone(mark) == []
    assert list(launcher.map(square, range(3))) == [0, 1, 4]


def test_fast_paths_take_shared_options_and_ids_and_stream_indices(launcher: Launcher) -> None:
    from core.task import TaskOptions

    options = TaskOptions(env={"ENSEMBLE_MCP_TEST_VAR": "v"}, timeout=30)
    calls = launcher.map_tasks(
        where, [((), {}) for _ in range(3)], options=options, task_ids=["a", "b", "c"]
    )
    assert [r.task_id for r in calls.results(timeout=30)] == ["a", "b", "c"]
    assert {r.result[1] for r in calls.results()} == {"v"}
    commands = launcher.submit_commands([["echo", str(i)] for i in range(5)], options=options)

    async def indexed() -> list[tuple[int, str]]:
        return [(i, r.stdout or "") async for i, r in commands.stream_indexed()]

    assert sorted(asyncio.run(indexed())) == [(i, f"{i}\n") for i in range(5)]


def test_why_unplaceable_names_what_was_asked_and_what_the_node_has(launcher: Launcher) -> None:
    from core.task import TaskOptions

    assert launcher.why_unplaceable(TaskOptions()) is None
    reason = launcher.why_unplaceable(TaskOptions(ppn=launcher.num_slots + 1))
    assert reason is not None and f"ppn={launcher.num_slots + 1}" in reason
    assert str(launcher.num_slots) in reason


def chatty(lines: int) -> int:
    for i in range(lines):
        print(f"line {i:07d}")
    return lines


def test_a_python_tasks_stdout_keeps_its_tail_and_says_how_much_was_cut() -> None:
    config = LauncherConfig(nlevels=0, return_stdout=True, tail_bytes=1000)
    with Launcher(launcher_config=config) as service:
        (result,) = service.submit_tasks(
            [Task(task_id="c", executable=chatty, args=(100_000,))]
        ).results(timeout=60)
    assert result.result == 100_000
    assert result.stdout is not None
    head, _, body = result.stdout.partition("\n")
    assert head == f"[... {100_000 * 13 - 1000} chars cut ...]"
    assert len(body) == 1000 and body.endswith("line 0099999\n")
