"""Fault catalogue: every failure point ends in a clear per-task result, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import ConfigError, Launcher, Task, TaskStatus
from core.spawn import processes_of_run
from tests.conftest import pids_with_env, wait_until_gone

ROOT = str(Path(__file__).resolve().parents[2])


class ExplodesWhenLoaded:
    """Pickles fine here; raises when a worker unpickles it."""

    def __reduce__(self):
        return (_explode, ("unpickled in the worker",))


def _explode(message: str) -> None:
    raise RuntimeError(message)


class ExitsWhenLoaded:
    def __reduce__(self):
        return (os._exit, (9,))


def identity(value: object) -> object:
    return value


def returns_a_lock() -> object:
    return threading.Lock()


def echo_kwargs(**kwargs: object) -> dict[str, object]:
    return kwargs


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    with Launcher() as service:
        yield service


def test_an_unpicklable_return_value_fails_that_task_only(launcher: Launcher) -> None:
    batch = launcher.submit_tasks(
        [
            Task(task_id="lock", executable=returns_a_lock),
            Task(task_id="ok", executable=identity, args=(5,)),
        ]
    )
    lock, ok = batch.results(timeout=30)
    assert lock.status is TaskStatus.FAILED
    assert "could not be pickled" in (lock.exception or "")
    assert ok.result == 5


def test_an_unpicklable_argument_fails_that_task_only(launcher: Launcher) -> None:
    tasks = [
        Task(task_id=f"t{i}", executable=identity, args=(threading.Lock() if i == 1 else i,))
        for i in range(3)
    ]
    results = launcher.submit_tasks(tasks).results(timeout=30)
    assert [r.status.value for r in results] == ["success", "failed", "success"]
    assert "could not be sent" in (results[1].exception or "")
    assert [results[0].result, results[2].result] == [0, 2]


def test_an_argument_that_kills_the_worker_while_loading_fails_after_its_retry_alone(
    launcher: Launcher,
) -> None:
    tasks = [Task(task_id="x", executable=identity, args=(ExitsWhenLoaded(),))] + [
        Task(task_id=f"ok{i}", executable=identity, args=(i,)) for i in range(10)
    ]
    results = launcher.submit_tasks(tasks).results(timeout=30)
    assert results[0].status is TaskStatus.FAILED
    assert results[0].exception_type == "core.errors.WorkerLost"
    assert results[0].attempts == 2
    assert "lost on all 2 attempts" in (results[0].exception or "")
    assert [r.result for r in results[1:]] == list(range(10))
    assert {r.attempts for r in results[1:]} == {1}
    assert list(launcher.map(identity, range(5))) == list(range(5))


def test_an_argument_that_raises_while_loading_fails_its_task_and_spares_the_batch(
    launcher: Launcher,
) -> None:
    list(launcher.map(identity, range(2000)))  # tiny tasks: deep prefetch, many per message
    tasks = [
        Task(task_id=f"t{i}", executable=identity, args=(ExplodesWhenLoaded() if i == 5 else i,))
        for i in range(40)
    ]
    results = launcher.submit_tasks(tasks).results(timeout=30)
    assert results[5].status is TaskStatus.FAILED
    assert "unpickled in the worker" in (results[5].exception or "")
    assert [r.result for i, r in enumerate(results) if i != 5] == [i for i in range(40) if i != 5]


def test_a_python_callable_cannot_ask_for_several_processes(launcher: Launcher) -> None:
    with pytest.raises(ConfigError, match=r"needs? a command"):
        launcher.submit_tasks([Task(task_id="p", executable=identity, ppn=2)])


def test_keyword_arguments_reach_the_function(launcher: Launcher) -> None:
    (result,) = launcher.submit_tasks(
        [Task(task_id="k", executable=echo_kwargs, kwargs={"a": 1, "b": "x"})]
    ).results(timeout=30)
    assert result.result == {"a": 1, "b": "x"}


CLIENT = """
import sys
from core import Launcher, LauncherConfig, Task
nlevels = int(sys.argv[2])
launcher = Launcher(launcher_config=LauncherConfig(nlevels=nlevels)).start()
name, value = sys.argv[1].split("=")
batch = launcher.submit_tasks([Task(task_id="s", executable=["sleep", "60"], env={name: value})])
print(launcher.run_id, flush=True)
batch.results()
"""


@pytest.mark.parametrize("nlevels", [0, 1])
def test_killing_the_client_with_sigkill_leaves_no_process_behind(nlevels: int, mark: str) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, mark, str(nlevels)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert client.stdout is not None
        run_id = client.stdout.readline().strip()
        deadline = time.monotonic() + 20
        while not pids_with_env(mark) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pids_with_env(mark), "the task never started"
        client.kill()
        client.wait(timeout=10)
        assert wait_until_gone(mark) == []
        assert wait_until_gone(f"ENSEMBLE_MCP_RUN={run_id}") == []
    finally:
        client.kill()
        client.wait()


BROKEN_WORKER = """
import os, time
from core.protocol import Register, SlotInfo
import core.worker

def serve(self):  # register, then die soon after: a broken worker, no task needed
    o = self.options
    self.channel.send(Register(pid=os.getpid(), slots=(SlotInfo(o.slot, o.node, o.cpu),), nodes=()))
    time.sleep(0.05)
    os._exit(3)

core.worker.Worker.serve = serve
"""

WATCH = """
import logging, sys, time
from core import Launcher, LauncherConfig
logging.basicConfig(level=logging.WARNING)
with Launcher(launcher_config=LauncherConfig(nlevels=0)) as launcher:
    time.sleep(3)  # a window of time over which the replacements are counted
"""


def test_workers_that_keep_dying_are_replaced_after_a_growing_pause_not_in_a_spin(
    tmp_path: Path,
) -> None:
    (tmp_path / "sitecustomize.py").write_text(BROKEN_WORKER)  # loaded by every worker
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    done = subprocess.run([sys.executable, "-c", WATCH], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    replacements = done.stderr.count("starting a replacement")
    assert 4 <= replacements <= 16, done.stderr[-2000:]  # two slots; pauses 0, .25, .5, 1 s


def test_a_crash_of_the_manager_fails_every_task_and_refuses_new_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.errors import LauncherBroken
    from core.table import TaskTable

    with Launcher() as launcher:
        assert list(launcher.map(identity, [1, 2])) == [1, 2]

        def broken_dispatch(self: TaskTable) -> list:
            raise RuntimeError("a bug in placement")

        monkeypatch.setattr(TaskTable, "dispatch", broken_dispatch)
        results = launcher.map_tasks(identity, [((i,), {}) for i in range(5)]).results(timeout=30)
        assert {r.status for r in results} == {TaskStatus.FAILED}
        assert {r.exception_type for r in results} == {"core.errors.LauncherBroken"}
        assert all("a bug in placement" in (r.exception or "") for r in results)
        with pytest.raises(LauncherBroken, match="a bug in placement"):
            launcher.map_tasks(identity, [((1,), {})])
    assert processes_of_run(launcher.run_id) == []
