"""The examples run: the researcher's server, its client, and the main job that joins them."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest
from mcp import Client

from ensemble_mcp.serve import load_server
from tests.ensemble_mcp.conftest_mcp import ROOT

EXAMPLES = ROOT / "examples" / "agents"


@pytest.mark.slow
def test_main_job_starts_the_server_runs_the_client_and_prints_a_table() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "run_example.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tools on http://127.0.0.1:")
    assert "flame_speed, flame_speed_submit" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("#  pressure"))
    rows = [line.split() for line in lines[header + 2 : header + 6]]
    assert [r[1] for r in rows] == ["1.0", "2.0", "5.0", "10.0"]
    assert all(r[2] == "300.0" and r[3] == "success" for r in rows)
    assert lines[-1].startswith("4 tasks (one-to-one): 4 success in ")
    assert "Traceback" not in done.stderr


async def test_example_function_and_command_tools_agree() -> None:
    server = load_server(f"{EXAMPLES / 'server.py'}:server")
    arguments = {"pressure": [1, 2, 5], "temperature": 300}
    async with Client(server) as client:
        with anyio.fail_after(60):
            function = await client.call_tool("flame_speed", arguments)
            command = await client.call_tool("flame_speed_cli", arguments)
            bad = await client.call_tool("flame_speed_cli", {"pressure": [-1], "temperature": 1})
    speeds = [t["result"] for t in function.structured_content["tasks"]]
    assert speeds == [round(0.38 * (300 / 298.0) ** 1.77 * p**-0.5, 4) for p in (1, 2, 5)]
    assert [float(t["result"]) for t in command.structured_content["tasks"]] == speeds
    assert bad.is_error and "pressure[0] = -1 is not a valid number" in bad.content[0].text
