"""Launcher core vs concurrent.futures.ProcessPoolExecutor on this node (issue #2 workloads).

W0 one-task round trip (200 sequential calls), W1 5,000 no-op Python tasks, W2 1,000 /bin/true,
W3 200 x `sleep 0.05` (wall time, slot efficiency), W4 50,000 no-op Python tasks; plus the
launcher's own memory (RSS of the client and its worker processes) during W4.
Warm-up runs are excluded; start-up is shown on its own.

Run: .venv/bin/python benchmarks/bench_core.py [--slots 2] [--nlevels 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from core import Launcher, LauncherConfig, SystemConfig, Task
from core.spawn import processes_of_run


def noop(_: Any = None) -> None:
    return None


def run_true(_: Any = None) -> int:
    return subprocess.run(["/bin/true"], check=False).returncode


def run_sleep(_: Any = None) -> int:
    return subprocess.run(["sleep", "0.05"], check=False).returncode


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latency(submit_one: Callable[[], Any], n: int = 200) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        submit_one()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(0.95 * len(samples)) - 1] * 1e3


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total / 2**20


class PeakRss:
    """Samples the RSS of the launcher's processes every 20 ms while a workload runs."""

    def __init__(self, run_id: str) -> None:
        self.run_id, self.peak, self._stop = run_id, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            pids = [os.getpid(), *processes_of_run(self.run_id)]
            self.peak = max(self.peak, rss_mb(pids))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_launcher(slots: int, nlevels: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    system = SystemConfig(ncpus=slots, cpus=list(range(slots)))
    launcher = Launcher(system, LauncherConfig(nlevels=nlevels))
    out["startup_s"] = timed(launcher.start)
    try:
        list(launcher.map(noop, range(2000)))  # warm-up
        out["W0"] = latency(lambda: launcher.submit(noop).result())
        out["W1"] = 5000 / timed(lambda: list(launcher.map(noop, range(5000))))
        tasks = [Task(task_id=f"t{i}", executable=noop) for i in range(5000)]
        out["W1_tasks"] = 5000 / timed(lambda: launcher.submit_tasks(tasks).results())
        launcher.submit_tasks([Task(task_id="w", executable=["/bin/true"])] * 50).results()
        trues = [Task(task_id=f"t{i}", executable=["/bin/true"]) for i in range(1000)]
        out["W2"] = 1000 / timed(lambda: launcher.submit_tasks(trues).results())
        sleeps = [Task(task_id=f"s{i}", executable=["sleep", "0.05"]) for i in range(200)]
        out["W3"] = timed(lambda: launcher.submit_tasks(sleeps).results())
        with PeakRss(launcher.run_id) as peak:
            out["W4"] = 50000 / timed(lambda: list(launcher.map(noop, range(50000))))
        out["rss_mb"] = peak.peak
    finally:
        launcher.shutdown()
    return out


def bench_pool(slots: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    start = time.perf_counter()
    pool = ProcessPoolExecutor(slots)
    list(pool.map(noop, range(slots)))
    out["startup_s"] = time.perf_counter() - start
    try:
        list(pool.map(noop, range(2000)))
        out["W0"] = latency(lambda: pool.submit(noop).result())
        out["W1"] = 5000 / timed(lambda: list(pool.map(noop, range(5000))))
        out["W1_tasks"] = None
        list(pool.map(run_true, range(50)))
        out["W2"] = 1000 / timed(lambda: list(pool.map(run_true, range(1000))))
        out["W3"] = timed(lambda: list(pool.map(run_sleep, range(200))))
        out["W4"] = 50000 / timed(lambda: list(pool.map(noop, range(50000))))
        out["rss_mb"] = None
    finally:
        pool.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--nlevels", type=int, default=0)
    args = parser.parse_args()
    ours, pool = bench_launcher(args.slots, args.nlevels), bench_pool(args.slots)
    ideal = 200 * 0.05 / args.slots

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    print(f"{os.cpu_count()} CPUs, {args.slots} slots, launcher nlevels={args.nlevels}")
    print(f"{'workload':44} {'launcher':>16} {'ProcessPool':>16}")
    print(f"{'start-up (s)':44} {ours['startup_s']:>16.3f} {pool['startup_s']:>16.3f}")
    for name, label in (("W0", "W0 round trip median / p95 (ms)"),):
        print(
            f"{label:44} {ours[name][0]:>8.3f}/{ours[name][1]:<7.3f} "
            f"{pool[name][0]:>8.3f}/{pool[name][1]:<7.3f}"
        )
    print(f"{'W1 5,000 no-op tasks/s (map)':44} {ours['W1']:>16,.0f} {pool['W1']:>16,.0f}")
    print(
        f"{'W1 5,000 no-op tasks/s (Task models)':44} {ours['W1_tasks']:>16,.0f} "
        f"{fmt(pool['W1_tasks'], '>16,.0f'):>16}"
    )
    print(f"{'W2 1,000 /bin/true tasks/s':44} {ours['W2']:>16,.0f} {pool['W2']:>16,.0f}")
    print(f"{'W3 200 x sleep 0.05 wall (s)':44} {ours['W3']:>16.3f} {pool['W3']:>16.3f}")
    print(
        f"{'W3 slot efficiency (ideal ' + format(ideal, '.1f') + ' s)':44} "
        f"{ideal / ours['W3']:>16.1%} {ideal / pool['W3']:>16.1%}"
    )
    print(f"{'W4 50,000 no-op tasks/s':44} {ours['W4']:>16,.0f} {pool['W4']:>16,.0f}")
    print(
        f"{'W4 / W1 per-task cost ratio':44} {ours['W1'] / ours['W4']:>16.2f} "
        f"{pool['W1'] / pool['W4']:>16.2f}"
    )
    print(
        f"{'peak RSS of launcher processes in W4 (MB)':44} {ours['rss_mb']:>16.1f} "
        f"{fmt(pool['rss_mb'], '>16.1f'):>16}"
    )


if __name__ == "__main__":
    main()
