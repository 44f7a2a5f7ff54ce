"""Placement at scale, simulated: the real TaskTable and Scheduler, no processes, simulated time.

Run: ``.venv/bin/python benchmarks/bench_placement.py [--quick]``.

1. **Scale** (issue 10): 2,048 nodes x 104 CPUs; 10,000 then 1,000,000 one-CPU tasks of random
   run times. Every task is submitted, placed (``dispatch``) and reported done (``done``) through
   the table, in simulated time (completions within 1 ms of each other arrive together, as the
   master drains every waiting message before it places again). The CPU seconds this process
   spends inside the table give tasks/s, and the per-task cost at 1,000,000 is compared with
   that at 10,000 (no O(n^2) anywhere).
2. **Mix** (issue 11): 64 nodes x 104 CPUs x 12 GPUs; 100,000 tasks: serial, ``ppn=4``, two-node
   MPI (``nnodes=2, ppn=8``), one GPU; random run times. The simulated makespan is compared with
   the lower bound max(CPU-seconds / CPUs, GPU-seconds / GPUs, longest task).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import random
import time

from core.protocol import Done, NodeInfo, SlotInfo
from core.scheduler import NARROW, Need
from core.table import CancelOn, Deliver, NewTask, Send, TaskTable

_WINDOW_S = 0.001
"""Completions within this much simulated time reach the table together, as results that
arrive while the master is busy are drained in one turn of its loop."""


def build(nodes: int, cpus: int, gpus: int, prefetch: int = 64) -> TaskTable:
    table = TaskTable(prefetch)
    for n in range(nodes):
        name = f"n{n:05d}"
        slots = [SlotInfo(f"{name}:{c}", name, c) for c in range(cpus)]
        table.add_child(name.encode(), slots, [NodeInfo(name, tuple(str(g) for g in range(gpus)))])
    table.ready()
    return table


def simulate(
    table: TaskTable, tasks: list[tuple[Need, float]], batch: int
) -> tuple[float, float, float]:
    """Run ``tasks`` (need, seconds) through ``table``.

    Returns the makespan, the CPU seconds in the table, and those in ``dispatch`` (placing).
    """
    now = 0.0
    events: list[tuple[float, int, int]] = []  # (end, key, attempt)
    slot_free: dict[str, float] = {}
    duration = {}
    spent = placing = 0.0
    ended = 0
    submitted = 0
    gc.disable()
    try:
        while ended < len(tasks):
            if submitted < len(tasks) and table.scheduler.num_pending < batch // 2:
                chunk = tasks[submitted : submitted + batch]  # made by the client, not the master
                new = [NewTask(submitted + i, b"", None, need) for i, (need, _) in enumerate(chunk)]
                for i, (_, seconds) in enumerate(chunk):
                    duration[submitted + i] = seconds
                begin = time.process_time()
                actions = table.submit(new, 1, now)
                spent += time.process_time() - begin
                submitted += len(chunk)
                assert not actions, "a task was refused"
            begin = time.process_time()
            actions = table.dispatch()
            placed = time.process_time() - begin
            spent += placed
            placing += placed
            for action in actions:
                if isinstance(action, Send):
                    for entry in action.entries:
                        start = max(now, slot_free.get(entry.slot, 0.0))
                        end = start + duration[entry.key]
                        slot_free[entry.slot] = end
                        heapq.heappush(events, (end, entry.key, entry.attempt))
                elif isinstance(action, (CancelOn, Deliver)):
                    raise AssertionError(f"unexpected {action}")
            if not events:
                continue
            now = events[0][0] + _WINDOW_S
            done = []
            while events and events[0][0] <= now:
                end, key, attempt = heapq.heappop(events)
                done.append(Done(key, attempt, "success", duration[key], b""))
            begin = time.process_time()
            for action in table.done(done):
                assert isinstance(action, Deliver)
                ended += len(action.finals)
            spent += time.process_time() - begin
    finally:
        gc.enable()
    return now, spent, placing


def scale(count: int, nodes: int = 2048, cpus: int = 104) -> float:
    table = build(nodes, cpus, 0)
    rng = random.Random(1)
    tasks = [(NARROW, rng.uniform(0.5, 1.5)) for _ in range(count)]
    _, spent, placing = simulate(table, tasks, batch=250_000)
    rate = count / spent
    print(f"scale: {nodes:,} nodes x {cpus} CPUs, {count:>9,} tasks: {count / placing:9,.0f} "
          f"placements/s (dispatch); {rate:9,.0f} tasks/s through the table (submit + place + "
          f"done), {1e6 / rate:5.2f} us/task")  # fmt: skip
    return 1e6 / rate


def mix(count: int, nodes: int = 64, cpus: int = 104, gpus: int = 12) -> None:
    table = build(nodes, cpus, gpus)
    rng = random.Random(2)
    kinds = [
        (Need(), (1, 0)),
        (Need(ppn=4), (4, 0)),
        (Need(nnodes=2, ppn=8), (16, 0)),
        (Need(gpus_per_proc=1), (1, 1)),
    ]
    tasks = []
    cpu_s = gpu_s = longest = 0.0
    for _ in range(count):
        need, (ncpu, ngpu) = rng.choice(kinds)
        seconds = rng.expovariate(1 / 30.0) + 1
        tasks.append((need, seconds))
        cpu_s += ncpu * seconds
        gpu_s += ngpu * seconds
        longest = max(longest, seconds)
    bound = max(cpu_s / (nodes * cpus), gpu_s / (nodes * gpus), longest)
    makespan, spent, _ = simulate(table, tasks, batch=count)
    print(f"mix: {nodes} nodes x {cpus} CPUs x {gpus} GPUs, {count:,} tasks (serial, ppn=4, "
          f"2-node MPI, 1-GPU; run times 1 + exp(30 s)): makespan {makespan:,.0f} s, lower bound "
          f"{bound:,.0f} s, ratio {makespan / bound:.3f} (bar <= 1.1); {count / spent:,.0f} "
          "tasks/s in the table")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        small = scale(10_000, nodes=64)
        large = scale(100_000, nodes=64)
        mix(10_000, nodes=8)
    else:
        small = scale(10_000)
        large = scale(1_000_000)
        mix(100_000)
    print(f"per-task cost, large / small: {large / small:.2f} (bar <= 1.5)")


if __name__ == "__main__":
    main()
