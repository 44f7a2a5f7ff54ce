"""Ensemble tool calls over real streamable HTTP against a warm server subprocess.

    .venv/bin/python benchmarks/bench_mcp.py [--repeat 10]

Prints (issue #3 bars): a no-op function over 1,000-element lists (all 1,000 results back;
bar <= 0.5 s), a 1-element call (bar <= 20 ms), and 20 concurrent clients each making a 100-task
call (all 2,000 results correct, none mixed up), and a 1,000-task ``noop_submit`` (time to the id,
and to every result polled and paged back). Issue #9 bar: a call whose tasks no node can
hold (``ppn`` larger than the node) is refused in under 2 s. The script serves itself with
``--serve PORT``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client

from ensemble_mcp import Server
from ensemble_mcp.serve import free_port, wait_until_serving
from ensemble_mcp.tools import describe, spec_from_function

server = Server("bench")


@server.ensemble_tool
def noop(x: float) -> float:
    """Return x."""
    return x


@server.ensemble_tool
def tag(x: int, client: int) -> list[int]:
    """Return (client, x): lets each caller check it got its own results."""
    return [client, x]


# No node has this many slots: every call must be refused at once, not wait forever.
server.ensemble_tool("true {x}", name="too_wide", ppn=100_000, submit_tool=False)


@server.tool()
def ping(x: int) -> int:
    """A plain SDK tool, no ensemble: the floor one MCP call costs over HTTP."""
    return x


def _flame_speed(pressure: float, temperature: float) -> float:
    """Laminar flame speed for one (pressure, temperature) point, in m/s.

    Args:
        pressure: pressure in atm.
        temperature: temperature in K.
    """
    return 0.38 * (temperature / 298.0) ** 1.77 * pressure**-0.5


def _stats(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return (
        f"median {statistics.median(ms):7.1f} ms  min {ms[0]:7.1f}  max {ms[-1]:7.1f}  "
        f"(n={len(ms)})"
    )


async def _timed_calls(url: str, mode: str, size: int, repeat: int) -> list[float]:
    times = []
    inner = []
    async with Client(url, mode=mode) as client:
        for _ in range(2):  # warm-up: workers have the function, connections are open
            await client.call_tool("noop", {"x": list(range(size))})
        for _ in range(repeat):
            start = time.perf_counter()
            result = await client.call_tool("noop", {"x": list(range(size))})
            times.append(time.perf_counter() - start)
            inner.append(result.structured_content["summary"]["wall_time_s"])
            tasks = result.structured_content["tasks"]
            assert [t["result"] for t in tasks] == [float(i) for i in range(size)], "bad results"
    print(
        f"[{mode:6}] {size:5,}-task ensemble inside the server (submit to last result): "
        f"{_stats(inner)}"
    )
    return times


async def _floor(url: str, mode: str, repeat: int) -> list[float]:
    times = []
    async with Client(url, mode=mode) as client:
        await client.call_tool("ping", {"x": 1})
        for _ in range(repeat):
            start = time.perf_counter()
            await client.call_tool("ping", {"x": 1})
            times.append(time.perf_counter() - start)
    return times


async def _refused(url: str, mode: str, repeat: int) -> list[float]:
    times = []
    async with Client(url, mode=mode) as client:
        for _ in range(repeat):
            start = time.perf_counter()
            result = await client.call_tool("too_wide", {"x": [1]})
            times.append(time.perf_counter() - start)
            assert result.is_error and "Nothing was run." in result.content[0].text
    return times


async def _submitted(
    url: str, mode: str, size: int, repeat: int
) -> tuple[list[float], list[float]]:
    """``noop_submit`` of ``size`` tasks: time to the id, and to every result read back."""
    submits, totals = [], []
    async with Client(url, mode=mode) as client:
        for k in range(repeat + 1):  # the first is a warm-up
            start = time.perf_counter()
            started = await client.call_tool("noop_submit", {"x": list(range(size))})
            submitted = time.perf_counter() - start
            ensemble_id = started.structured_content["ensemble_id"]
            while True:
                status = await client.call_tool("ensemble_status", {"ensemble_id": ensemble_id})
                if status.structured_content["finished"]:
                    break
                await anyio.sleep(0.005)
            values: list[float] = []
            offset: int | None = 0
            while offset is not None:
                page = await client.call_tool(
                    "ensemble_results",
                    {"ensemble_id": ensemble_id, "offset": offset, "limit": 1000},
                )
                values += [t["result"] for t in page.structured_content["tasks"]]
                offset = page.structured_content["next_offset"]
            assert values == [float(i) for i in range(size)], "bad results"
            if k:
                submits.append(submitted)
                totals.append(time.perf_counter() - start)
    return submits, totals


async def _concurrent(url: str, clients: int, size: int) -> tuple[float, int, int]:
    wrong = 0
    got = 0

    async def one(k: int) -> None:
        nonlocal wrong, got
        async with Client(url) as client:
            result = await client.call_tool("tag", {"x": list(range(size)), "client": k})
            values = [t["result"] for t in result.structured_content["tasks"]]
            got += len(values)
            wrong += sum(1 for i, v in enumerate(values) if v != [k, i])

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for k in range(clients):
            group.start_soon(one, k)
    return time.perf_counter() - start, got, wrong


async def _bench(url: str, repeat: int) -> None:
    for mode in ("auto", "legacy"):
        big = await _timed_calls(url, mode, 1000, repeat)
        print(f"[{mode:6}] 1,000-task call : {_stats(big)}   bar <= 500 ms")
        small = await _timed_calls(url, mode, 1, repeat * 5)
        print(f"[{mode:6}] 1-task call     : {_stats(small)}   bar <= 20 ms")
        floor = await _floor(url, mode, repeat * 5)
        print(f"[{mode:6}] plain SDK tool  : {_stats(floor)}   (reference: no ensemble)")
        submit, total = await _submitted(url, mode, 1000, repeat)
        print(f"[{mode:6}] 1,000-task submit: {_stats(submit)}   (the call returning the id)")
        print(f"[{mode:6}]   ... all read  : {_stats(total)}   (submit, poll, page back)")
        refused = await _refused(url, mode, repeat)
        print(f"[{mode:6}] ppn > node      : {_stats(refused)}   bar < 2 s (refused)")
    wall, got, wrong = await _concurrent(url, 20, 100)
    print(
        f"20 clients x 100 tasks: {got} results, {wrong} wrong, {wall:.2f} s wall   "
        "bar: 2,000 correct"
    )


def main() -> int:
    """Serve (``--serve PORT``) or benchmark against a fresh server subprocess."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    if args.serve is not None:
        server.run("streamable-http", port=args.serve)
        return 0
    for fn in (noop, _flame_speed):
        text = describe(spec_from_function(fn), max_tasks=server.max_tasks)
        print(
            f"description of {fn.__name__}: {len(text)} chars, "
            f"{len(text.split(chr(10) * 2)[0])} of them fan-out guidance"
        )
    port = free_port()
    state = tempfile.TemporaryDirectory(prefix="bench-mcp-state-")  # its journal of ensembles
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)],
        env={**os.environ, "ENSEMBLE_MCP_STATE_DIR": state.name},
    )
    try:
        wait_until_serving(process, "127.0.0.1", port)
        anyio.run(_bench, f"http://127.0.0.1:{port}/mcp", args.repeat)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        state.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
