"""Submitted ensembles are journaled: they answer after a stop, a restart and a SIGKILL.

Real launchers, real SQLite files, real server subprocesses killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver.exceptions import ToolError

from core import Launcher, SystemConfig
from core.errors import ConfigError
from ensemble_mcp.jobs import LOST_NOTE, Registry
from ensemble_mcp.journal import DB_NAME, Journal, default_state_dir
from ensemble_mcp.plan import plan_ensemble
from ensemble_mcp.registration import EnsembleTool, build_ensemble_tool
from ensemble_mcp.results import OutputLimits
from ensemble_mcp.server import Server
from tests.conftest import pids_with_env, wait_until_gone
from tests.ensemble_mcp.durable_server import (
    NAME,
    NAP_CMD,
    NAP_CMD_PARAMS,
    build_server,
    nap,
    start,
)

# -- the state directory and the journal file -------------------------------------------------


def test_the_default_state_dir_is_per_user_and_per_server() -> None:
    assert default_state_dir("combustion", {"HOME": "/h"}) == Path(
        "/h/.local/state/ensemble-mcp/combustion"
    )
    assert default_state_dir("a/b c", {"XDG_STATE_HOME": "/x"}) == Path("/x/ensemble-mcp/a_b_c")
    assert default_state_dir("..", {"ENSEMBLE_MCP_STATE_DIR": "/s"}) == Path("/s/_")
    env = {"ENSEMBLE_MCP_STATE_DIR": "/s", "XDG_STATE_HOME": "/x"}
    assert default_state_dir("srv", env) == Path("/s/srv")
    assert Server("named").state_dir == Path(os.environ["ENSEMBLE_MCP_STATE_DIR"], "named")
    assert Server("named", state_dir="/tmp/here").state_dir == Path("/tmp/here")


def test_the_journal_is_private_wal_and_held_by_one_process(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "srv"
    journal = Journal.open(directory)
    try:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        journal.add("e-1", "t", {"total": 1}, 1.0)
        assert journal.entries("e-1", 0, 1) == {}
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
        assert modes == {"lock": 0o600, DB_NAME: 0o600, f"{DB_NAME}-wal": 0o600}
        assert journal._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        with pytest.raises(ConfigError, match=rf"in use by another server \(pid {os.getpid()}\)"):
            Journal.open(directory)
    finally:
        journal.close()
    Journal.open(directory).close()  # released on close


def test_a_state_dir_others_can_read_or_another_user_owns_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(ConfigError, match=r"open to other users \(mode 0755\).*chmod 700"):
        Journal.open(open_dir)
    if os.getuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ConfigError, match="belongs to another user"):
            Journal.open(theirs)


def test_a_journal_that_is_not_sqlite_or_of_another_version_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir(mode=0o700)
    (garbage / DB_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match=r"cannot be used: .*move it away"):
        Journal.open(garbage)
    newer = tmp_path / "newer"
    Journal.open(newer).close()
    with contextlib.closing(sqlite3.connect(newer / DB_NAME)) as db:
        db.execute("PRAGMA user_version=99")
        with pytest.raises(ConfigError, match=r"is open in another program \(database is locked\)"):
            Journal.open(newer)
    with pytest.raises(ConfigError, match="schema version 99, this server reads version 1"):
        Journal.open(newer)


# -- the registry on a real launcher -------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    with Launcher(SystemConfig(ncpus=2), return_stdout=True) as running:
        yield running


NAP: EnsembleTool = build_ensemble_tool(
    nap, name=None, description=None, params=None, options={}, limits=OutputLimits()
)
NAP_COMMAND: EnsembleTool = build_ensemble_tool(
    NAP_CMD,
    name="nap_cmd",
    description=None,
    params=NAP_CMD_PARAMS,
    options={},
    limits=OutputLimits(),
)


def submit(
    registry: Registry, launcher: Launcher, x: list[int], s: list[float], tool: EnsembleTool = NAP
) -> str:
    registry.room()
    plan = plan_ensemble(tool.spec, {"x": x, "s": s}, max_tasks=5000)
    batch, echoes = tool.launch(launcher, plan, f"t{uuid.uuid4().hex[:6]}-")
    return registry.add(tool.spec, plan, echoes, batch, tool.converter)


def wait_finished(registry: Registry, ensemble_id: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while registry.snapshot(ensemble_id).counts["pending"]:
        assert time.monotonic() < deadline, "the ensemble did not finish"
        time.sleep(0.01)  # no event is published for "journaled"; bounded poll


def registry_at(directory: Path, now: list[float], **kwargs: Any) -> Registry:
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    registry = Registry(directory, clock=clock, **kwargs)
    registry.start()
    return registry


def test_finished_ensembles_go_after_their_ttl_across_restarts(
    tmp_path: Path, launcher: Launcher
) -> None:
    now = [1000.0]
    registry = registry_at(tmp_path / "s", now, ttl_s=10)
    first = submit(registry, launcher, [1, 2], [0])
    wait_finished(registry, first)
    registry.stop()
    now[0] += 9  # a restart keeps it: finish times are wall-clock times
    registry = registry_at(tmp_path / "s", now, ttl_s=10)
    assert registry.snapshot(first).counts["success"] == 2
    now[0] += 2
    with pytest.raises(ToolError, match=f"no ensemble has id '{first}'.*dropped after 10 s"):
        registry.snapshot(first)
    assert registry._journal is not None and registry._journal.size() == (0, 0)
    registry.stop()


def test_room_drops_the_oldest_finished_first_and_refuses_when_running_ones_fill_it(
    tmp_path: Path, launcher: Launcher
) -> None:
    now = [1000.0]
    registry = registry_at(tmp_path / "s", now, max_ensembles=2)
    try:
        older = submit(registry, launcher, [1], [0])
        wait_finished(registry, older)
        now[0] += 1
        newer = submit(registry, launcher, [2], [0])
        wait_finished(registry, newer)
        running = submit(registry, launcher, [3], [30])  # drops `older` to make room
        with pytest.raises(ToolError, match="no ensemble has id"):
            registry.snapshot(older)
        assert registry.snapshot(newer).counts["success"] == 1
        second = submit(registry, launcher, [4], [30])  # drops `newer`
        with pytest.raises(ToolError, match="2 ensembles are still running, the most"):
            registry.room()
        assert {registry.snapshot(e).counts["pending"] for e in (running, second)} == {1}
    finally:
        for ensemble_id in registry._running.copy():
            registry.cancel(ensemble_id)
        registry.stop()


def test_the_byte_cap_drops_finished_ensembles_then_refuses(
    tmp_path: Path, launcher: Launcher
) -> None:
    now = [1000.0]
    registry = registry_at(tmp_path / "s", now, max_bytes=3000)
    try:
        big = submit(registry, launcher, list(range(40)), [0], NAP_COMMAND)  # 40 x ~80 bytes
        wait_finished(registry, big)
        assert registry._journal is not None
        held = registry._journal.size()[1]
        assert held > 3000
        small = submit(registry, launcher, [1], [30])  # room() dropped `big` first
        with pytest.raises(ToolError, match="no ensemble has id"):
            registry.snapshot(big)
        assert registry._journal.size()[1] < 1000
        registry.cancel(small)
        wait_finished(registry, small)
        now[0] += 1
        over = submit(registry, launcher, list(range(40)), [0] * 39 + [30], NAP_COMMAND)
        deadline = time.monotonic() + 20
        while registry.snapshot(over).done < 39:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(
            ToolError, match=r"fill this server's journal \([\d,]+ bytes, cap 3,000\)"
        ):
            registry.room()
    finally:
        for ensemble_id in registry._running.copy():
            registry.cancel(ensemble_id)
        registry.stop()


def test_pages_read_during_writes_hold_whole_entries_only(
    tmp_path: Path, launcher: Launcher
) -> None:
    registry = registry_at(tmp_path / "s", [time.time()])
    total = 3000
    ensemble_id = submit(registry, launcher, list(range(total)), [0])
    seen_done: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            snapshot = registry.snapshot(ensemble_id)
            entries, _ = registry.page(snapshot, 0, total)
            ended = [e for e in entries if e["status"] != "pending"]
            for entry in entries:
                if entry["status"] == "pending":
                    assert entry == {
                        "index": entry["index"],
                        "params": entry["params"],
                        "status": "pending",
                    }
                else:
                    assert entry["status"] == "success" and entry["result"] == entry["index"]
                    assert entry["params"] == {"x": entry["index"], "s": 0.0}
                    assert isinstance(entry["duration_s"], float)
            assert len(ended) >= snapshot.done  # counts never run ahead of the entries
            seen_done.append(len(ended))
            if snapshot.counts["pending"] == 0:
                break
            assert time.monotonic() < deadline
    finally:
        registry.stop()
    assert seen_done[-1] == total
    assert seen_done == sorted(seen_done)


def test_a_journal_that_cannot_be_written_says_so_and_keeps_finished_ones_readable(
    tmp_path: Path, launcher: Launcher
) -> None:
    registry = registry_at(tmp_path / "s", [time.time()])
    try:
        finished = submit(registry, launcher, [1, 2], [0])
        wait_finished(registry, finished)
        assert registry._journal is not None
        db = registry._journal._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages + 2}")  # a full disk, for SQLite
        full = submit(registry, launcher, list(range(400)), [0], NAP_COMMAND)
        deadline = time.monotonic() + 20
        while registry._broken is None:
            assert time.monotonic() < deadline, "the journal never filled up"
            time.sleep(0.01)
        why = r"could not record results in its journal \(.*\): database or disk is full"
        with pytest.raises(ToolError, match=why):
            registry.snapshot(full)
        with pytest.raises(ToolError, match=why):
            registry.room()
        assert registry.snapshot(finished).counts["success"] == 2
        assert len(registry.page(registry.snapshot(finished), 0, 2)[0]) == 2
    finally:
        registry.stop()


# -- a stop, in-process --------------------------------------------------------------------------


async def poll_status(
    client: Client, ensemble_id: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            status = (
                await client.call_tool("ensemble_status", {"ensemble_id": ensemble_id})
            ).structured_content
            assert status is not None
            if until(status):
                return status
            await anyio.sleep(0.02)


async def all_results(client: Client, ensemble_id: str) -> list[dict[str, Any]]:
    page = await client.call_tool("ensemble_results", {"ensemble_id": ensemble_id, "limit": 1000})
    assert not page.is_error and page.structured_content is not None
    return list(page.structured_content["tasks"])


async def test_a_stop_cuts_running_tasks_which_read_lost_after_the_start(tmp_path: Path) -> None:
    srv = build_server(state_dir=tmp_path / "state")
    srv.start()
    try:
        async with Client(srv) as client:
            started = await client.call_tool(
                "nap_cmd_submit", {"x": list(range(6)), "s": [0, 0, 0, 30, 30, 30]}
            )
            ensemble_id = started.structured_content["ensemble_id"]  # type: ignore[index]
            await poll_status(client, ensemble_id, lambda s: s["done"] == 3)
            before = await all_results(client, ensemble_id)
    finally:
        srv.shutdown()
    assert [e["status"] for e in before] == ["success"] * 3 + ["pending"] * 3
    srv.start()
    try:
        async with Client(srv) as client:
            status = await poll_status(client, ensemble_id, lambda s: True)
            after = await all_results(client, ensemble_id)
            text = (
                (await client.call_tool("ensemble_results", {"ensemble_id": ensemble_id}))
                .content[0]
                .text
            )  # type: ignore[union-attr]
    finally:
        srv.shutdown()
    assert status["finished"] is True and status["done"] == 6
    assert status["counts"] == {
        "success": 3,
        "failed": 0,
        "timeout": 0,
        "cancelled": 0,
        "pending": 0,
        "lost": 3,
    }
    assert status["note"].startswith("3 tasks are lost: the server stopped before they ended")
    assert after[:3] == before[:3]
    assert after[3:] == [
        {"index": i, "params": {"s": 30.0, "x": i}, "status": "lost", "note": LOST_NOTE}
        for i in (3, 4, 5)
    ]
    assert "#3 s=30.0, x=3 -> lost: the server stopped before this task ended" in text


# -- SIGKILL of a server subprocess ---------------------------------------------------------------


@pytest.mark.slow
async def test_sigkill_mid_ensemble_then_restart_answers_for_it(tmp_path: Path) -> None:
    mark = f"durable-{uuid.uuid4().hex}"
    state = tmp_path / "state"
    process, url = start(mark, state)
    try:
        async with Client(url) as client:
            started = await client.call_tool(
                "nap_cmd_submit", {"x": list(range(6)), "s": [0, 0, 0, 60, 60, 60]}
            )
            ensemble_id = started.structured_content["ensemble_id"]  # type: ignore[index]
            await poll_status(client, ensemble_id, lambda s: s["done"] == 3)
            before = await all_results(client, ensemble_id)
            assert len(pids_with_env(f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}")) >= 2  # its workers
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Its workers die with it (PR_SET_PDEATHSIG), the napping tasks with them.
    assert wait_until_gone(f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}", timeout_s=15) == []
    process, url = start(mark, state)
    try:
        async with Client(url) as client:
            status = await poll_status(client, ensemble_id, lambda s: True)
            after = await all_results(client, ensemble_id)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert status["finished"] is True
    assert status["counts"]["success"] == 3 and status["counts"]["lost"] == 3
    assert after[:3] == before[:3] and [e["result"] for e in after[:3]] == ["0\n", "1\n", "2\n"]
    assert [(e["status"], e["note"]) for e in after[3:]] == [("lost", LOST_NOTE)] * 3
    journal = state / NAME / DB_NAME
    with contextlib.closing(sqlite3.connect(journal)) as db:  # whole JSON rows, one per task
        rows = db.execute("SELECT idx, entry FROM tasks ORDER BY idx").fetchall()
    assert [(i, json.loads(t)) for i, t in rows] == [(e["index"], e) for e in before[:3]]
