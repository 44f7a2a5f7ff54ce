"""Retry options of ensemble tools, seen through a real in-process MCP client.

Each task counts its attempts in a file of its own directory (its argument), so a test knows what
happened without any channel but the file system.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import pytest
from mcp import Client

from ensemble_mcp.server import Server
from tests.ensemble_mcp.conftest_mcp import warm


def _attempt(state: str) -> int:
    with open(os.path.join(state, "attempts"), "a") as file:
        file.write("x")
    with open(os.path.join(state, "attempts")) as file:
        return len(file.read())


def flaky(state: str) -> str:
    """Fail twice, then succeed."""
    attempt = _attempt(state)
    if attempt <= 2:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return f"attempt {attempt}"


def steady(state: str) -> str:
    """Succeed at once."""
    return f"attempt {_attempt(state)}"


def kills_its_worker(state: str) -> str:
    """SIGKILL the worker it runs in, every time."""
    _attempt(state)
    os.kill(os.getpid(), signal.SIGKILL)
    return "never"


KILL_PARENT_ONCE = (
    "import os, signal, sys; p = os.path.join(sys.argv[1], 'attempts'); "
    "open(p, 'a').write('x'); n = len(open(p).read()); "
    "n == 1 and os.kill(os.getppid(), signal.SIGKILL); print('attempt', n)"
)


def build() -> Server:
    server = Server("retries-test", max_tasks=20)
    server.ensemble_tool(flaky, failure_retries=2)
    server.ensemble_tool(flaky, name="flaky_once", submit_tool=False)
    server.ensemble_tool(steady, failure_retries=2, submit_tool=False)
    server.ensemble_tool(kills_its_worker, max_retries=1, submit_tool=False)
    server.ensemble_tool(
        f"{sys.executable} -c {{code}} {{state}}", name="py_cmd", max_retries=1, submit_tool=False
    )
    return server


cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from warm(build())


async def call(server: Server, tool: str, arguments: dict[str, Any]) -> Any:
    async with Client(server) as client:
        with anyio.fail_after(60):
            return await client.call_tool(tool, arguments)


def state_dirs(tmp_path: Path, n: int) -> list[str]:
    dirs = [tmp_path / f"s{i}" for i in range(n)]
    for directory in dirs:
        directory.mkdir(parents=True)
    return [str(d) for d in dirs]


async def test_failure_retries_of_a_tool_show_as_attempts_in_its_output(
    server: Server, tmp_path: Path
) -> None:
    result = await call(server, "flaky", {"state": state_dirs(tmp_path, 2)})

    assert not result.is_error
    tasks = result.structured_content["tasks"]
    assert [(t["status"], t["result"], t["attempts"]) for t in tasks] == [
        ("success", "attempt 3", 3),
        ("success", "attempt 3", 3),
    ]
    assert result.content[0].text.count('-> "attempt 3" (3 attempts)') == 2  # no run time


async def test_without_the_option_a_tool_does_not_retry_failures(
    server: Server, tmp_path: Path
) -> None:
    result = await call(server, "flaky_once", {"state": state_dirs(tmp_path, 1)})

    (task,) = result.structured_content["tasks"]
    assert task["status"] == "failed"
    assert "attempts" not in task
    assert "attempt 1 fails on purpose" in task["error"]


async def test_a_task_that_succeeds_at_once_has_no_attempts_field(
    server: Server, tmp_path: Path
) -> None:
    result = await call(server, "steady", {"state": state_dirs(tmp_path, 1)})

    (task,) = result.structured_content["tasks"]
    assert (task["status"], task["result"]) == ("success", "attempt 1")
    assert "attempts" not in task


async def test_a_command_whose_worker_dies_once_succeeds_on_its_second_attempt(
    server: Server, tmp_path: Path
) -> None:
    result = await call(
        server, "py_cmd", {"code": KILL_PARENT_ONCE, "state": state_dirs(tmp_path, 1)}
    )

    (task,) = result.structured_content["tasks"]
    assert (task["status"], task["result"].strip(), task["attempts"]) == (
        "success",
        "attempt 2",
        2,
    )


async def test_a_tool_task_that_kills_its_worker_every_time_fails_after_its_retry(
    server: Server, tmp_path: Path
) -> None:
    result = await call(server, "kills_its_worker", {"state": state_dirs(tmp_path, 1)})
    after = await call(server, "steady", {"state": state_dirs(tmp_path / "x", 3)})

    (task,) = result.structured_content["tasks"]
    assert (task["status"], task["attempts"]) == ("failed", 2)
    assert "lost on all 2 attempts" in task["error"]
    assert [t["status"] for t in after.structured_content["tasks"]] == ["success"] * 3


async def test_submitted_ensembles_show_attempts_in_their_result_pages(
    server: Server, tmp_path: Path
) -> None:
    async with Client(server) as client:
        with anyio.fail_after(60):
            started = await client.call_tool("flaky_submit", {"state": state_dirs(tmp_path, 1)})
            ensemble_id = started.structured_content["ensemble_id"]
            while True:
                status = await client.call_tool("ensemble_status", {"ensemble_id": ensemble_id})
                if status.structured_content["finished"]:
                    break
                await anyio.sleep(0.05)  # polling is what a client of ensemble_status does
            page = await client.call_tool("ensemble_results", {"ensemble_id": ensemble_id})

    (task,) = page.structured_content["tasks"]
    assert (task["status"], task["attempts"]) == ("success", 3)


@pytest.mark.parametrize(
    ("option", "value"), [("max_retries", -1), ("failure_retries", 1.5), ("max_retries", "2")]
)
def test_a_bad_retry_option_is_refused_at_registration(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^steady: option {option}: must be a whole number >= 0"):
        Server("x").ensemble_tool(steady, **{option: value})
