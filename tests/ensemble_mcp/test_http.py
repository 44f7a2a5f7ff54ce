"""The ensemble server over real streamable HTTP: a server subprocess, the SDK client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError

from tests.conftest import pids_with_env, wait_until_gone
from tests.ensemble_mcp.conftest_mcp import start_http_server, stop_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, str]]:
    """The URL of a test server subprocess, and the mark its command tasks carry."""
    task_mark = f"http-{uuid.uuid4().hex}"
    process, url = start_http_server(task_mark)
    try:
        yield url, task_mark
    finally:
        stop_process(process)
    assert wait_until_gone(f"ENSEMBLE_MCP_TEST_TASK_MARK={task_mark}", timeout_s=15) == []


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_lists_tools_and_runs_one_task_per_element_over_http(
    served: tuple[str, str], mode: str
) -> None:
    url, _ = served
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with Client(url, mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"add", "add_submit", "ensemble_results", "echo_cmd"} <= names
        with anyio.fail_after(30):
            result = await client.call_tool(
                "add", {"a": [1, 2, 5, 10], "b": 300}, progress_callback=on_progress
            )
    assert not result.is_error
    assert [t["result"] for t in result.structured_content["tasks"]] == [301, 302, 305, 310]
    assert result.structured_content["summary"]["broadcast"] == ["b"]
    assert seen == [1, 2, 3, 4]


async def test_errors_and_failed_tasks_read_the_same_over_http(
    served: tuple[str, str], mode: str
) -> None:
    url, _ = served
    async with Client(url, mode=mode) as client:
        with anyio.fail_after(30):
            bad = await client.call_tool("add", {"a": [1, 2], "b": [1, 2, 3]})
            failed = await client.call_tool("boom", {"x": [-1, 1]})
            echoed = await client.call_tool("echo_cmd", {"word": ["x y"]})
    assert bad.is_error and "a has 2 values and b has 3 values. Nothing was run." in (
        bad.content[0].text
    )
    assert [t["status"] for t in failed.structured_content["tasks"]] == ["failed", "success"]
    assert echoed.structured_content["tasks"][0]["result"] == "x y\n"


async def test_concurrent_clients_get_their_own_results(served: tuple[str, str]) -> None:
    url, _ = served
    outputs: dict[int, Any] = {}

    async def one(k: int) -> None:
        async with Client(url) as client:
            result = await client.call_tool("add", {"a": list(range(40)), "b": k})
            outputs[k] = [t["result"] for t in result.structured_content["tasks"]]

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for k in range(8):
                group.start_soon(one, k)
    assert outputs == {k: [float(i + k) for i in range(40)] for k in range(8)}


async def test_client_giving_up_cancels_the_tasks_and_no_process_remains(
    served: tuple[str, str], mode: str
) -> None:
    url, task_mark = served
    mark = f"TASK_MARK={task_mark}"
    assert pids_with_env(mark) == []
    async with Client(url, mode=mode) as client, anyio.create_task_group() as group:
        group.start_soon(client.call_tool, "sleep_cmd", {"seconds": [30, 30, 30]})
        with anyio.fail_after(20):
            while len(pids_with_env(mark)) < 2:
                await anyio.sleep(0.02)
        group.cancel_scope.cancel()
    assert wait_until_gone(mark, timeout_s=15) == []


async def test_read_timeout_cancels_the_call_on_the_server(served: tuple[str, str]) -> None:
    url, task_mark = served
    mark = f"TASK_MARK={task_mark}"
    async with Client(url, mode="legacy") as client:
        with pytest.raises(MCPError, match=r"[Tt]imed out"):
            await client.call_tool("sleep_cmd", {"seconds": 30}, read_timeout_seconds=1.0)
    assert wait_until_gone(mark, timeout_s=15) == []


async def test_a_submitted_ensemble_outlives_its_request(served: tuple[str, str]) -> None:
    url, _ = served
    async with Client(url) as client:
        started = await client.call_tool("add_submit", {"a": [1, 2, 3]})
        ensemble_id = started.structured_content["ensemble_id"]
    async with Client(url) as client:
        status: dict[str, Any] = {}
        with anyio.fail_after(20):
            while not status.get("finished"):
                status = (
                    await client.call_tool("ensemble_status", {"ensemble_id": ensemble_id})
                ).structured_content
        page = await client.call_tool("ensemble_results", {"ensemble_id": ensemble_id})
    assert [t["result"] for t in page.structured_content["tasks"]] == [2.0, 3.0, 4.0]
