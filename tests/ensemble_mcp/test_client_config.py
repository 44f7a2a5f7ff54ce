"""``ensemble-mcp config`` and ``ensemble-mcp check``: client snippets and the readiness probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from ensemble_mcp.cli import main
from ensemble_mcp.client_config import http_snippet, snippets, stdio_snippet

from .sshd import free_port

URL = "http://127.0.0.1:9276/mcp"
ROOT = Path(__file__).resolve().parents[2]


def printed_snippets(text: str) -> dict[str, dict]:
    """Each ``# Title`` comment line of ``config``'s output and the JSON under it."""
    found = {}
    for block in text.strip().split("\n\n"):
        title, _, body = block.partition("\n")
        assert title.startswith("# ")
        found[title[2:].split(":")[0]] = json.loads(body)
    return found


def test_config_prints_each_client_with_its_own_keys_and_the_token_only_as_a_reference(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "--url", URL]) == 0
    found = printed_snippets(capsys.readouterr().out)
    assert list(found) == ["Claude Code", "VS Code", "Cursor"]
    assert found["Claude Code"] == {
        "mcpServers": {
            "ensemble": {
                "type": "http",
                "url": URL,
                "headers": {"Authorization": "Bearer ${ENSEMBLE_MCP_TOKEN}"},
            }
        }
    }
    assert found["VS Code"] == {
        "inputs": [
            {
                "type": "promptString",
                "id": "ensemble-mcp-token",
                "description": "Bearer token of the ensemble-mcp server",
                "password": True,
            }
        ],
        "servers": {
            "ensemble": {
                "type": "http",
                "url": URL,
                "headers": {"Authorization": "Bearer ${input:ensemble-mcp-token}"},
            }
        },
    }
    assert found["Cursor"] == {
        "mcpServers": {
            "ensemble": {
                "url": URL,
                "headers": {"Authorization": "Bearer ${env:ENSEMBLE_MCP_TOKEN}"},
            }
        }
    }


def test_config_for_a_server_without_a_token_sends_no_header_and_asks_for_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["config", "--url", URL, "--no-token", "--client", "vscode", "--name", "sims"])
    assert code == 0
    assert printed_snippets(capsys.readouterr().out)["VS Code"] == {
        "servers": {"sims": {"type": "http", "url": URL}}
    }


def test_the_stdio_form_starts_this_environments_server_with_an_absolute_file_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    entry = stdio_snippet("examples/agents/server.py").config["mcpServers"]["ensemble"]
    assert entry["command"] == str(Path(sys.executable).with_name("ensemble-mcp"))
    assert entry["args"] == [
        "serve",
        f"{ROOT / 'examples/agents/server.py'}:server",
        "--transport",
        "stdio",
    ]
    module = stdio_snippet("my_pkg.tools:srv").config["mcpServers"]["ensemble"]
    assert module["args"][1] == "my_pkg.tools:srv"


async def test_the_stdio_form_lists_the_tools_of_the_server_it_names(tmp_path: Path) -> None:
    entry = stdio_snippet(str(ROOT / "examples/agents/server.py:server")).config["mcpServers"][
        "ensemble"
    ]
    # the SDK's stdio client, as an MCP client would start it: stdin stays open until answered;
    # its own state directory, so a server of the same name elsewhere on this machine is no bother
    env = {"ENSEMBLE_MCP_STATE_DIR": str(tmp_path / "state")}
    params = StdioServerParameters(
        command=entry["command"], args=entry["args"], cwd=tmp_path, env=env
    )
    with anyio.fail_after(60):
        async with Client(params) as client:
            tools = await client.list_tools()
    assert "flame_speed" in {tool.name for tool in tools.tools}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--client", "stdio"], "the stdio client needs the server to start: give --target"),
        (["--client", "cursor"], "the cursor client needs the server's URL: give --url"),
        ([], "nothing to configure: give --url, --target or both"),
        (["--url", "127.0.0.1:9276/mcp"], "url must start with http:// or https://"),
    ],
)
def test_config_without_what_a_client_needs_says_which_option_to_give(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", *argv]) == 2
    assert message in capsys.readouterr().err


def test_all_clients_means_those_the_given_url_and_target_can_serve() -> None:
    assert [s.client for s in snippets(["all"], url=URL)] == ["claude-code", "vscode", "cursor"]
    assert [s.client for s in snippets(["all"], target="m:s")] == ["stdio"]
    assert [s.client for s in snippets(["cursor", "all"], url=URL, target="m:s")] == [
        "cursor",
        "claude-code",
        "vscode",
        "stdio",
    ]
    with pytest.raises(ValueError, match="client must be one of"):
        http_snippet("stdio", URL)


def test_check_reports_a_port_where_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    assert main(["check", url]) == 1
    assert f"nothing accepts connections at {url}" in capsys.readouterr().err


def test_check_stops_waiting_when_the_server_process_has_exited(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    url = f"http://127.0.0.1:{free_port()}/mcp"
    assert main(["check", url, "--wait", "600", "--pid", str(gone.pid)]) == 1
    assert f"the server process {gone.pid} exited before it answered" in capsys.readouterr().err
