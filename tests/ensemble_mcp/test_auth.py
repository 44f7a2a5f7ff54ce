"""Bearer-token authentication over real streamable HTTP: uvicorn in a thread, the SDK client."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from core import SystemConfig
from core.errors import ConfigError
from ensemble_mcp import auth
from ensemble_mcp.auth import TOKEN_ENV, BearerAuth, token_from_env
from ensemble_mcp.server import Server
from tests.ensemble_mcp.conftest_mcp import add

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


def small_server(**kwargs: Any) -> Server:
    srv = Server("auth-test", system_config=SystemConfig(ncpus=1), **kwargs)
    srv.ensemble_tool(submit_tool=False)(add)
    return srv


@contextmanager
def serving(server: Server) -> Iterator[str]:
    """Serve ``server.streamable_http_app()`` (what ``run`` serves) on a free loopback port."""
    app = server.streamable_http_app()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until uvicorn accepts: no readiness poll
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=asyncio.run, args=(web.serve(sockets=[sock]),))
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        web.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def protected() -> Iterator[str]:
    with serving(small_server(auth_token=TOKEN)) as url:
        yield url


async def list_and_call(url: str, headers: dict[str, str]) -> tuple[set[str], Any]:
    timeout = httpx2.Timeout(30, read=60)
    with anyio.fail_after(60):
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("add", {"a": [1, 2, 5], "b": 10})
    return names, result


async def post_initialize(url: str, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        response: httpx2.Response = await http.post(
            url, json=INITIALIZE, headers={**MCP_HEADERS, **headers}
        )
    return response


# -- over HTTP ---------------------------------------------------------------------------------


async def test_a_request_without_the_header_gets_401_saying_what_is_missing(protected: str) -> None:
    response = await post_initialize(protected)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="ensemble-mcp"'
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32600,
            "message": "Unauthorized: missing Authorization header; send "
            f"'Authorization: Bearer <token>' with the server's token (${TOKEN_ENV})",
        },
    }


WRONG = "invalid bearer token"
NOT_BEARER = "the Authorization header is not 'Bearer <token>'"


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("Bearer wrong-token", WRONG),
        (f"Bearer {TOKEN}x", WRONG),
        (f"Bearer {TOKEN[:-1]}", WRONG),
        (f"Bearer  {TOKEN} extra", WRONG),
        (f"Basic {TOKEN}", NOT_BEARER),
        (TOKEN, NOT_BEARER),
        ("Bearer", NOT_BEARER),
    ],
)
async def test_a_wrong_token_or_scheme_gets_401_invalid_token(
    protected: str, header: str, problem: str
) -> None:
    response = await post_initialize(protected, Authorization=header)
    assert response.status_code == 401
    assert (
        response.headers["www-authenticate"] == 'Bearer realm="ensemble-mcp", error="invalid_token"'
    )
    assert response.json()["error"]["message"] == f"Unauthorized: {problem}"


async def test_the_sdk_client_without_the_token_fails_and_with_it_lists_and_calls(
    protected: str,
) -> None:
    with pytest.RaisesGroup(
        pytest.RaisesExc(MCPError, match="^Unauthorized: missing Authorization header"),
        flatten_subgroups=True,
    ):
        await list_and_call(protected, {})
    names, result = await list_and_call(protected, {"Authorization": f"Bearer {TOKEN}"})
    assert names == {"add"}
    assert not result.is_error
    assert [t["result"] for t in result.structured_content["tasks"]] == [11, 12, 15]


async def test_the_sdks_host_check_still_answers_421_behind_the_token(protected: str) -> None:
    response = await post_initialize(
        protected, Authorization=f"Bearer {TOKEN}", Host="evil.example:80"
    )
    assert response.status_code == 421
    good = await post_initialize(protected, Authorization=f"Bearer {TOKEN}")
    assert good.status_code == 200


async def test_without_a_token_the_server_answers_requests_without_a_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    server = small_server()
    assert not server.requires_token
    with serving(server) as url:
        names, result = await list_and_call(url, {})
    assert names == {"add"}
    assert [t["result"] for t in result.structured_content["tasks"]] == [11, 12, 15]


# -- configuration -----------------------------------------------------------------------------


def test_the_token_is_read_from_the_environment_when_the_server_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "_taken", None)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    from_env = Server("env")
    monkeypatch.setenv(TOKEN_ENV, "")
    assert from_env.requires_token
    assert not Server("empty").requires_token
    assert Server("explicit", auth_token=TOKEN).requires_token


def test_a_token_that_cannot_be_a_bearer_token_is_refused_naming_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "_taken", None)
    with pytest.raises(ValueError, match=r"^auth_token is empty; make one with: python -c"):
        Server("x", auth_token="")
    with pytest.raises(ValueError, match=r"^auth_token may hold only letters, digits"):
        Server("x", auth_token="two words")
    with pytest.raises(ValueError, match=rf"^{TOKEN_ENV} may hold only letters, digits"):
        token_from_env({TOKEN_ENV: "caf\u00e9"})
    monkeypatch.setenv(TOKEN_ENV, "new\nline")
    with pytest.raises(ValueError, match=rf"^{TOKEN_ENV} may hold"):
        Server("x")


def test_a_non_loopback_address_without_a_token_is_refused_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    fix = (
        rf"export {TOKEN_ENV}=.*Server\(auth_token=\.\.\.\).*"
        r"Server\(allow_unauthenticated=True\) or 'ensemble-mcp serve --allow-unauthenticated'"
    )
    with pytest.raises(
        ConfigError, match=rf"^refusing to serve on 0\.0\.0\.0 without a token.*{fix}"
    ):
        Server("open", host="0.0.0.0")
    with pytest.raises(ConfigError, match=rf"^refusing to serve on 192\.0\.2\.1 without.*{fix}"):
        small_server().run("streamable-http", host="192.0.2.1", port=9)
    # Opting out is explicit; then it binds (192.0.2.1, TEST-NET-1, is on no interface: the
    # bind fails, so nothing is ever exposed).
    with pytest.raises(SystemExit):
        small_server().run("streamable-http", host="192.0.2.1", port=9, allow_unauthenticated=True)
    assert Server("ok", host="0.0.0.0", allow_unauthenticated=True).allow_unauthenticated
    assert Server("ok", host="0.0.0.0", auth_token=TOKEN).requires_token


# -- the middleware on its own (ASGI scopes no HTTP client here can send) ----------------------


async def test_lifespan_passes_and_a_websocket_without_the_token_is_closed() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {}

    guard = BearerAuth(app, TOKEN)
    await guard({"type": "lifespan"}, receive, send)
    await guard({"type": "websocket", "headers": []}, receive, send)
    await guard(
        {"type": "websocket", "headers": [(b"authorization", f"bearer {TOKEN}".encode())]},
        receive,
        send,
    )
    assert seen == ["lifespan", "websocket"]
    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1008)]
