"""Paste-ready MCP client configuration for a server URL (or a server to start over stdio).

Each client has its own file and keys; the token never appears in clear, only as the reference each
client expands (an environment variable, or a VS Code password prompt):

=============  ======================  ==========  ========================================
client         file                    top key     token
=============  ======================  ==========  ========================================
claude-code    ``.mcp.json``           mcpServers  ``Bearer ${ENSEMBLE_MCP_TOKEN}``
vscode         ``.vscode/mcp.json``    servers     ``Bearer ${input:ensemble-mcp-token}``
cursor         ``.cursor/mcp.json``    mcpServers  ``Bearer ${env:ENSEMBLE_MCP_TOKEN}``
stdio          the client's own file   mcpServers  none: the client starts the server itself
=============  ======================  ==========  ========================================
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble_mcp.auth import TOKEN_ENV

__all__ = ("CLIENTS", "HTTP_CLIENTS", "Snippet", "http_snippet", "snippets", "stdio_snippet")

HTTP_CLIENTS = ("claude-code", "vscode", "cursor")
CLIENTS = (*HTTP_CLIENTS, "stdio")
VSCODE_INPUT_ID = "ensemble-mcp-token"


@dataclass(frozen=True)
class Snippet:
    """One client's configuration.

    Attributes:
        client: one of ``CLIENTS``.
        title: what it is and which file it goes in, for a human.
        config: the JSON object to put in (or merge into) that file.
    """

    client: str
    title: str
    config: dict[str, Any]

    def render(self) -> str:
        """The title as a comment line, then the JSON."""
        return f"# {self.title}\n{json.dumps(self.config, indent=2)}"


def http_snippet(
    client: str, url: str, *, name: str = "ensemble", token_env: str | None = TOKEN_ENV
) -> Snippet:
    """Configuration for a streamable-HTTP server at ``url``.

    Args:
        client: ``claude-code``, ``vscode`` or ``cursor``.
        url: the MCP endpoint as the client reaches it.
        name: the server's name in the client.
        token_env: environment variable holding the bearer token (Claude Code, Cursor); None for a
            server that needs no token. VS Code always prompts for it instead.

    Raises:
        ValueError: an unknown client, or a URL that is not http(s).
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    if client == "claude-code":
        entry: dict[str, Any] = {"type": "http", "url": url}
        if token_env:
            entry["headers"] = {"Authorization": f"Bearer ${{{token_env}}}"}
        return Snippet(
            client,
            f"Claude Code: .mcp.json in your project (export {token_env} first)"
            if token_env
            else "Claude Code: .mcp.json in your project",
            {"mcpServers": {name: entry}},
        )
    if client == "vscode":
        entry = {"type": "http", "url": url}
        config: dict[str, Any] = {}
        if token_env:
            config["inputs"] = [
                {
                    "type": "promptString",
                    "id": VSCODE_INPUT_ID,
                    "description": "Bearer token of the ensemble-mcp server",
                    "password": True,
                }
            ]
            entry["headers"] = {"Authorization": f"Bearer ${{input:{VSCODE_INPUT_ID}}}"}
        config["servers"] = {name: entry}
        return Snippet(
            client,
            "VS Code: .vscode/mcp.json (asks for the token once)"
            if token_env
            else "VS Code: .vscode/mcp.json",
            config,
        )
    if client == "cursor":
        entry = {"url": url}
        if token_env:
            entry["headers"] = {"Authorization": f"Bearer ${{env:{token_env}}}"}
        return Snippet(
            client,
            f"Cursor: .cursor/mcp.json or ~/.cursor/mcp.json (export {token_env} first)"
            if token_env
            else "Cursor: .cursor/mcp.json or ~/.cursor/mcp.json",
            {"mcpServers": {name: entry}},
        )
    raise ValueError(f"client must be one of {', '.join(HTTP_CLIENTS)} for a URL, got {client!r}")


def stdio_snippet(target: str, *, name: str = "ensemble") -> Snippet:
    """Configuration for a client that starts ``ensemble-mcp serve TARGET`` itself over stdio.

    A file target (``path/to/server.py:server``) is made absolute: the client starts the server
    from a directory of its own choosing.
    """
    where, sep, attribute = target.rpartition(":")
    if not sep:
        where, attribute = target, "server"
    if where.endswith(".py") or "/" in where:
        target = f"{Path(where).resolve()}:{attribute}"
    command, *args = _ensemble_mcp_command()
    entry = {"command": command, "args": [*args, "serve", target, "--transport", "stdio"]}
    return Snippet(
        "stdio",
        "stdio (Claude Desktop, Claude Code, Cursor, ...): the client starts the server itself, "
        "on the machine it runs on",
        {"mcpServers": {name: entry}},
    )


def snippets(
    clients: Sequence[str],
    *,
    url: str | None = None,
    target: str | None = None,
    name: str = "ensemble",
    token_env: str | None = TOKEN_ENV,
) -> list[Snippet]:
    """The snippets of ``clients`` (``all`` expands to every client the inputs allow).

    Raises:
        ValueError: a client is unknown, or needs ``url`` (HTTP clients) or ``target`` (stdio)
            and did not get it.
    """
    wanted: list[str] = []
    for client in clients:
        if client == "all":
            wanted += [c for c in HTTP_CLIENTS if url] + (["stdio"] if target else [])
        elif client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)} or all, got {client!r}")
        else:
            wanted.append(client)
    out = []
    for client in dict.fromkeys(wanted):
        if client == "stdio":
            if target is None:
                raise ValueError("the stdio client needs the server to start: give --target")
            out.append(stdio_snippet(target, name=name))
        else:
            if url is None:
                raise ValueError(f"the {client} client needs the server's URL: give --url")
            out.append(http_snippet(client, url, name=name, token_env=token_env))
    if not out:
        raise ValueError("nothing to configure: give --url, --target or both")
    return out


def _ensemble_mcp_command() -> list[str]:
    """How to start ``ensemble-mcp`` from anywhere: the script of this environment, by its path."""
    script = Path(sys.executable).with_name("ensemble-mcp")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "ensemble_mcp.cli"]
