"""Soak: minutes of mixed MCP calls from concurrent clients against a server, with faults injected.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 20] [--kill-every 60]

A real server subprocess (streamable HTTP, a bearer token, a journal in a temporary state
directory) and ``--clients`` MCP clients (half in each protocol era) that, until the time is up,
each repeat at random:

- ordinary calls of 1, 10, 100 or 1,000 tasks (a Python tool, or a command tool up to 100);
- calls they cancel themselves after a random delay (and then reconnect);
- ``<tool>_submit``, then ``ensemble_status`` until finished, then ``ensemble_results`` pages;
- ``<tool>_submit`` of slower tasks, then ``ensemble_cancel``, then status and pages.

Meanwhile a worker process of the server (found by the launcher's run mark, ``core.spawn``) is
SIGKILLed every ``--kill-every`` seconds, and once, at ``--restart-at`` of the time, the server
itself is SIGKILLed and started again on the same port and state directory.

Every task returns ``"<call>/<index>"`` (a command echoes it), so each result proves which task it
belongs to. What is counted (the printed lines):

- calls: MCP tool calls made; ``cut by restart``: calls on a session opened before the restarted
  server was up that failed (the kill cut them); ``errors``: any other failed call (must be 0).
- tasks: tasks of the calls that returned and of the ensembles whose id came back.
- expected: those tasks, less the tasks of calls the client cancelled itself.
- results: expected tasks with an entry that ended (success, failed, timeout, cancelled).
- lost by restart: expected tasks of ensembles submitted before the server was killed that read
  ``lost`` afterwards (the documented outcome of a task cut by a stop).
- lost: expected tasks with no ended entry and not ``lost by restart``: missing from a result or
  page, still ``pending`` when the soak ends, an ensemble the server no longer knows, or ``lost``
  in an ensemble submitted after the restart (must be 0).
- duplicated: a task index seen twice in one call's result or one ensemble's pages (must be 0);
  wrong: a success whose value is another task's (must be 0).
- orphans: processes still carrying this soak's mark (every worker and task of both servers
  inherits it) or the run mark of either server's launcher, 10 s after the end (must be 0).
- server RSS at the start and just before the kill (first server), after the restart and at the
  end (second server).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from core.spawn import RUN_MARKER, processes_marked
from ensemble_mcp.serve import free_port, wait_until_serving

SOAK_MARK = "ENSEMBLE_MCP_SOAK"
SIZES = (1, 10, 100, 1000)


def work(call: str, i: int, ms: float = 0.0) -> str:
    """Sleep ``ms`` milliseconds, then return ``"<call>/<i>"``."""
    if ms:
        time.sleep(ms / 1000)
    return f"{call}/{i}"


def serve(port: int, state_dir: str) -> None:
    """The server under test (``--serve``): a Python tool and a command tool, both submittable."""
    from ensemble_mcp import Server

    server = Server("soak", state_dir=state_dir)
    server.ensemble_tool(work)
    server.ensemble_tool(
        'sh -c \'sleep "$1" && echo "$2"\' tag {s} {tag}',
        name="tag_cmd",
        description="Sleep s seconds, then print tag.",
        params={"s": float, "tag": str},
    )
    server.run("streamable-http", port=port)


# -- bookkeeping ------------------------------------------------------------------------------


@dataclass
class Ensemble:
    """A submitted ensemble whose results a client still has to read."""

    ensemble_id: str
    call: str
    size: int
    submitted: float


@dataclass
class Soak:
    """Shared state of one soak run (one event loop: no locks)."""

    url: str
    token: str
    deadline: float
    think_s: float
    killed_at: float | None = None
    ready_at: float | None = None
    calls: Counter[str] = field(default_factory=Counter)
    cut: int = 0
    errors: list[str] = field(default_factory=list)
    client_cancelled_calls: int = 0
    tasks: int = 0
    expected: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    worker_failures: int = 0
    other_failures: list[str] = field(default_factory=list)
    lost_by_restart: int = 0
    lost: int = 0
    lost_why: Counter[str] = field(default_factory=Counter)
    duplicated: int = 0
    wrong: int = 0
    workers_killed: int = 0
    kills_missed: int = 0
    unread: dict[int, list[Ensemble]] = field(default_factory=dict)

    def failed(self, session_opened: float, what: str, exc: BaseException) -> None:
        """A call failed: cut by the restart when its session predates the restarted server."""
        if self.killed_at is not None and (self.ready_at is None or session_opened < self.ready_at):
            self.cut += 1
        else:
            self.errors.append(f"{what}: {_leaf(exc)!r}")

    def check(self, entries: list[dict[str, Any]], call: str, size: int, cut_ok: bool) -> None:
        """Count one call's (or one ensemble's) entries against its ``size`` tasks."""
        self.expected += size
        seen: set[int] = set()
        ended = 0
        lost_after_restart = 0
        for entry in entries:
            index = entry["index"]
            if index in seen or not 0 <= index < size:
                self.duplicated += 1
                continue
            seen.add(index)
            status = entry["status"]
            if status == "pending":
                continue
            if status == "lost":
                if cut_ok:
                    self.lost_by_restart += 1
                    ended += 1
                else:
                    lost_after_restart += 1
                continue
            ended += 1
            self.statuses[status] += 1
            if status == "success" and str(entry.get("result", "")).strip() != f"{call}/{index}":
                self.wrong += 1
            if status == "failed":
                error = str(entry.get("error", ""))
                if "WorkerLost" in error or "worker" in error.lower():
                    self.worker_failures += 1
                else:
                    self.other_failures.append(error[:200])
        missing = size - ended
        self.lost += missing
        self.lost_why["lost, in an ensemble submitted after the restart"] += lost_after_restart
        self.lost_why["no ended entry"] += missing - lost_after_restart


def _leaf(exc: BaseException) -> BaseException:
    while inner := getattr(exc, "exceptions", ()):
        exc = inner[0]
    return exc


# -- the clients ------------------------------------------------------------------------------


@asynccontextmanager
async def connect(soak: Soak, mode: str) -> AsyncIterator[Client]:
    """An MCP client session with the bearer token."""
    headers = {"Authorization": f"Bearer {soak.token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(soak.url, http_client=http), mode=mode) as client,
    ):
        yield client


async def tool(soak: Soak, client: Client, name: str, arguments: dict[str, Any]) -> Any:
    """One call, counted; an error result raises."""
    soak.calls[name] += 1
    result = await client.call_tool(name, arguments)
    if result.is_error:
        raise RuntimeError(f"{name} answered an error: {result.content[0].text[:300]}")
    return result.structured_content


def arguments(rng: random.Random, call: str, size: int, command: bool, ms: float) -> dict[str, Any]:
    """The arguments of a call of ``size`` tasks whose results are ``<call>/<index>``."""
    if command:
        return {"tag": [f"{call}/{i}" for i in range(size)], "s": ms / 1000}
    return {"call": call, "i": list(range(size)), "ms": ms}


async def ordinary(soak: Soak, client: Client, rng: random.Random, call: str) -> bool:
    """A call of 1..1,000 tasks; every result checked."""
    size = rng.choices(SIZES, weights=(4, 3, 2, 1))[0]
    command = size <= 100 and rng.random() < 0.3
    name = "tag_cmd" if command else "work"
    out = await tool(soak, client, name, arguments(rng, call, size, command, 0))
    soak.tasks += size
    soak.check(out["tasks"], call, size, cut_ok=False)
    return False


async def cancelled(soak: Soak, client: Client, rng: random.Random, call: str) -> bool:
    """A call of slower tasks that the client gives up on after a random delay."""
    size = rng.randint(5, 40)
    command = rng.random() < 0.5
    args = arguments(rng, call, size, command, rng.uniform(20, 200))
    out = None
    with anyio.move_on_after(rng.uniform(0.05, 0.6)):
        out = await tool(soak, client, "tag_cmd" if command else "work", args)
    if out is None:
        soak.client_cancelled_calls += 1
        return True  # a fresh session after a cancel, as a client that gave up would
    soak.tasks += size
    soak.check(out["tasks"], call, size, cut_ok=False)
    return False


async def submitted(
    soak: Soak, client: Client, rng: random.Random, call: str, cancel: bool, owner: int
) -> bool:
    """Submit, (cancel), poll status until finished, read every page."""
    size = rng.choice((20, 100, 300)) if cancel else rng.choice((10, 100, 1000))
    command = size <= 100 and rng.random() < 0.3
    ms = rng.uniform(20, 300) if cancel else rng.choice((0, 0, 5))
    name = "tag_cmd_submit" if command else "work_submit"
    out = await tool(soak, client, name, arguments(rng, call, size, command, ms))
    ensemble = Ensemble(out["ensemble_id"], call, size, time.monotonic())
    soak.tasks += size
    soak.unread.setdefault(owner, []).append(ensemble)
    if cancel:
        await anyio.sleep(rng.uniform(0.05, 0.5))
        await tool(soak, client, "ensemble_cancel", {"ensemble_id": ensemble.ensemble_id})
    await read_ensemble(soak, client, rng, ensemble)
    soak.unread[owner].remove(ensemble)
    return False


async def read_ensemble(
    soak: Soak, client: Client, rng: random.Random, ensemble: Ensemble, wait_s: float = 300
) -> None:
    """Poll ``ensemble_status`` until finished (bounded), then page through the results."""
    give_up = time.monotonic() + wait_s
    status: dict[str, Any] = {}
    while not status.get("finished") and time.monotonic() < give_up:
        await anyio.sleep(rng.uniform(0.1, 0.3))
        status = await tool(soak, client, "ensemble_status", {"ensemble_id": ensemble.ensemble_id})
    entries: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = await tool(
            soak,
            client,
            "ensemble_results",
            {"ensemble_id": ensemble.ensemble_id, "offset": offset, "limit": rng.randint(50, 500)},
        )
        entries += page["tasks"]
        offset = page["next_offset"]
    cut_ok = soak.killed_at is not None and ensemble.submitted < soak.killed_at
    soak.check(entries, ensemble.call, ensemble.size, cut_ok)


Op = Callable[[Soak, Client, random.Random, str], Awaitable[bool]]


async def client_loop(soak: Soak, k: int, seed: int) -> None:
    """One client: sessions, each running random operations until one fails or time is up."""
    rng = random.Random(seed * 1000 + k)
    mode = "auto" if k % 2 else "legacy"
    ops: list[tuple[Op, int]] = [
        (ordinary, 40),
        (cancelled, 15),
        (lambda s, c, r, call: submitted(s, c, r, call, False, k), 30),
        (lambda s, c, r, call: submitted(s, c, r, call, True, k), 15),
    ]
    n = 0
    while time.monotonic() < soak.deadline:
        opened = time.monotonic()
        try:
            async with connect(soak, mode) as client:
                for ensemble in list(soak.unread.get(k, [])):  # cut earlier: read it now
                    await read_ensemble(soak, client, rng, ensemble)
                    soak.unread[k].remove(ensemble)
                while time.monotonic() < soak.deadline:
                    n += 1
                    op = rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
                    if await op(soak, client, rng, f"c{k}-{n}"):
                        break
                    await anyio.sleep(rng.uniform(0, soak.think_s))
        except Exception as exc:  # noqa: BLE001 - counted: cut by the restart, or an error
            soak.failed(opened, f"client {k}", exc)
            await anyio.sleep(0.25)


# -- the server and the faults ----------------------------------------------------------------


@dataclass
class ServerProcess:
    """The server subprocess, restarted in place."""

    port: int
    state_dir: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    run_ids: set[str] = field(default_factory=set)

    def start(self) -> None:
        """Start it and wait until it listens (its launcher is up by then)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.port),
                 "--state-dir", self.state_dir],
                env=self.env, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            wait_until_serving(self.process, "127.0.0.1", self.port, timeout_s=120)
        except (RuntimeError, TimeoutError) as exc:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}; its log ends with:\n{tail}") from None
        self.run_ids |= {run for run, _ in self.workers()}

    def workers(self) -> list[tuple[str, int]]:
        """``(run id, pid)`` of its launcher's workers, found by the run mark."""
        assert self.process is not None
        runs = set()
        for pid in _children(self.process.pid):
            run = _environ(pid).get(RUN_MARKER)
            if run:
                runs.add(run)
        found = []
        for run in runs:
            pids = processes_marked(f"{RUN_MARKER}={run}")
            found += [
                (run, pid) for pid in pids if b"core\0worker" in _read(f"/proc/{pid}/cmdline")
            ]
        return found

    def rss_mib(self) -> float:
        """Its resident set size now."""
        assert self.process is not None
        for line in _read(f"/proc/{self.process.pid}/status").decode().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Ctrl-C, as an operator would; SIGKILL if it hangs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _environ(pid: int) -> dict[str, str]:
    pairs = (item.partition(b"=") for item in _read(f"/proc/{pid}/environ").split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read(f"/proc/{entry.name}/stat").decode(errors="replace")
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


async def kill_workers(soak: Soak, server: ServerProcess, every_s: float) -> None:
    """SIGKILL one worker of the running server every ``every_s`` seconds.

    Cancels replace workers too (a running Python task is cancelled by killing its worker), so
    at a given moment every worker may be starting: then try again for up to 10 s. Not while
    the server restarts: a worker lost while the launcher starts stops the server's start.
    """
    rng = random.Random(7)
    while time.monotonic() + every_s < soak.deadline:
        await anyio.sleep(every_s)
        for _ in range(50):
            restarting = soak.killed_at is not None and soak.ready_at is None
            running = server.process is not None and server.process.poll() is None
            workers = server.workers() if running and not restarting else []
            if workers:
                run, pid = rng.choice(workers)
                server.run_ids.add(run)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    soak.workers_killed += 1
                    break
            await anyio.sleep(0.2)
        else:
            soak.kills_missed += 1


async def restart_server(
    soak: Soak, server: ServerProcess, at_s: float, rss: dict[str, float]
) -> None:
    """SIGKILL the server ``at_s`` seconds in, then start it again (same port and state)."""
    await anyio.sleep(at_s)
    rss["before the kill"] = server.rss_mib()
    server.run_ids |= {run for run, _ in server.workers()}
    soak.killed_at = time.monotonic()
    server.kill()
    await anyio.to_thread.run_sync(server.start)
    soak.ready_at = time.monotonic()
    rss["after the restart"] = server.rss_mib()


async def sample_rss(soak: Soak, server: ServerProcess, samples: list[float]) -> None:
    """The server's RSS every 30 s (the restarted server's after the restart)."""
    while time.monotonic() + 30 < soak.deadline:
        await anyio.sleep(30)
        restarting = soak.killed_at is not None and soak.ready_at is None
        if server.process is not None and server.process.poll() is None and not restarting:
            samples.append(server.rss_mib())


def orphans(mark: str, run_ids: set[str], wait_s: float = 10.0) -> list[int]:
    """Processes carrying the soak's mark or a run mark of its servers, after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        left = set(processes_marked(mark))
        for run in run_ids:
            left |= set(processes_marked(f"{RUN_MARKER}={run}"))
        if not left or time.monotonic() > deadline:
            return sorted(left)
        time.sleep(0.1)


async def soak_run(args: argparse.Namespace) -> int:
    """Run the soak and print the counts; 1 if lost, duplicated, wrong, orphans or errors."""
    state = tempfile.TemporaryDirectory(prefix="soak-state-")
    mark = uuid.uuid4().hex
    token = secrets.token_urlsafe(32)
    env = {**os.environ, SOAK_MARK: mark, "ENSEMBLE_MCP_TOKEN": token}
    log = Path(state.name) / "server.log"
    server = ServerProcess(free_port(), str(Path(state.name) / "journal"), env, log)
    total_s = args.minutes * 60
    await anyio.to_thread.run_sync(server.start)
    soak = Soak(
        f"http://127.0.0.1:{server.port}/mcp", token, time.monotonic() + total_s, args.think
    )
    rss = {"start": server.rss_mib()}
    samples: list[float] = []
    started = time.monotonic()
    async with anyio.create_task_group() as group:
        group.start_soon(sample_rss, soak, server, samples)
        group.start_soon(kill_workers, soak, server, args.kill_every)
        group.start_soon(restart_server, soak, server, total_s * args.restart_at, rss)
        for k in range(args.clients):
            group.start_soon(client_loop, soak, k, args.seed)
    # Ensembles a failure left unread: read them now, bounded.
    async with connect(soak, "legacy") as client:
        rng = random.Random(1)
        for pending in soak.unread.values():
            for ensemble in pending:
                try:
                    await read_ensemble(soak, client, rng, ensemble, wait_s=120)
                except Exception as exc:  # noqa: BLE001 - an ensemble that cannot be read is lost
                    soak.errors.append(f"reading {ensemble.ensemble_id}: {_leaf(exc)!r}")
                    soak.expected += ensemble.size
                    soak.lost += ensemble.size
                    soak.lost_why["unreadable after the soak"] += ensemble.size
    wall = time.monotonic() - started
    rss["end"] = server.rss_mib()
    server.run_ids |= {run for run, _ in server.workers()}
    server.stop()
    left = orphans(f"{SOAK_MARK}={mark}", server.run_ids)
    report(soak, args, wall, rss, samples, left, log)
    bad = soak.lost or soak.duplicated or soak.wrong or left or soak.errors
    if not bad:
        state.cleanup()
    return 1 if bad else 0


def report(
    soak: Soak,
    args: argparse.Namespace,
    wall: float,
    rss: dict[str, float],
    samples: list[float],
    left: list[int],
    log: Path,
) -> None:
    """Print the counts."""
    calls = sum(soak.calls.values())
    kinds = ", ".join(f"{name} {n:,}" for name, n in soak.calls.most_common())
    received = sum(soak.statuses.values())
    restart = (soak.ready_at or 0) - (soak.killed_at or 0)
    missed = (
        f" ({soak.kills_missed} times no worker was found in 10 s)" if soak.kills_missed else ""
    )
    print(
        f"soak: {wall / 60:.1f} min, {args.clients} clients, {soak.workers_killed} workers "
        f"SIGKILLed{missed}, server SIGKILLed and restarted once (up again in {restart:.1f} s)"
    )
    print(f"calls           {calls:,} ({kinds})")
    print(f"  cut by restart  {soak.cut:,} (calls on a session opened before the restart)")
    print(f"  client-cancelled {soak.client_cancelled_calls:,}")
    print(f"  errors          {len(soak.errors)}")
    for error in soak.errors[:5]:
        print(f"    {error}")
    print(f"tasks           {soak.tasks:,} (expected results {soak.expected:,})")
    statuses = ", ".join(f"{s} {n:,}" for s, n in soak.statuses.most_common())
    print(f"results         {received:,} ({statuses})")
    print(f"  failed: worker killed {soak.worker_failures:,}, other {len(soak.other_failures)}")
    for failure in soak.other_failures[:3]:
        print(f"    {failure}")
    print(f"lost by restart {soak.lost_by_restart:,} (status lost, as docs/mcp-server.md says)")
    why = ", ".join(f"{k} {n}" for k, n in soak.lost_why.items() if n)
    print(f"lost            {soak.lost:,}" + (f" ({why})" if why else ""))
    print(f"duplicated      {soak.duplicated:,}")
    print(f"wrong           {soak.wrong:,}")
    print(f"orphans         {len(left)}" + (f" (pids {left[:10]})" if left else ""))
    shown = ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items())
    print(f"server RSS      {shown}")
    print(f"  every 30 s    {' '.join(f'{v:.0f}' for v in samples)} MiB")
    if soak.errors or soak.lost or left:
        print(f"server log: {log} (kept: see above)")


def main() -> int:
    """Serve (``--serve PORT --state-dir DIR``) or run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--clients", type=int, default=20, help="MCP clients (default 20)")
    parser.add_argument(
        "--kill-every", type=float, default=60.0, help="seconds between worker kills (60)"
    )
    parser.add_argument(
        "--restart-at", type=float, default=0.5, help="when to kill the server, as a fraction"
    )
    parser.add_argument(
        "--think", type=float, default=0.3, help="most seconds a client waits between calls"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.state_dir)
        return 0
    # The SDK client logs a traceback for every stream a cancel or the server's kill breaks;
    # the soak counts those calls itself.
    logging.getLogger("mcp").setLevel(logging.CRITICAL)
    return anyio.run(soak_run, args)


if __name__ == "__main__":
    sys.exit(main())
