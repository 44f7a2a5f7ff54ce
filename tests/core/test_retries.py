"""Retries with real processes: workers SIGKILLed under their tasks, failing tasks, the settings.

A task's attempts are counted through a file in its own directory, so a test knows which attempt
it is in without any channel but the file system. The worker running a task is found by the task
itself (its pid, or its parent's for a command) and checked by its ``ENSEMBLE_MCP_CHILD`` mark.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import Launcher, LauncherConfig, Task, TaskStatus
from core.ensemble import expand_tasks
from core.errors import ConfigError, WorkerLost
from core.spawn import CHILD_MARKER
from core.task import TaskOptions, first_problem

WAIT_S = 60


def count_attempt(state: Path) -> int:
    """Record one more attempt in ``state`` and return how many there have been."""
    with (state / "attempts").open("a") as file:
        file.write("x")
    return len((state / "attempts").read_text())


def publish(state: Path, text: str) -> None:
    """Write ``state/pid`` atomically, so the test never reads half of it."""
    (state / "pid.tmp").write_text(text)
    (state / "pid.tmp").rename(state / "pid")


def blocks_on_first_attempt(state: str) -> str:
    """Python task: the first attempt waits to be killed with its worker; later ones return."""
    attempt = count_attempt(Path(state))
    if attempt == 1:
        publish(Path(state), str(os.getpid()))
        time.sleep(WAIT_S)
    return f"attempt {attempt}"


def kills_its_worker(state: str) -> None:
    """Python task: SIGKILL the worker process it runs in, every time."""
    count_attempt(Path(state))
    os.kill(os.getpid(), signal.SIGKILL)


def fails_twice(state: str) -> str:
    """Python task: raise on the first two attempts, then succeed."""
    attempt = count_attempt(Path(state))
    if attempt <= 2:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return f"attempt {attempt}"


def identity(value: object) -> object:
    return value


COMMAND_BLOCKS_ON_FIRST_ATTEMPT = """
import os, pathlib, sys, time
state = pathlib.Path(sys.argv[1])
with (state / "attempts").open("a") as file:
    file.write("x")
attempt = len((state / "attempts").read_text())
if attempt == 1:
    (state / "pid.tmp").write_text(f"{os.getpid()} {os.getppid()}")
    (state / "pid.tmp").rename(state / "pid")
    time.sleep(60)
print(f"attempt {attempt}")
"""

COMMAND_FAILS_TWICE = """
import pathlib, sys
state = pathlib.Path(sys.argv[1])
with (state / "attempts").open("a") as file:
    file.write("x")
attempt = len((state / "attempts").read_text())
sys.exit(3 if attempt <= 2 else 0)
"""


@pytest.fixture(scope="module", params=[0, 1], ids=["nlevels0", "nlevels1"])
def launcher(request: pytest.FixtureRequest) -> Iterator[Launcher]:
    """A launcher whose workers hang under the master (0) or under a sub-master (1)."""
    config = LauncherConfig(nlevels=request.param)
    with Launcher(launcher_config=config, return_stdout=True) as service:
        yield service


def read_pids(path: Path) -> list[int]:
    """The pids a task published, once it has (bounded: the file is the only signal there is)."""
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, "the task never published its pid"
        time.sleep(0.01)
    return [int(word) for word in path.read_text().split()]


def is_worker(pid: int) -> bool:
    with open(f"/proc/{pid}/environ", "rb") as env:
        return any(item.startswith(f"{CHILD_MARKER}=".encode()) for item in env.read().split(b"\0"))


def gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def only_result(batch) -> object:  # type: ignore[no-untyped-def]
    delivered = list(batch.as_completed(timeout=WAIT_S))
    assert len(delivered) == 1, delivered
    return delivered[0]


def test_a_python_task_whose_worker_is_killed_succeeds_on_its_second_attempt(
    launcher: Launcher, tmp_path: Path
) -> None:
    slots = launcher.num_slots
    batch = launcher.submit_tasks(
        [Task(task_id="py", executable=blocks_on_first_attempt, args=(str(tmp_path),))]
    )
    (worker,) = read_pids(tmp_path / "pid")
    assert is_worker(worker)

    os.kill(worker, signal.SIGKILL)

    result = only_result(batch)
    assert result.status is TaskStatus.SUCCESS, result.exception
    assert result.result == "attempt 2"
    assert result.attempts == 2
    assert len(result.history) == 1
    assert result.history[0].startswith(
        "attempt 1 was lost: the worker process running it died (signal SIGKILL)"
    )
    assert list(launcher.map(identity, range(4))) == [0, 1, 2, 3]
    assert batch.num_done == 1
    assert launcher.num_slots == slots


def test_a_command_whose_worker_is_killed_succeeds_on_its_second_attempt_and_leaves_no_process(
    launcher: Launcher, tmp_path: Path
) -> None:
    batch = launcher.submit_tasks(
        [
            Task(
                task_id="cmd",
                executable=[sys.executable, "-c", COMMAND_BLOCKS_ON_FIRST_ATTEMPT, str(tmp_path)],
            )
        ]
    )
    command, worker = read_pids(tmp_path / "pid")
    assert is_worker(worker)

    os.kill(worker, signal.SIGKILL)

    result = only_result(batch)
    assert result.status is TaskStatus.SUCCESS, result.exception
    assert (result.stdout or "").strip() == "attempt 2"
    assert result.attempts == 2
    assert len(result.history) == 1
    assert result.history[0].startswith(
        "attempt 1 was lost: the worker process running it died (signal SIGKILL)"
    )
    assert gone(command), "the first attempt's command outlived its worker"
    assert (tmp_path / "attempts").read_text() == "xx"


def test_a_task_that_kills_its_worker_every_time_fails_after_its_retries_and_the_service_goes_on(
    launcher: Launcher, tmp_path: Path
) -> None:
    slots = launcher.num_slots
    batch = launcher.submit_tasks(
        [Task(task_id="k", executable=kills_its_worker, args=(str(tmp_path),), max_retries=2)]
    )

    result = only_result(batch)
    assert result.status is TaskStatus.FAILED
    assert result.exception_type == "core.errors.WorkerLost"
    assert result.attempts == 3
    assert "lost on all 3 attempts" in (result.exception or "")
    assert [line.split(":")[0] for line in result.history] == [
        "attempt 1 was lost",
        "attempt 2 was lost",
    ]
    assert (tmp_path / "attempts").read_text() == "xxx"
    with pytest.raises(WorkerLost):
        result.unwrap()
    assert list(launcher.map(identity, range(2 * slots))) == list(range(2 * slots))
    assert launcher.num_slots == slots


def test_a_command_that_kills_its_worker_with_no_retries_fails_at_once(
    launcher: Launcher, tmp_path: Path
) -> None:
    script = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"
    batch = launcher.submit_commands(
        [[sys.executable, "-c", script]], options=TaskOptions(max_retries=0)
    )

    result = only_result(batch)
    assert result.status is TaskStatus.FAILED
    assert result.exception_type == "core.errors.WorkerLost"
    assert result.attempts == 1
    assert result.history == []


def test_failure_retries_run_a_failing_task_again_until_it_succeeds(
    launcher: Launcher, tmp_path: Path
) -> None:
    batch = launcher.submit_tasks(
        [Task(task_id="f", executable=fails_twice, args=(str(tmp_path),), failure_retries=2)]
    )

    result = only_result(batch)
    assert result.status is TaskStatus.SUCCESS, result.exception
    assert result.result == "attempt 3"
    assert result.attempts == 3
    assert result.history == ["attempt 1 ended failed; retried", "attempt 2 ended failed; retried"]


def test_failure_retries_are_not_used_without_being_asked(
    launcher: Launcher, tmp_path: Path
) -> None:
    result = only_result(
        launcher.map_tasks(fails_twice, [((str(tmp_path),), {})], options=TaskOptions())
    )

    assert result.status is TaskStatus.FAILED
    assert result.attempts == 1
    assert "attempt 1 fails on purpose" in (result.exception or "")


def test_failure_retries_through_task_options_and_a_timeout_that_is_retried(
    launcher: Launcher, tmp_path: Path
) -> None:
    options = TaskOptions(failure_retries=2)
    command = [sys.executable, "-c", COMMAND_FAILS_TWICE, str(tmp_path)]
    ok = only_result(launcher.submit_commands([command], options=options))
    slow = only_result(
        launcher.submit_commands(
            [["sleep", "30"]], options=TaskOptions(timeout=0.3, failure_retries=1)
        )
    )

    assert (ok.status, ok.attempts, ok.returncode) == (TaskStatus.SUCCESS, 3, 0)
    assert (slow.status, slow.attempts) == (TaskStatus.TIMEOUT, 2)
    assert slow.history == ["attempt 1 ended timeout; retried"]


def test_ensemble_file_keys_set_each_tasks_retries(launcher: Launcher, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    spec = {
        "cmd_template": f"{sys.executable} -c {{code}} {tmp_path}/{{state}}",
        "code": COMMAND_FAILS_TWICE,
        "state": ["a", "b"],
        "failure_retries": [2, 0],
    }
    tasks = expand_tasks({"ensembles": {"flaky": spec}})
    assert [t.failure_retries for t in tasks] == [2, 0]
    assert [t.max_retries for t in tasks] == [None, None]

    first, second = launcher.submit_tasks(tasks).results(timeout=WAIT_S)

    assert (first.status, first.attempts) == (TaskStatus.SUCCESS, 3)
    assert (second.status, second.attempts, second.returncode) == (TaskStatus.FAILED, 1, 3)


def test_a_task_without_its_own_setting_takes_the_launchers(tmp_path: Path) -> None:
    config = LauncherConfig(nlevels=0, max_retries=0, failure_retries=1)
    (tmp_path / "own").mkdir()
    (tmp_path / "launchers").mkdir()
    with Launcher(launcher_config=config) as service:
        own, launchers = service.submit_tasks(
            [
                Task(
                    task_id="own",
                    executable=fails_twice,
                    args=(f"{tmp_path}/own",),
                    failure_retries=2,
                ),
                Task(task_id="launchers", executable=fails_twice, args=(f"{tmp_path}/launchers",)),
            ]
        ).results(timeout=WAIT_S)
        lost = only_result(
            service.submit_tasks(
                [Task(task_id="k", executable=kills_its_worker, args=(str(tmp_path),))]
            )
        )

    assert (own.status, own.attempts) == (TaskStatus.SUCCESS, 3)
    assert (launchers.status, launchers.attempts) == (TaskStatus.FAILED, 2)
    assert (lost.status, lost.attempts) == (TaskStatus.FAILED, 1)


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_a_bad_retry_count_is_refused_with_the_same_message_everywhere(value: object) -> None:
    with pytest.raises(ValidationError) as task_error:
        Task(task_id="t", executable=["true"], max_retries=value)
    with pytest.raises(ValidationError) as options_error:
        TaskOptions(failure_retries=value)
    with pytest.raises(ConfigError) as file_error:
        expand_tasks({"ensembles": {"e": {"cmd_template": "true", "max_retries": value}}})

    problem = first_problem(task_error.value)[1]
    assert problem == first_problem(options_error.value)[1]
    assert problem.startswith("must be a whole number >= 0 (or null for the launcher's setting)")
    assert str(file_error.value) == f"ensemble 'e', key 'max_retries': {problem}"
