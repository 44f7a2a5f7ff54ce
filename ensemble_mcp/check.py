"""Does an MCP server answer? One authenticated ``tools/list``, optionally retried until it does.

``ensemble-mcp job`` waits with it before it writes the connection file (``wait_for_server_async``,
in the event loop that serves), ``ensemble-mcp connect`` checks through its tunnel and
``ensemble-mcp check`` is the probe on its own: a real MCP request with the bearer token, so
"ready" means the server listens, speaks MCP and accepts the token.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from ensemble_mcp.auth import TOKEN_ENV, check_token

__all__ = (
    "ServerCheckError",
    "check_server",
    "check_server_async",
    "read_token_file",
    "wait_for_server",
    "wait_for_server_async",
)

_RETRY_S = 0.25


class ServerCheckError(Exception):
    """The server did not answer as an MCP server with this token; the message says why."""


def check_server(url: str, token: str | None, *, timeout_s: float = 10.0) -> list[str]:
    """List the tools of the MCP server at ``url``, sending ``token`` as a bearer token.

    Returns:
        The names of its tools.

    Raises:
        ServerCheckError: nothing listens there, the token was refused, or the answer was
            not MCP.
    """
    return anyio.run(functools.partial(check_server_async, url, token, timeout_s=timeout_s))


async def check_server_async(url: str, token: str | None, *, timeout_s: float = 10.0) -> list[str]:
    """``check_server`` in a running event loop (which may be the one serving ``url``)."""
    try:
        return await _list_tools(url, token, timeout_s)
    except Exception as exc:
        raise _explain(url, exc) from exc


def wait_for_server(
    url: str,
    token: str | None,
    *,
    wait_s: float,
    pid: int | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Retry ``check_server`` while nothing listens at ``url``, for at most ``wait_s`` seconds.

    A refused token or a non-MCP answer fails at once; so does the process ``pid`` (the server)
    exiting first.

    Returns:
        The names of its tools.

    Raises:
        ServerCheckError: it did not answer in time, the process exited, or the check failed.
    """
    wait = functools.partial(
        wait_for_server_async, url, token, wait_s=wait_s, pid=pid, timeout_s=timeout_s
    )
    return anyio.run(wait)


async def wait_for_server_async(
    url: str,
    token: str | None,
    *,
    wait_s: float,
    pid: int | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """``wait_for_server`` in a running event loop (which may be the one serving ``url``)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await check_server_async(url, token, timeout_s=timeout_s)
        except _NotListening as exc:
            if pid is not None and not _alive(pid):
                raise ServerCheckError(
                    f"the server process {pid} exited before it answered at {url}"
                ) from exc
            if time.monotonic() >= deadline:
                raise ServerCheckError(
                    f"no MCP server answered at {url} within {wait_s:g} s: {exc}"
                ) from exc
        await anyio.sleep(_RETRY_S)  # polling a port that is not open yet: no event exists


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The bearer token stored in ``path``, which only its owner may read.

    Raises:
        ServerCheckError: the file is missing, readable by others, or holds no valid token.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text().strip()
    except OSError as exc:
        raise ServerCheckError(f"cannot read the token file {file}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ServerCheckError(
            f"the token file {file} can be read by other users (mode {mode & 0o777:04o}); "
            f"the token is no longer secret: end the job and start a new one "
            f"(the job scripts write it with mode 0600)"
        )
    try:
        return check_token(text, f"the token in {file}")
    except ValueError as exc:
        raise ServerCheckError(str(exc)) from exc


class _NotListening(ServerCheckError):
    """Nothing accepted the connection (yet): worth retrying."""


async def _list_tools(url: str, token: str | None, timeout_s: float) -> list[str]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with anyio.fail_after(timeout_s):
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout_s)) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            return [tool.name for tool in (await client.list_tools()).tools]


def _explain(url: str, exc: BaseException) -> ServerCheckError:
    import httpx2
    from mcp import MCPError

    leaf = exc
    while inner := getattr(leaf, "exceptions", ()):
        leaf = inner[0]
    if isinstance(leaf, httpx2.ConnectError):
        return _NotListening(f"nothing accepts connections at {url} ({leaf})")
    if isinstance(leaf, MCPError):
        return ServerCheckError(f"the server at {url} refused the request: {leaf}")
    if isinstance(leaf, TimeoutError):
        return ServerCheckError(f"the server at {url} accepted but did not answer in time")
    return ServerCheckError(f"the server at {url} did not answer as an MCP server: {leaf!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def add_check_command(subparsers: Any) -> None:
    """Register ``check`` on an argparse sub-parser set."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="check that an MCP server answers (a readiness probe for job scripts)",
        description="List the tools of the MCP server at URL with an authenticated request. "
        f"The token comes from --token-file or ${TOKEN_ENV}. Exit code 0 when it answers.",
    )
    parser.add_argument("url", help="MCP endpoint, e.g. http://127.0.0.1:9276/mcp")
    parser.add_argument("--token-file", help="file holding the bearer token (mode 0600)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep trying while nothing listens, up to SECONDS (default: try once)",
    )
    parser.add_argument("--pid", type=int, help="the server's process id: stop waiting if it exits")
    parser.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Run the check for parsed ``args``; print the tools; return the exit code."""
    try:
        if args.token_file:
            token: str | None = read_token_file(args.token_file)
        else:
            token = os.environ.get(TOKEN_ENV) or None
        names = wait_for_server(args.url, token, wait_s=max(args.wait, 0.0), pid=args.pid)
    except ServerCheckError as exc:
        sys.stderr.write(f"ensemble-mcp check: {exc}\n")
        return 1
    sys.stdout.write(f"{args.url} answers: {len(names)} tools ({', '.join(names)})\n")
    return 0
