"""The ensemble server over stdio, as a subprocess: tools work and stdout carries only protocol."""

from __future__ import annotations

import json
import subprocess
import uuid

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import wait_until_gone
from tests.ensemble_mcp.conftest_mcp import ROOT, serve_command, subprocess_env

pytestmark = pytest.mark.slow


async def test_stdio_server_runs_ensembles_for_the_sdk_client() -> None:
    task_mark = f"stdio-{uuid.uuid4().hex}"
    argv = serve_command("--transport", "stdio")
    params = StdioServerParameters(
        command=argv[0], args=argv[1:], cwd=str(ROOT), env=subprocess_env(task_mark)
    )
    with anyio.fail_after(60):
        async with Client(params) as client:
            noisy = await client.call_tool("noisy", {"x": [1, 2, 3]})
            echoed = await client.call_tool("echo_cmd", {"word": ["hello"]})
    assert [t["result"] for t in noisy.structured_content["tasks"]] == [1, 2, 3]
    assert echoed.structured_content["tasks"][0]["result"] == "hello\n"
    assert wait_until_gone(f"ENSEMBLE_MCP_TEST_TASK_MARK={task_mark}", timeout_s=15) == []


def _request(ident: int, method: str, params: dict[str, object]) -> bytes:
    return (
        json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}) + "\n"
    ).encode()


def test_task_output_never_reaches_the_protocol_stream() -> None:
    task_mark = f"stdio-raw-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        serve_command("--transport", "stdio"),
        cwd=ROOT,
        env=subprocess_env(task_mark),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    messages = [
        _request(
            1,
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        ),
        b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n',
        _request(2, "tools/call", {"name": "noisy", "arguments": {"x": [7, 8]}}),
        _request(3, "tools/call", {"name": "echo_cmd", "arguments": {"word": ["loud"]}}),
    ]
    assert process.stdin is not None and process.stdout is not None
    for message in messages:
        process.stdin.write(message)
    process.stdin.flush()
    lines = []
    answered: set[int] = set()
    try:
        while answered != {1, 2, 3}:
            line = process.stdout.readline()
            assert line, "the server closed stdout before answering"
            lines.append(line)
            answered.add(json.loads(line).get("id"))
    finally:
        rest, stderr = process.communicate(timeout=30)  # closes stdin: the server exits
    decoded = [json.loads(line) for line in [*lines, *rest.splitlines()]]
    assert all(m["jsonrpc"] == "2.0" for m in decoded)
    results = {m["id"]: m["result"] for m in decoded if "result" in m}
    assert [t["result"] for t in results[2]["structuredContent"]["tasks"]] == [7, 8]
    assert results[3]["structuredContent"]["tasks"][0]["result"] == "loud\n"
    assert b"noisy stdout line" not in rest and b"Traceback" not in stderr
    assert wait_until_gone(f"ENSEMBLE_MCP_TEST_TASK_MARK={task_mark}", timeout_s=15) == []
