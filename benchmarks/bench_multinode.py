"""Round trips across hosts: one task at a time through a sub-master on another node.

Run as root: ``.venv/bin/python benchmarks/bench_multinode.py`` (builds hosts in network namespaces
with ``tests/cluster.py``). The client runs on h1 with ``Nodes=["h2"]`` and ``nlevels=1``, so every
task goes client -> top master (h1) -> sub-master (h2, started by mpiexec) -> worker (h2) and back,
over TCP with CURVE across the bridge; for comparison the same on one node with ``nlevels=0``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster import Cluster, unavailable_reason  # noqa: E402

CLIENT = """
import json, statistics, sys, time
from core import Launcher, LauncherConfig
def noop():
    return None
nodes, levels, n = json.loads(sys.argv[1])
config = LauncherConfig(nlevels=levels, child_executor_name="mpi")
with Launcher(launcher_config=config, nodes=nodes) as launcher:
    for _ in range(50):
        launcher.submit(noop).result()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        launcher.submit(noop).result()
        times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({"median_ms": 1000 * statistics.median(times),
                  "p95_ms": 1000 * times[int(0.95 * len(times))], "n": n}))
"""


def main() -> None:
    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench_multinode: {reason}")
    with Cluster(2) as cluster:
        env = {**os.environ, **cluster.mpi_env("openmpi")}
        runs = (
            ("1 node, nlevels=0 (h1 only)", ["h1"], 0),
            ("across hosts, nlevels=1 (h1 -> h2)", ["h2"], 1),
        )
        for label, nodes, levels in runs:
            done = cluster.run(
                "h1", [sys.executable, "-c", CLIENT, json.dumps([nodes, levels, 1000])],
                env=env, cwd=str(ROOT), timeout=300,
            )  # fmt: skip
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            figures = json.loads(done.stdout)
            print(f"one-task round trip, {label}: median {figures['median_ms']:.3f} ms, "
                  f"p95 {figures['p95_ms']:.3f} ms (n={figures['n']})")  # fmt: skip


if __name__ == "__main__":
    main()
