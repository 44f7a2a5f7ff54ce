"""The official MCP Inspector CLI 2.x (an independent TypeScript client) drives the server.

Needs Node 22 and the inspector under .node/ (``scripts/install-inspector.sh``); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ensemble_mcp.conftest_mcp import ROOT, start_http_server, stop_process

BIN = ROOT / ".node" / "node_modules" / ".bin"
pytestmark = [
    pytest.mark.node,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (BIN / "mcp-inspector").exists() or not (BIN / "node").exists(),
        reason="MCP Inspector not installed: run scripts/install-inspector.sh "
        "(Node 22 + @modelcontextprotocol/inspector@2 into .node/)",
    ),
]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    process, address = start_http_server(f"inspector-{uuid.uuid4().hex}")
    try:
        yield address
    finally:
        stop_process(process)


def inspector(url: str, home: Path, *args: str) -> tuple[int, Any]:
    env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        [
            str(BIN / "mcp-inspector"),
            "--cli",
            url,
            "--transport",
            "http",
            "--format",
            "json",
            "-q",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


def test_inspector_lists_the_ensemble_tools_with_list_schemas(url: str, tmp_path: Path) -> None:
    rc, out = inspector(url, tmp_path, "--method", "tools/list", "--strict")
    assert rc == 0
    tools = {t["name"]: t for t in out["result"]["tools"]}
    assert {"add", "add_submit", "ensemble_status", "ensemble_results", "ensemble_cancel"} <= set(
        tools
    )
    assert tools["add"]["inputSchema"]["properties"]["a"]["type"] == "array"
    assert tools["add"]["outputSchema"]["required"] == ["summary", "tasks"]


def test_inspector_calls_an_ensemble_tool_and_gets_every_result(url: str, tmp_path: Path) -> None:
    rc, out = inspector(
        url,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "add",
        "--tool-args-json",
        json.dumps({"a": [1, 2, 3], "b": 10}),
    )
    assert rc == 0
    result = out["result"]
    assert result["isError"] is False
    assert [t["result"] for t in result["structuredContent"]["tasks"]] == [11, 12, 13]
    assert result["content"][0]["text"].startswith("add: 3 tasks")


def test_inspector_sees_a_validation_error_as_a_tool_error(url: str, tmp_path: Path) -> None:
    rc, out = inspector(
        url,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "add",
        "--tool-args-json",
        json.dumps({"a": [1, 2], "b": [1, 2, 3]}),
    )
    assert rc == 5
    assert out["result"]["isError"] is True
    assert "Nothing was run." in out["result"]["content"][0]["text"]
