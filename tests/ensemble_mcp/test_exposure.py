"""Safe network defaults, over real HTTP and real processes.

The token leaves the environment before any worker starts (tasks print theirs), a non-loopback
bind needs a token, and the Host/Origin checks hold on a 0.0.0.0 bind (reached via 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from core import SystemConfig
from ensemble_mcp import auth
from ensemble_mcp.auth import TOKEN_ENV, default_hosts, transport_security
from ensemble_mcp.serve import free_port
from ensemble_mcp.server import Server
from tests.conftest import pids_with_env, wait_until_gone
from tests.ensemble_mcp.conftest_mcp import add
from tests.ensemble_mcp.durable_server import ROOT, serve_argv, server_env, start

TOKEN = secrets.token_urlsafe(32)
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def _forget_taken_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_taken", None)


# -- the token and the environment ---------------------------------------------------------------


def test_the_token_leaves_the_environment_once_read_and_later_servers_still_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    first = Server("first")
    assert TOKEN_ENV not in os.environ
    assert first.requires_token and first._auth_token == TOKEN
    second = Server("second")  # built later in the same process (a module with two servers)
    assert second._auth_token == TOKEN
    explicit = Server("explicit", auth_token="other-token")
    assert explicit._auth_token == "other-token"
    monkeypatch.setenv(TOKEN_ENV, "")  # setting the variable again replaces what was taken
    assert not Server("none").requires_token and TOKEN_ENV not in os.environ


def task_outputs(result: Any) -> str:
    assert not result.is_error, result.content[0].text
    return "\n".join(str(t.get("result")) for t in result.structured_content["tasks"])


def assert_no_token_in_processes(mark: str) -> None:
    """No process of the run (workers, tasks) has the token in its environment or argv."""
    pids = pids_with_env(f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}")
    assert pids, "the launcher's processes carry the mark"
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"ensemble_mcp.cli" in cmdline:
            continue  # the server itself: its initial environment is its own (mode 0400)
        assert TOKEN.encode() not in environ and TOKEN_ENV.encode() not in environ, pid
        assert TOKEN.encode() not in cmdline, pid


@pytest.mark.slow
async def test_tasks_of_an_http_server_never_see_its_token(tmp_path: Path) -> None:
    mark = f"token-{uuid.uuid4().hex}"
    process, url = start(mark, tmp_path / "state", ENSEMBLE_MCP_TOKEN=TOKEN)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with anyio.fail_after(60):
            async with (
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                command = task_outputs(await client.call_tool("env_cmd", {}))
                python = task_outputs(await client.call_tool("environment", {"x": [1]}))
                assert_no_token_in_processes(mark)
        assert f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}" in command  # it is the task's environment
        assert f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}" in python
        for output in (command, python):
            assert TOKEN not in output and TOKEN_ENV not in output
    finally:
        process.send_signal(2)
        _, stderr = process.communicate(timeout=30)
    assert TOKEN.encode() not in stderr  # nor in its log
    assert wait_until_gone(f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}", timeout_s=15) == []


@pytest.mark.slow
async def test_tasks_of_a_stdio_server_never_see_the_token_in_its_environment(
    tmp_path: Path,
) -> None:
    mark = f"token-stdio-{uuid.uuid4().hex}"
    argv = serve_argv("--transport", "stdio")
    env = server_env(mark, tmp_path / "state", ENSEMBLE_MCP_TOKEN=TOKEN)
    params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=str(ROOT), env=env)
    with anyio.fail_after(60):
        async with Client(params) as client:
            command = task_outputs(await client.call_tool("env_cmd", {}))
            assert_no_token_in_processes(mark)
    assert f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}" in command
    assert TOKEN not in command and TOKEN_ENV not in command
    assert wait_until_gone(f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}", timeout_s=15) == []


# -- binding: a non-loopback address needs a token ------------------------------------------------


def serve_and_fail(tmp_path: Path, *argv: str, **env: str) -> tuple[int, str]:
    process = subprocess.run(
        serve_argv(*argv),
        cwd=ROOT,
        env=server_env("refused", tmp_path / "state", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return process.returncode, process.stderr


@pytest.mark.slow
def test_serve_refuses_a_public_bind_without_a_token_naming_the_fix(tmp_path: Path) -> None:
    code, stderr = serve_and_fail(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()))
    assert code == 2
    assert stderr.startswith("ensemble-mcp serve: refusing to serve on 0.0.0.0 without a token")
    assert "export ENSEMBLE_MCP_TOKEN=" in stderr and "--allow-unauthenticated" in stderr
    bad = "not a token; " + TOKEN
    code, stderr = serve_and_fail(tmp_path, "--port", str(free_port()), ENSEMBLE_MCP_TOKEN=bad)
    assert code == 2 and "ENSEMBLE_MCP_TOKEN may hold only letters" in stderr
    assert TOKEN not in stderr  # an error never shows the value


# -- Host/Origin checks on every bind ----------------------------------------------------------


@contextmanager
def serving(server: Server, host: str) -> Iterator[int]:
    """Serve ``server.streamable_http_app(host=host)`` on ``host`` (a free port); the port."""
    app = server.streamable_http_app(host=host)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen()
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=asyncio.run, args=(web.serve(sockets=[sock]),))
    thread.start()
    try:
        yield port
    finally:
        web.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive()


async def post(port: int, **headers: str) -> int:
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"http://127.0.0.1:{port}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers}
        )
    return int(response.status_code)


def small_server(tmp_path: Path, **kwargs: Any) -> Server:
    srv = Server(
        "exposure", system_config=SystemConfig(ncpus=1), state_dir=tmp_path / "s", **kwargs
    )
    srv.ensemble_tool(submit_tool=False)(add)
    return srv


async def test_a_0000_bind_checks_host_and_origin(tmp_path: Path) -> None:
    auth_header = {"Authorization": f"Bearer {TOKEN}"}
    with serving(small_server(tmp_path, host="0.0.0.0", auth_token=TOKEN), "0.0.0.0") as port:
        assert await post(port, **auth_header) == 200
        assert await post(port, **auth_header, Host="evil.example") == 421
        assert await post(port, **auth_header, Host=f"evil.example:{port}") == 421
        assert await post(port, **auth_header, Origin="http://evil.example") == 403
        assert await post(port, **auth_header, Origin=f"http://127.0.0.1:{port}") == 200
        assert await post(port, **auth_header, Host=f"{socket.gethostname()}:{port}") == 200
        assert await post(port, Host="evil.example") == 401  # the token is checked first


async def test_allowed_hosts_replace_the_default_and_apply_without_a_token(tmp_path: Path) -> None:
    srv = small_server(
        tmp_path,
        host="0.0.0.0",
        allow_unauthenticated=True,
        allowed_hosts=["proxy.example.org"],
        allowed_origins=["https://app.example.org"],
    )
    with serving(srv, "0.0.0.0") as port:
        assert await post(port, Host="proxy.example.org") == 200
        assert await post(port, Host="proxy.example.org:443") == 200
        assert await post(port) == 421  # 127.0.0.1 is no longer in the list
        assert await post(port, Host="evil.example") == 421
        assert await post(port, Host="proxy.example.org", Origin="https://app.example.org") == 200
        assert await post(port, Host="proxy.example.org", Origin="https://evil.example") == 403


@pytest.mark.slow
async def test_serve_flags_set_the_allowed_hosts(tmp_path: Path) -> None:
    mark = f"hosts-{uuid.uuid4().hex}"
    port = free_port()
    argv = ("--host", "0.0.0.0", "--allowed-host", "proxy.example.org")
    process, _ = start(mark, tmp_path / "state", *argv, port=port, ENSEMBLE_MCP_TOKEN=TOKEN)
    try:
        auth_header = {"Authorization": f"Bearer {TOKEN}"}
        assert await post(port, **auth_header, Host="proxy.example.org:8443") == 200
        assert await post(port, **auth_header) == 421
    finally:
        process.send_signal(2)
        process.communicate(timeout=30)
    assert wait_until_gone(f"ENSEMBLE_MCP_TEST_TASK_MARK={mark}", timeout_s=15) == []


def test_default_hosts_and_bad_entries() -> None:
    assert default_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    name = socket.gethostname()
    assert default_hosts("10.1.2.3")[:4] == ["127.0.0.1", "localhost", "[::1]", "10.1.2.3"]
    assert name in default_hosts("0.0.0.0") and "0.0.0.0" not in default_hosts("0.0.0.0")
    assert "[fd00::1]" in default_hosts("fd00::1")
    settings = transport_security("127.0.0.1", ["a.example", "b.example:8443"], None)
    assert settings.enable_dns_rebinding_protection
    assert settings.allowed_hosts == ["a.example", "a.example:*", "b.example:8443"]
    assert "https://b.example" in settings.allowed_origins
    with pytest.raises(ValueError, match=r"^allowed_hosts: 'evil.example/x' is not a host"):
        Server("bad", allowed_hosts=["evil.example/x"])
    with pytest.raises(ValueError, match=r"^allowed_origins: 'app.example' is not an origin"):
        Server("bad", allowed_origins=["app.example"])


def test_the_sse_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="does not serve the deprecated 'sse' transport"):
        Server("sse").run("sse")
