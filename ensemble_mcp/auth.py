"""Bearer-token authentication for the streamable-HTTP app: one small pure-ASGI middleware.

A 127.0.0.1 port on a shared login node is reachable by every local user (and by anyone who can
reach the forwarded port of an SSH tunnel), so an HTTP server that has a token requires
``Authorization: Bearer <token>`` on every request. The token is a shared secret, compared in
constant time; stdio needs none (the client that spawns the server is its only peer).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "ENSEMBLE_MCP_TOKEN"  # noqa: S105 - a variable name, not a secret
# RFC 6750 b64token: what fits in a header unquoted, e.g. secrets.token_urlsafe(32).
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MISSING = (
    f"missing Authorization header; send 'Authorization: Bearer <token>' with the "
    f"server's token (${TOKEN_ENV})"
)
_INVALID_REQUEST = -32600
_HOW_TO_MAKE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_token(token: str, field: str = "auth_token") -> str:
    """Return ``token`` if it can be sent as a bearer token.

    Raises:
        ValueError: it is empty or has characters other than letters, digits and ``-._~+/``
            (``=`` only at the end); the message names ``field``.
    """
    if not _TOKEN_CHARS.fullmatch(token):
        problem = (
            "is empty" if not token else "may hold only letters, digits, -._~+/ and trailing ="
        )
        raise ValueError(f"{field} {problem}; make one with: {_HOW_TO_MAKE}")
    return token


def token_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """The token in ``$ENSEMBLE_MCP_TOKEN``, or None when it is unset or empty.

    Raises:
        ValueError: the variable holds characters a bearer token cannot have.
    """
    value = environ.get(TOKEN_ENV, "")
    return check_token(value, TOKEN_ENV) if value else None


class BearerAuth:
    """ASGI middleware: a request without ``Authorization: Bearer <token>`` gets 401.

    HTTP and WebSocket requests are checked; lifespan events pass through untouched.

    Args:
        app: the application to protect.
        token: the token every request must carry.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = check_token(token).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on if it carries the token; answer 401 otherwise."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem})
        else:
            await _send_401(send, problem, has_credentials=problem != _MISSING)

    def _problem(self, scope: Scope) -> str | None:
        """Why the request is refused, or None when it carries the token."""
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if not values:
            return _MISSING
        scheme, _, credentials = values[0].partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            return "the Authorization header is not 'Bearer <token>'"
        if len(values) > 1 or not hmac.compare_digest(credentials.strip(), self._token):
            return "invalid bearer token"
        return None


async def _send_401(send: Send, problem: str, *, has_credentials: bool) -> None:
    # RFC 6750 3.1: no error code when the request carried no credentials at all.
    challenge = 'Bearer realm="ensemble-mcp"' + (
        ', error="invalid_token"' if has_credentials else ""
    )
    # A JSON-RPC error, as the SDK's own HTTP errors are: its client shows the message.
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": _INVALID_REQUEST, "message": f"Unauthorized: {problem}"},
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
