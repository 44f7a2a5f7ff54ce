"""Tasks get the CPUs and GPUs they asked for, on one node, with real processes.

This machine has no GPU: the GPU ids here are the ones ``SystemConfig`` declares (the allowed
stand-in at the GPU boundary). What is real is what each task sees: the selector variable in
its environment, its CPU affinity from ``/proc/self/status``, and its MPI ranks.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest

from core import Launcher, LauncherConfig, SystemConfig, Task, TaskResult, TaskStatus

SHOW_GPU = 'echo "${%s:-none}"; sleep 0.4'


def run(tasks: list[Task], system: SystemConfig, **config: object) -> list[TaskResult]:
    settings = LauncherConfig(nlevels=0, return_stdout=True, **config)  # type: ignore[arg-type]
    with Launcher(system, settings, pin_resources=False) as launcher:
        return launcher.submit_tasks(tasks).results(timeout=60)


def overlapping(results: list[TaskResult]) -> Iterator[tuple[TaskResult, TaskResult]]:
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            assert a.start_time and a.end_time and b.start_time and b.end_time
            if a.start_time < b.end_time and b.start_time < a.end_time:
                yield a, b


def gpu_tasks(count: int, selector: str = "ZE_AFFINITY_MASK") -> list[Task]:
    return [
        Task(task_id=f"g{i}", executable=["sh", "-c", SHOW_GPU % selector], ngpus_per_process=1)
        for i in range(count)
    ]


def test_no_two_tasks_running_at_once_see_the_same_gpu() -> None:
    results = run(gpu_tasks(8), SystemConfig(ncpus=4, ngpus=4))
    assert {r.status for r in results} == {TaskStatus.SUCCESS}
    seen = [r.stdout.strip() for r in results if r.stdout]
    assert sorted(set(seen)) == ["0", "1", "2", "3"]
    assert all(r.gpus == [r.stdout.strip()] for r in results if r.stdout)
    pairs = list(overlapping(results))
    assert pairs, "no two tasks ran at once: the test shows nothing"
    assert all(a.gpus != b.gpus for a, b in pairs)


def test_a_repeated_gpu_id_is_shared_by_two_tasks_at_once() -> None:
    results = run(gpu_tasks(4), SystemConfig(ncpus=4, gpus=["0", "0", "1", "1"]))
    assert sorted(r.stdout.strip() for r in results if r.stdout) == ["0", "0", "1", "1"]
    shared = [(a, b) for a, b in overlapping(results) if a.gpus == b.gpus]
    assert shared, "no device was shared by two running tasks"


def test_gpu_selector_names_the_variable_tasks_see() -> None:
    tasks = gpu_tasks(2, "CUDA_VISIBLE_DEVICES") + gpu_tasks(1, "ZE_AFFINITY_MASK")
    tasks[2] = tasks[2].model_copy(update={"task_id": "z"})
    results = run(tasks, SystemConfig(ncpus=2, ngpus=2), gpu_selector="CUDA_VISIBLE_DEVICES")
    assert sorted(r.stdout.strip() for r in results[:2]) == ["0", "1"]
    assert results[2].stdout.strip() == "none"  # the other variable is not set


def gpus_seen() -> str:
    return os.environ.get("ROCR_VISIBLE_DEVICES", "none")


def test_a_python_task_sees_its_gpus_during_the_call_only() -> None:
    system = SystemConfig(ncpus=1, ngpus=2)
    config = LauncherConfig(nlevels=0, gpu_selector="ROCR_VISIBLE_DEVICES")
    with Launcher(system, config, pin_resources=False) as launcher:
        with_gpus = Task(task_id="g", executable=gpus_seen, ngpus_per_process=2)
        without = Task(task_id="n", executable=gpus_seen)
        first, second = launcher.submit_tasks([with_gpus, without]).results(timeout=30)
    assert (first.result, second.result) == ("0,1", "none")


ALLOWED = "grep Cpus_allowed_list /proc/self/status | cut -f2"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_cpu_affinity_is_what_the_task_runs_on() -> None:
    cpu = max(os.sched_getaffinity(0))
    task = Task(task_id="a", executable=["sh", "-c", ALLOWED], cpu_affinity=[cpu])
    settings = LauncherConfig(nlevels=0, return_stdout=True)
    with Launcher(launcher_config=settings) as launcher:
        (result,) = launcher.submit_tasks([task]).results(timeout=30)
    assert result.stdout is not None and result.stdout.strip() == str(cpu)
    assert result.cpus == [cpu]


RANK_CPUS = (
    "import os; r = os.environ.get('OMPI_COMM_WORLD_RANK') or os.environ.get('PMI_RANK');"
    "c = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Cpus_allowed_list')];"
    "print(f'rank={r} cpus={c[0]}', flush=True)"
)


@pytest.mark.mpi
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("mpiexec", ["mpiexec.openmpi", "mpiexec.mpich"])
def test_an_mpi_task_with_ppn_2_runs_two_ranks_on_distinct_cpus(mpiexec: str) -> None:
    if shutil.which(mpiexec) is None:
        pytest.skip(f"{mpiexec} is not installed")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    task = Task(task_id="m", executable=[sys.executable, "-c", RANK_CPUS], ppn=2)
    settings = LauncherConfig(nlevels=0, return_stdout=True, mpiexec=mpiexec)
    with Launcher(launcher_config=settings) as launcher:
        (result,) = launcher.submit_tasks([task]).results(timeout=60)
    assert result.status is TaskStatus.SUCCESS, result.stderr
    lines = sorted((result.stdout or "").split("rank=")[1:])
    ranks = [dict(part.split("=") for part in f"rank={line}".split()) for line in lines]
    assert [r["rank"] for r in ranks] == ["0", "1"]
    assert {r["cpus"] for r in ranks} == {str(c) for c in result.cpus}
    assert len({r["cpus"] for r in ranks}) == 2
