"""The ensemble server in-process, through the SDK client in both protocol eras (auto, legacy)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client

from core import SystemConfig
from core.spawn import processes_of_run
from ensemble_mcp.server import Server
from tests.conftest import pids_with_env, wait_until_gone
from tests.ensemble_mcp.conftest_mcp import MAX_TASKS, add, build_server, warm


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from warm(build_server())


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def call(
    server: Server, mode: str, tool: str, arguments: dict[str, Any], **kwargs: Any
) -> Any:
    async with Client(server, mode=mode) as client:
        with anyio.fail_after(30):
            return await client.call_tool(tool, arguments, **kwargs)


def text_of(result: Any) -> str:
    return str(result.content[0].text)


# -- tools/list --------------------------------------------------------------------------------


async def test_tool_list_shows_list_schemas_output_schema_and_companion_tools(
    server: Server, mode: str
) -> None:
    async with Client(server, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {
        "add",
        "add_submit",
        "ensemble_status",
        "ensemble_results",
        "ensemble_cancel",
        "echo_cmd",
        "sleep_cmd",
    } <= set(tools)
    assert "sleep_cmd_submit" not in tools
    add_tool = tools["add"]
    assert add_tool.input_schema["properties"]["a"]["type"] == "array"
    assert add_tool.input_schema["required"] == ["a"]
    assert add_tool.description is not None and "ONE call" in add_tool.description
    assert add_tool.description.endswith("Add two numbers.")
    out = add_tool.output_schema
    assert out is not None and out["required"] == ["summary", "tasks"]
    assert out["properties"]["tasks"]["items"]["properties"]["result"] == {"type": "number"}
    assert tools["add_submit"].input_schema == add_tool.input_schema


# -- results -----------------------------------------------------------------------------------


async def test_call_returns_one_entry_per_task_in_input_order(server: Server, mode: str) -> None:
    result = await call(server, mode, "add", {"a": [1, 2, 3], "b": 10})
    assert not result.is_error
    out = result.structured_content
    assert [t["result"] for t in out["tasks"]] == [11.0, 12.0, 13.0]
    assert [t["params"] for t in out["tasks"]] == [
        {"a": 1.0, "b": 10.0},
        {"a": 2.0, "b": 10.0},
        {"a": 3.0, "b": 10.0},
    ]
    assert [t["index"] for t in out["tasks"]] == [0, 1, 2]
    assert all(t["status"] == "success" and t["duration_s"] >= 0 for t in out["tasks"])
    summary = out["summary"]
    assert summary["total"] == 3 and summary["relation"] == "one-to-one"
    assert summary["lengths"] == {"a": 3, "b": 3} and summary["broadcast"] == ["b"]
    assert summary["counts"] == {"success": 3, "failed": 0, "timeout": 0, "cancelled": 0}
    assert summary["distinct_params"] == 3
    assert summary["stats"]["result"]["max"] == {
        "value": 13.0,
        "index": 2,
        "params": {"a": 3.0, "b": 10.0},
        "tasks": 1,
    }
    assert text_of(result).startswith(
        "add: 3 tasks, 3 success (a 3 values; b=10.0 for every task); min 11.0 at a=1.0, "
        "max 13.0 at a=3.0, 3 distinct results of 3;"
    )


async def test_many_to_many_runs_every_combination(server: Server, mode: str) -> None:
    result = await call(
        server, mode, "add", {"a": [1, 2], "b": [10, 20, 30], "relation": "many-to-many"}
    )
    assert [t["result"] for t in result.structured_content["tasks"]] == [
        11.0,
        21.0,
        31.0,
        12.0,
        22.0,
        32.0,
    ]


async def test_failed_tasks_are_data_with_exception_type_and_message(
    server: Server, mode: str
) -> None:
    result = await call(server, mode, "boom", {"x": [1, -2, 3]})
    assert not result.is_error
    tasks = result.structured_content["tasks"]
    assert [t["status"] for t in tasks] == ["success", "failed", "success"]
    assert tasks[1]["error"].startswith("ValueError: x must be >= 0, got -2")
    assert "Traceback" not in tasks[1]["error"] and "result" not in tasks[1]
    assert result.structured_content["summary"]["counts"]["failed"] == 1
    assert "#1 x=-2 -> failed: ValueError: x must be >= 0, got -2" in text_of(result)


async def test_async_functions_run_as_tasks(server: Server, mode: str) -> None:
    result = await call(server, mode, "async_scale", {"x": [1, 2, 3], "factor": [5]})
    assert [t["result"] for t in result.structured_content["tasks"]] == [5, 10, 15]


async def test_pydantic_model_arguments_and_results_round_trip(server: Server, mode: str) -> None:
    result = await call(
        server, mode, "point", {"p": {"pressure": 1, "temperature": 300}, "scale": [2, 3]}
    )
    assert [t["result"] for t in result.structured_content["tasks"]] == [
        {"pressure": 2.0, "temperature": 600.0},
        {"pressure": 3.0, "temperature": 900.0},
    ]


async def test_command_template_returns_stdout_per_task(server: Server, mode: str) -> None:
    result = await call(server, mode, "echo_cmd", {"word": ["a b", "$(id -u)", "c;d"]})
    assert [t["result"] for t in result.structured_content["tasks"]] == [
        "a b\n",
        "$(id -u)\n",
        "c;d\n",
    ]


async def test_failing_command_reports_exit_code_and_stderr_tail(server: Server, mode: str) -> None:
    code = "import sys; sys.stderr.write('disk full'); sys.exit(3)"
    result = await call(server, mode, "py_cmd", {"code": [code]})
    (task,) = result.structured_content["tasks"]
    assert task["status"] == "failed"
    assert task["error"] == "exit code 3; stderr: disk full"


async def test_a_result_that_breaks_its_return_annotation_is_a_failed_task(
    server: Server, mode: str
) -> None:
    result = await call(server, mode, "wrong_type", {"x": [1]})
    (task,) = result.structured_content["tasks"]
    assert task["status"] == "failed"
    assert 'returned "not an int 1", which does not match its return type int' in task["error"]


# -- bounds ------------------------------------------------------------------------------------


async def test_text_content_is_bounded_and_points_to_structured_content(
    server: Server, mode: str
) -> None:
    result = await call(server, mode, "boom", {"x": [*range(8), -1, -2]})
    lines = text_of(result).splitlines()
    assert len(lines) == 1 + 5 + 1
    assert lines[-1] == "... 5 more in structuredContent (2 not successful)"
    assert len(result.structured_content["tasks"]) == 10


async def test_large_results_are_cut_or_left_out_with_a_marker(server: Server, mode: str) -> None:
    text = (await call(server, mode, "big_text", {"n": [50, 1000]})).structured_content["tasks"]
    assert text[0]["result"] == "x" * 50 and "note" not in text[0]
    assert text[1]["result"] == "[... 800 chars cut] " + "x" * 200
    assert text[1]["note"] == "result cut to its last 200 chars"
    lists = (await call(server, mode, "big_list", {"n": [3, 5000]})).structured_content["tasks"]
    assert lists[0]["result"] == [0, 1, 2]
    assert "result" not in lists[1]
    assert "left out: above the 2,000-byte bound" in lists[1]["note"]


# -- validation before launch ------------------------------------------------------------------


async def test_bad_arguments_return_an_error_that_shows_the_fix_and_run_nothing(
    server: Server, mode: str
) -> None:
    before = server.num_calls
    result = await call(server, mode, "add", {"a": [1, 2, 3], "b": [1, 2]})
    assert result.is_error
    assert text_of(result).startswith('Error executing tool add: Under relation "one-to-one"')
    assert "a has 3 values and b has 2 values. Nothing was run." in text_of(result)
    fix = '{"name": "add", "arguments": {"a": [1, 2, 3], "b": [1, 2], "relation": "many-to-many"}}'
    assert f"\n  {fix}\n" in text_of(result)
    bad_type = await call(server, mode, "add", {"a": [1, "x"]})
    assert 'a[1] = "x" is not a valid number' in text_of(bad_type)
    unknown = await call(server, mode, "add", {"a": [1], "c": [2]})
    assert "unknown argument 'c'; the arguments are: a (required), b, relation" in text_of(unknown)
    over = await call(server, mode, "add", {"a": list(range(MAX_TASKS + 1))})
    assert f"has {MAX_TASKS + 1} values, above the cap of {MAX_TASKS} per list" in text_of(over)
    assert server.num_calls == before


async def test_tasks_no_node_can_hold_are_refused_before_launch(server: Server, mode: str) -> None:
    launcher = server.launcher
    assert launcher is not None
    ppn = launcher.num_slots + 1
    name = f"wide_{uuid.uuid4().hex[:8]}"
    server.ensemble_tool("true {x}", name=name, ppn=ppn)
    before = server.num_calls
    async with Client(server, mode=mode) as client:
        with anyio.fail_after(5):  # it used to hang: the task waited for slots forever
            result = await client.call_tool(name, {"x": [1, 2]})
            submitted = await client.call_tool(f"{name}_submit", {"x": [1, 2]})
    for refused in (result, submitted):
        assert refused.is_error
        assert f"ppn={ppn}" in text_of(refused)
        assert f"the largest node has {launcher.num_slots}" in text_of(refused)
        assert text_of(refused).endswith("Nothing was run.")
    assert server.num_calls == before


async def test_gpus_the_node_lacks_are_refused_before_launch(server: Server, mode: str) -> None:
    name = f"gpu_{uuid.uuid4().hex[:8]}"
    server.ensemble_tool("true {x}", name=name, ngpus_per_process=1000, submit_tool=False)
    result = await call(server, mode, name, {"x": [1]})

    assert result.is_error
    assert "ngpus_per_process=1000" in text_of(result)
    assert text_of(result).endswith("Nothing was run.")


async def test_what_the_launcher_refuses_at_submit_is_a_tool_error(
    server: Server, mode: str
) -> None:
    lock = threading.Lock()

    def locked(x: int) -> int:
        """Needs a lock, which cannot be sent to a worker process."""
        with lock:
            return x

    name = f"locked_{uuid.uuid4().hex[:8]}"
    server.ensemble_tool(locked, name=name, submit_tool=False)
    before = server.num_calls
    result = await call(server, mode, name, {"x": [1, 2]})

    assert result.is_error
    assert "the launcher refused the tasks: cannot send" in text_of(result)
    assert text_of(result).endswith("Nothing was run.")
    assert server.num_calls == before


# -- progress, concurrency, cancellation -------------------------------------------------------


async def test_progress_notifications_count_tasks_done(server: Server, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    await call(server, mode, "add", {"a": [1, 2, 3, 4]}, progress_callback=on_progress)
    assert [(d, t) for d, t, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[-1][2] == "4/4 tasks done"


async def test_concurrent_calls_share_the_launcher_and_keep_results_apart(
    server: Server, mode: str
) -> None:
    outputs: dict[int, list[float]] = {}

    async def one(k: int) -> None:
        result = await call(server, mode, "add", {"a": list(range(50)), "b": k * 1000})
        outputs[k] = [t["result"] for t in result.structured_content["tasks"]]

    async with anyio.create_task_group() as group:
        for k in range(6):
            group.start_soon(one, k)
    assert outputs == {k: [float(i + k * 1000) for i in range(50)] for k in range(6)}


async def test_cancelled_call_kills_its_tasks_and_leaves_no_process(
    server: Server, mode: str
) -> None:
    mark = f"TASK_MARK=cancel-{uuid.uuid4().hex}"
    name = f"sleep_{uuid.uuid4().hex[:8]}"
    server.ensemble_tool("sleep {s}", name=name, env=dict([mark.split("=", 1)]), submit_tool=False)
    async with Client(server, mode=mode) as client, anyio.create_task_group() as group:
        group.start_soon(client.call_tool, name, {"s": [30, 30, 30]})
        with anyio.fail_after(20):
            while len(pids_with_env(mark)) < 2:  # both slots run a sleep: cancel mid-run
                await anyio.sleep(0.02)
        group.cancel_scope.cancel()
    assert wait_until_gone(mark, timeout_s=15) == []


# -- long ensembles ----------------------------------------------------------------------------


async def test_submit_returns_an_id_then_status_results_pages_and_cancel_work(
    server: Server, mode: str
) -> None:
    async with Client(server, mode=mode) as client:
        started = await client.call_tool("add_submit", {"a": list(range(7)), "b": 1})
        assert not started.is_error
        ensemble_id = started.structured_content["ensemble_id"]
        assert started.structured_content["total"] == 7
        assert ensemble_id in text_of(started)
        status: dict[str, Any] = {}
        with anyio.fail_after(20):
            while not status.get("finished"):
                status = (
                    await client.call_tool("ensemble_status", {"ensemble_id": ensemble_id})
                ).structured_content
        assert status["counts"]["success"] == 7 and status["done"] == 7
        page = (
            await client.call_tool(
                "ensemble_results", {"ensemble_id": ensemble_id, "offset": 0, "limit": 4}
            )
        ).structured_content
        assert [t["result"] for t in page["tasks"]] == [1.0, 2.0, 3.0, 4.0]
        assert page["next_offset"] == 4
        last = (
            await client.call_tool(
                "ensemble_results", {"ensemble_id": ensemble_id, "offset": 4, "limit": 4}
            )
        ).structured_content
        assert [t["index"] for t in last["tasks"]] == [4, 5, 6] and last["next_offset"] is None
        cancelled = await client.call_tool("ensemble_cancel", {"ensemble_id": ensemble_id})
        assert cancelled.structured_content["finished"] is True
        missing = await client.call_tool("ensemble_status", {"ensemble_id": "nope"})
        assert missing.is_error and "no ensemble has id 'nope'" in text_of(missing)
        bad = await client.call_tool("add_submit", {"a": [1, 2], "b": [1, 2, 3]})
        assert bad.is_error and "Nothing was run." in text_of(bad)


async def test_ensemble_cancel_stops_running_tasks(server: Server, mode: str) -> None:
    mark = f"TASK_MARK=submit-{uuid.uuid4().hex}"
    name = f"nap_{uuid.uuid4().hex[:8]}"
    server.ensemble_tool("sleep {s}", name=name, env=dict([mark.split("=", 1)]))
    async with Client(server, mode=mode) as client:
        started = await client.call_tool(f"{name}_submit", {"s": [30, 30, 30]})
        ensemble_id = started.structured_content["ensemble_id"]
        with anyio.fail_after(20):
            while len(pids_with_env(mark)) < 2:
                await anyio.sleep(0.02)
        await client.call_tool("ensemble_cancel", {"ensemble_id": ensemble_id})
        assert wait_until_gone(mark, timeout_s=15) == []
        status: dict[str, Any] = {}
        with anyio.fail_after(15):
            while not status.get("finished"):
                status = (
                    await client.call_tool("ensemble_status", {"ensemble_id": ensemble_id})
                ).structured_content
        assert status["counts"]["cancelled"] == 3


async def test_a_task_past_its_timeout_ends_timeout(server: Server, mode: str) -> None:
    name = f"slow_{uuid.uuid4().hex[:8]}"
    server.ensemble_tool("sleep {s}", name=name, timeout=0.5, submit_tool=False)
    result = await call(server, mode, name, {"s": [0, 20]})
    first, second = result.structured_content["tasks"]
    assert first["status"] == "success"
    assert second["status"] == "timeout" and second["error"].startswith("timed out")
    assert result.structured_content["summary"]["counts"]["timeout"] == 1


# -- registration and life cycle ---------------------------------------------------------------


def test_decorator_forms_return_what_they_were_given() -> None:
    srv = Server("forms")

    def sim(a: float) -> float:
        return a

    assert srv.ensemble_tool(sim) is sim
    assert srv.ensemble_tool(name="sim2", timeout=5)(sim) is sim
    assert srv.ensemble_tool("echo {a}", name="sim3") == "echo {a}"
    assert sim(2.0) == 2.0
    with pytest.raises(ValueError, match="a tool named 'sim' already exists"):
        srv.ensemble_tool(sim)
    with pytest.raises(ValueError, match="option timeout"):
        srv.ensemble_tool(sim, name="sim4", timeout=-1)
    with pytest.raises(ValueError, match="sim6: option nnodes: must be a whole number >= 1, got 0"):
        srv.ensemble_tool("echo {a}", name="sim6", nnodes=0)
    with pytest.raises(ValueError, match="sim7: option env: value of 'A' must be a string"):
        srv.ensemble_tool("echo {a}", name="sim7", env={"A": 1})
    with pytest.raises(ValueError, match="need a command; register a command template"):
        srv.ensemble_tool(sim, name="sim5", ppn=2)


async def test_launcher_starts_with_the_first_session_and_stops_with_the_last() -> None:
    srv = Server("lifecycle")
    srv.ensemble_tool(add)
    srv.ensemble_tool(add, name="add_one_slot", system_config=SystemConfig(ncpus=1))
    assert srv.launcher is None
    async with Client(srv) as client:
        launcher = srv.launcher
        assert launcher is not None and launcher.num_slots >= 1
        result = await client.call_tool("add", {"a": [1]})
        assert result.structured_content["tasks"][0]["result"] == 2.0
        own = await client.call_tool("add_one_slot", {"a": [1, 2]})
        assert [t["result"] for t in own.structured_content["tasks"]] == [2.0, 3.0]
    assert srv.launcher is None
    assert processes_of_run(launcher.run_id) == []


async def test_ensemble_status_reports_the_utilisation_of_the_slots_so_far(
    server: Server, mode: str
) -> None:
    name = f"busy_{uuid.uuid4().hex[:8]}"
    server.ensemble_tool("sleep {s}", name=name)
    async with Client(server, mode=mode) as client:
        started = await client.call_tool(f"{name}_submit", {"s": [0.3] * 4})
        ensemble_id = started.structured_content["ensemble_id"]
        status: dict[str, Any] = {}
        with anyio.fail_after(20):
            while not status.get("finished"):
                status = (
                    await client.call_tool("ensemble_status", {"ensemble_id": ensemble_id})
                ).structured_content
    slots = server.launcher.num_slots if server.launcher else 0
    assert slots >= 1
    busy = 4 * 0.3  # at least: each task slept 0.3 s
    assert busy / (slots * status["elapsed_s"]) * 0.9 <= status["utilisation"] <= 1.0
