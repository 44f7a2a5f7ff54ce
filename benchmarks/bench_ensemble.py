"""Ensemble expansion speed: 50,000 tasks from JSON-like specs (issue #2), vs bare Task models.

Run: .venv/bin/python benchmarks/bench_ensemble.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from core.ensemble import expand_tasks
from core.task import Task

ZIPPED = {
    "ensembles": {
        "sweep": {
            "cmd_template": "./exe -a {a} -b {b}",
            "a": "range(50000)",
            "b": "linspace(0, 1, 50000)",
            "timeout": 10,
            "env": {"X": "y"},
        }
    }
}
GRID = {
    "ensembles": {
        "grid": {
            "cmd_template": "./solver --mesh {m} --dt {dt:.3g}",
            "relation": "many-to-many",
            "m": [f"mesh{i}.msh" for i in range(50)],
            "dt": "logspace(-5, 0, 1000)",
            "run_dir": "runs/{m}",
        }
    }
}


def best_of(fn: Callable[[], Any], runs: int = 5) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("one-to-one, 50,000 tasks", lambda: expand_tasks(ZIPPED)),
        ("many-to-many 50 x 1,000", lambda: expand_tasks(GRID)),
        (
            "reference: 50,000 Task(...) calls",
            lambda: [Task(task_id=f"t{i}", executable="./exe") for i in range(50000)],
        ),
    ]
    print(f"{'case':40} {'median (s)':>11} {'min (s)':>9}")
    for name, fn in cases:
        median, fastest = best_of(fn)
        print(f"{name:40} {median:>11.3f} {fastest:>9.3f}")


if __name__ == "__main__":
    main()
