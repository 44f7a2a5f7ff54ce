"""The job scripts of examples/hpc/ and ``ensemble-mcp connect``, end to end on this machine.

The scripts run under bash with the scheduler's variables set by hand (no PBS or Slurm here); the
server they start, the files they write, the MCP client, sshd and the MCP Inspector are all real.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from ensemble_mcp.check import ServerCheckError, check_server
from tests.conftest import pids_with_env, processes_holding, wait_until_gone

from .jobscript import (
    ROOT,
    SCRIPTS,
    THIS_NODE,
    connection_file_of,
    mode,
    pbs_env,
    slurm_env,
    start_job,
)
from .sshd import Sshd

pytestmark = pytest.mark.slow
INSPECTOR = ROOT / ".node" / "node_modules" / ".bin" / "mcp-inspector"
WAIT_S = 60.0


async def list_and_call(url: str, token: str) -> tuple[list[str], Any]:
    """What an MCP client configured with ``url`` and the bearer ``token`` sees and gets."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        names = [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("flame_speed", {"pressure": [1, 4], "temperature": 298})
    return names, result


@pytest.mark.parametrize(
    ("script", "scheduler", "job_id"),
    [
        pytest.param("pbs_server.sh", "pbs", "4242.pbs01", id="pbs"),
        pytest.param("slurm_server.sh", "slurm", "777", id="slurm"),
    ],
)
def test_a_job_script_serves_the_example_to_a_client_holding_the_token_file_and_cleans_up(
    home: Path, tmp_path: Path, mark: str, script: str, scheduler: str, job_id: str
) -> None:
    # A one-node job on this host: the server's launcher reads the same variables, and other
    # nodes would have to exist. ``mark`` is inherited by the job and every process it starts.
    env = pbs_env(tmp_path, job_id) if scheduler == "pbs" else slurm_env(THIS_NODE, job_id)
    name, _, value = mark.partition("=")
    job = start_job(script, home, env, **{name: value})
    try:
        path = connection_file_of(job)
        assert path == home / ".ensemble-mcp" / "jobs" / job_id / "connection.json"
        info = json.loads(path.read_text())
        port = info["port"]
        assert info["version"] == 1
        assert (info["scheduler"], info["job_id"], info["host"]) == (
            scheduler,
            job_id,
            THIS_NODE,
        )
        assert info["url"] == f"http://127.0.0.1:{port}/mcp"
        assert info["target"] == f"{ROOT / 'examples/agents/server.py'}:server"
        assert info["pid"] == job.process.pid  # the script exec'd the server
        assert len(pids_with_env(mark)) > 1  # the server and its launcher's workers
        token_file = Path(info["token_file"])
        assert token_file.parent == path.parent
        assert (mode(path), mode(token_file), mode(path.parent)) == (0o600, 0o600, 0o700)
        token = token_file.read_text().strip()
        assert len(token) >= 40
        assert token not in path.read_text()
        # Not on any command line, nor in any process's environment (the server took it in).
        assert processes_holding(token) == []

        names, result = anyio.run(list_and_call, info["url"], token)
        assert {"flame_speed", "flame_speed_submit", "ensemble_status"} <= set(names)
        assert not result.is_error
        assert [t["result"] for t in result.structured_content["tasks"]] == [0.38, 0.19]
        with pytest.raises(ServerCheckError, match="Unauthorized"):
            check_server(info["url"], None)
    finally:
        code = job.stop()
    assert code == 128 + signal.SIGTERM
    assert "server stopped, connection files removed" in job.output
    assert token not in job.output
    assert not path.exists() and not token_file.exists() and not path.parent.exists()
    assert wait_until_gone(mark) == []  # the server and its workers


def test_a_job_whose_server_cannot_start_says_so_exits_1_and_leaves_no_files(
    home: Path, tmp_path: Path
) -> None:
    job = start_job(
        "pbs_server.sh",
        home,
        pbs_env(tmp_path),
        ENSEMBLE_MCP_TARGET="no/such/server.py:server",
    )
    assert job.process.wait(timeout=WAIT_S * 2) == 1
    job.read_until("the server did not start")
    assert "no such file: no/such/server.py" in job.output
    assert "ensemble-mcp connect" not in job.output
    assert list((home / ".ensemble-mcp" / "jobs").iterdir()) == []


@pytest.mark.parametrize("script", ["pbs_server.sh", "slurm_server.sh"])
def test_a_job_script_run_outside_a_job_says_how_to_submit_it(home: Path, script: str) -> None:
    job = start_job(script, home, {})
    assert job.process.wait(timeout=WAIT_S) == 2
    job.read_until(
        "not inside a batch job: neither PBS_JOBID nor SLURM_JOB_ID is set; submit the job "
        "script with qsub (PBS) or sbatch (Slurm)"
    )
    assert not (home / ".ensemble-mcp").exists()


def test_the_pbs_and_slurm_scripts_differ_only_in_how_they_find_the_job() -> None:
    def shared_part(name: str) -> str:
        text = (SCRIPTS / name).read_text()
        return text[text.index("# 3. Serve") :]

    assert shared_part("pbs_server.sh") == shared_part("slurm_server.sh")
    assert shared_part("pbs_server.sh").splitlines()[-1] == (
        'exec ensemble-mcp job "${ENSEMBLE_MCP_TARGET:-examples/agents/server.py:server}"'
    )


# -- ensemble-mcp connect ------------------------------------------------------------------


class Connect:
    """``ensemble-mcp connect`` in a subprocess, its stdout read line by line."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ensemble_mcp.cli", "connect", *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read_until(self, needle: str) -> str:
        """All it printed up to and including the line holding ``needle``."""
        seen = []
        while True:
            line = self.lines.get(timeout=WAIT_S)
            if line is None:
                assert self.process.stderr is not None
                raise AssertionError(f"connect ended: {''.join(seen)}{self.process.stderr.read()}")
            seen.append(line)
            if needle in line:
                return "".join(seen)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=WAIT_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.communicate()


def snippet(printed: str, title: str) -> dict[str, Any]:
    """The JSON printed under the ``# <title>`` comment line."""
    after = printed[printed.index(f"# {title}") :]
    start = after.index("{")
    value, _ = json.JSONDecoder().raw_decode(after[start:])
    assert isinstance(value, dict)
    return value


def ssh_options(sshd: Sshd) -> list[str]:
    return ["-i", str(sshd.user_key), "--known-hosts", str(sshd.known_hosts), "-p", str(sshd.port)]


@pytest.mark.ssh
@pytest.mark.node
@pytest.mark.skipif(
    not INSPECTOR.exists(), reason="MCP Inspector not installed: run scripts/install-inspector.sh"
)
def test_connect_tunnels_to_the_job_and_prints_a_config_the_inspector_uses_to_call_a_tool(
    home: Path, tmp_path: Path, sshd: Sshd
) -> None:
    # The node's name reaches the test sshd through ~/.ssh/config, as an alias would on a cluster.
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(
        f"Host {THIS_NODE}\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
        f"  IdentityFile {sshd.user_key}\n  UserKnownHostsFile {sshd.known_hosts}\n"
    )
    job = start_job("pbs_server.sh", home, pbs_env(tmp_path))
    try:
        connection_file = connection_file_of(job)
        connect = Connect([str(connection_file), "--local-port", "0"])
        try:
            printed = connect.read_until("Ctrl-C closes the tunnel")
            token_file = json.loads(connection_file.read_text())["token_file"]
            token = Path(token_file).read_text().strip()
            assert token not in printed
            assert f'export ENSEMBLE_MCP_TOKEN="$(cat {token_file})"' in printed
            assert "the server answers through it: 7 tools (flame_speed," in printed
            claude = snippet(printed, "Claude Code")
            entry = claude["mcpServers"]["ensemble"]
            local_port = int(entry["url"].rsplit(":", 1)[1].split("/")[0])
            assert entry["url"] == f"http://127.0.0.1:{local_port}/mcp"
            assert entry["headers"] == {"Authorization": "Bearer ${ENSEMBLE_MCP_TOKEN}"}
            vscode = snippet(printed, "VS Code")
            assert vscode["inputs"][0]["password"] is True
            assert vscode["servers"]["ensemble"]["headers"]["Authorization"] == (
                "Bearer ${input:ensemble-mcp-token}"
            )
            assert snippet(printed, "Cursor")["mcpServers"]["ensemble"]["headers"] == {
                "Authorization": "Bearer ${env:ENSEMBLE_MCP_TOKEN}"
            }
            stdio = snippet(printed, "stdio")["mcpServers"]["ensemble"]
            assert stdio["args"][-3:] == [
                f"{ROOT / 'examples/agents/server.py'}:server",
                "--transport",
                "stdio",
            ]

            # The Inspector reads the Claude Code file; Claude Code expands ${VAR} in headers
            # and the Inspector does not, so the variable is expanded here as Claude Code would.
            config = tmp_path / "mcp.json"
            config.write_text(json.dumps(claude).replace("${ENSEMBLE_MCP_TOKEN}", token))
            config.chmod(0o600)
            done = subprocess.run(
                [
                    str(INSPECTOR),
                    "--cli",
                    "--config",
                    str(config),
                    "--server",
                    "ensemble",
                    "--format",
                    "json",
                    "-q",
                    "--method",
                    "tools/call",
                    "--tool-name",
                    "flame_speed",
                    "--tool-args-json",
                    json.dumps({"pressure": [1, 4], "temperature": 298}),
                ],
                env={**os.environ, "PATH": f"{INSPECTOR.parent}{os.pathsep}{os.environ['PATH']}"},
                capture_output=True,
                text=True,
                timeout=WAIT_S,
            )
            assert done.returncode == 0, done.stderr
            result = json.loads(done.stdout)["result"]
            assert result["isError"] is False
            assert [t["result"] for t in result["structuredContent"]["tasks"]] == [0.38, 0.19]
        finally:
            assert connect.stop() == 0
        with pytest.raises(ConnectionRefusedError):  # the tunnel is closed
            socket.create_connection(("127.0.0.1", local_port), timeout=WAIT_S)
    finally:
        job.stop()


def connection_file(tmp_path: Path, port: int, token_mode: int = 0o600) -> Path:
    """A connection file as a job writes it, for a server on 127.0.0.1:``port``."""
    token_file = tmp_path / "token"
    token_file.write_text("a-token-of-sorts\n")
    token_file.chmod(token_mode)
    path = tmp_path / "connection.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "host": "127.0.0.1",
                "port": port,
                "url": f"http://127.0.0.1:{port}/mcp",
                "token_file": str(token_file),
            }
        )
    )
    return path


def connect_main(argv: list[str]) -> int:
    from ensemble_mcp.cli import main

    return main(["connect", *argv])


def test_connect_without_the_connection_file_says_when_the_job_writes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert connect_main([str(tmp_path / "connection.json")]) == 1
    assert "the job writes it once its server answers" in capsys.readouterr().err


def test_connect_refuses_a_token_file_other_users_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert connect_main([str(connection_file(tmp_path, 9, token_mode=0o644))]) == 1
    assert "can be read by other users (mode 0644)" in capsys.readouterr().err


def test_connect_names_the_field_a_connection_file_gets_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = connection_file(tmp_path, 9)
    path.write_text(path.read_text().replace('"port": 9', '"port": "9"'))
    assert connect_main([str(path)]) == 1
    assert "field 'port' must be a int, got '9'" in capsys.readouterr().err


@pytest.mark.ssh
def test_connect_to_a_node_with_an_unknown_host_key_fails_and_says_how_to_trust_it(
    home: Path, tmp_path: Path, sshd: Sshd, echo_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    sshd.known_hosts.write_text("")
    path = connection_file(tmp_path, echo_port)
    code = connect_main([str(path), "--local-port", "0", *ssh_options(sshd)])
    assert code == 1
    err = capsys.readouterr().err
    assert "unknown host key" in err and "--accept-new-host-key" in err


@pytest.mark.ssh
def test_connect_reports_a_port_that_is_not_an_mcp_server_and_closes_the_tunnel(
    home: Path, tmp_path: Path, sshd: Sshd, echo_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    local_port = free.getsockname()[1]
    free.close()
    path = connection_file(tmp_path, echo_port)
    code = connect_main([str(path), "--local-port", str(local_port), *ssh_options(sshd)])
    assert code == 1
    assert "did not answer as an MCP server" in capsys.readouterr().err
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", local_port), timeout=WAIT_S)
