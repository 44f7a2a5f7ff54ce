"""Who may reach the server: bearer tokens, the bind-address rule, and Host/Origin checks.

A 127.0.0.1 port on a shared login node is reachable by every local user (and by anyone who can
reach the forwarded port of an SSH tunnel), so an HTTP server that has a token requires
``Authorization: Bearer <token>`` on every request (``BearerAuth``, one small pure-ASGI
middleware). The token is a shared secret, compared in constant time; stdio needs none (the
client that spawns the server is its only peer).

- ``token_from_env`` takes the token out of the process environment: workers and tasks, which
  inherit it, never see it.
- ``check_exposure``: serving a non-loopback address without a token is refused, unless the
  caller opts out explicitly (``allow_unauthenticated``, behind an authenticating proxy).
- ``transport_security``: the SDK's DNS-rebinding protection (``Host`` -> 421, ``Origin`` ->
  403) for every bind address, not only loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import socket
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import ConfigError

if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings

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


_taken: str | None = None
"""The token this process took out of its environment (see ``token_from_env``)."""


def token_from_env(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The token in ``$ENSEMBLE_MCP_TOKEN`` (None when unset or empty), taken out of it.

    The variable is removed from the environment as it is read, so that no process started
    later (workers, tasks, anything a task starts) inherits it. For ``os.environ`` (the
    default) the token is remembered: later reads in this process, after the variable is gone,
    return it too; setting the variable again replaces it.

    Raises:
        ValueError: the variable holds characters a bearer token cannot have.
    """
    global _taken
    env = os.environ if environ is None else environ
    if TOKEN_ENV not in env:
        return _taken if environ is None else None
    value = env.pop(TOKEN_ENV)
    token = check_token(value, TOKEN_ENV) if value else None
    if environ is None:
        _taken = token
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches only this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, has_token: bool, allowed: bool) -> None:
    """Refuse to serve a non-loopback ``host`` without a token, unless ``allowed``.

    Raises:
        ConfigError: the message says how to set a token, and how to opt out.
    """
    if has_token or allowed or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve on {host or 'every address'} without a token: anyone who can "
        f"reach that address could run this server's tools. Set one: export {TOKEN_ENV}="
        f'"$({_HOW_TO_MAKE})" before starting the server (or pass Server(auth_token=...)); '
        "clients then send 'Authorization: Bearer <token>'. Only if something in front of "
        "the server authenticates every request (a site proxy), opt out with "
        "Server(allow_unauthenticated=True) or 'ensemble-mcp serve --allow-unauthenticated'"
    )


_HOST_ENTRY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:(\d{1,5}|\*))?")
_ORIGIN_ENTRY = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:(\d{1,5}|\*))?")
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")  # noqa: S104 - names, not a bind


def default_hosts(host: str) -> list[str]:
    """The host names a server bound to ``host`` answers to by default.

    Loopback names always; for a non-loopback bind also the bound address (unless it is every
    address) and this machine's name.
    """
    names = ["127.0.0.1", "localhost", "[::1]"]
    if not is_loopback(host):
        if host not in _ANY_ADDRESS:
            names.append(_bracketed(host))
        full = socket.gethostname()
        names += [full, full.split(".")[0]]
    return list(dict.fromkeys(names))


def transport_security(
    host: str, allowed_hosts: Sequence[str] | None, allowed_origins: Sequence[str] | None
) -> TransportSecuritySettings:
    """The SDK's Host/Origin checks (DNS-rebinding protection) for a server bound to ``host``.

    ``allowed_hosts`` replaces the default (``default_hosts``); a name without a port matches
    any port. ``allowed_origins`` defaults to ``http://`` and ``https://`` with each allowed
    host name; an origin without a port matches any port too.

    Raises:
        ValueError: an entry that is not a host name (or ``[IPv6]``) with an optional
            ``:port`` or ``:*``, or an origin that is not ``http(s)://`` and such a host; the
            message names the setting.
    """
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = default_hosts(host) if allowed_hosts is None else list(allowed_hosts)
    for entry in hosts:
        if not _HOST_ENTRY.fullmatch(entry):
            raise ValueError(
                f"allowed_hosts: {entry!r} is not a host name or address with an optional "
                "':port' or ':*' (an IPv6 address goes in brackets: '[::1]')"
            )
    if allowed_origins is None:
        names = [_HOST_ENTRY.fullmatch(h).group(1) for h in hosts]  # type: ignore[union-attr]
        origins = [f"{s}://{n}" for n in dict.fromkeys(names) for s in ("http", "https")]
    else:
        origins = list(allowed_origins)
        for entry in origins:
            if not _ORIGIN_ENTRY.fullmatch(entry):
                raise ValueError(
                    f"allowed_origins: {entry!r} is not an origin: http:// or https://, a "
                    "host name or address, and an optional ':port' or ':*'"
                )
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=_any_port(hosts),
        allowed_origins=_any_port(origins),
    )


def _any_port(entries: list[str]) -> list[str]:
    """Each entry; one without a port also as ``entry:*`` (the SDK's any-port form)."""
    out: list[str] = []
    for entry in entries:
        out.append(entry)
        if not re.search(r":(\d+|\*)$", entry):
            out.append(f"{entry}:*")
    return list(dict.fromkeys(out))


def _bracketed(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


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
