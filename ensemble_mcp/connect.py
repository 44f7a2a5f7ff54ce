"""The login-node side: ``ensemble-mcp connect FILE`` and ``ensemble-mcp config``.

``connect`` reads the connection file a job script wrote (``examples/hpc/``), opens an SSH tunnel
to the node named there (host key verified), checks that the server answers through it with the
token, prints the client configuration, and holds the tunnel until Ctrl-C. ``config`` prints the
same configuration for a URL, without a tunnel.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ensemble_mcp.auth import TOKEN_ENV
from ensemble_mcp.check import ServerCheckError, check_server, read_token_file
from ensemble_mcp.client_config import CLIENTS, Snippet, snippets
from ensemble_mcp.tunnel_cli import hold_open

__all__ = ("ConnectionFileError", "ConnectionInfo", "read_connection_file")

CONNECTION_VERSION = 1


class ConnectionFileError(Exception):
    """The connection file is missing or does not say what ``connect`` needs."""


@dataclass(frozen=True)
class ConnectionInfo:
    """What a job script wrote about its server.

    Attributes:
        host: the node the server runs on, as the login node reaches it over SSH.
        port: the server's port on that node (it listens on the node's 127.0.0.1).
        path: the MCP endpoint path (``/mcp``).
        token_file: the file holding the bearer token (mode 0600).
        job_id: the scheduler's job id, or None.
        pid: the server's process id on the node, or None.
        target: the served ``module:attribute`` or ``file.py:attribute``, or None.
    """

    host: str
    port: int
    path: str
    token_file: Path
    job_id: str | None = None
    pid: int | None = None
    target: str | None = None


def read_connection_file(path: str | Path) -> ConnectionInfo:
    """Read and check a connection file.

    Raises:
        ConnectionFileError: the file is missing, is not JSON, or a field is missing or wrong; the
            message names the field.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise ConnectionFileError(
            f"no connection file {file}: the job writes it once its server answers; "
            "check that the job runs (qstat / squeue) and look at its output"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConnectionFileError(f"cannot read the connection file {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConnectionFileError(f"connection file {file}: expected a JSON object")

    def field(name: str, kind: type, required: bool = True) -> Any:
        value = data.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConnectionFileError(
                f"connection file {file}: field {name!r} must be a {kind.__name__}, got {value!r}"
            )
        return value

    version = field("version", int)
    if version != CONNECTION_VERSION:
        raise ConnectionFileError(
            f"connection file {file}: version {version} is not understood by this "
            f"ensemble-mcp (it reads version {CONNECTION_VERSION}); use the same version on "
            "the node and here"
        )
    host = field("host", str).strip()
    if not host:
        raise ConnectionFileError(f"connection file {file}: field 'host' is empty")
    port = field("port", int)
    if not 1 <= port <= 65535:
        raise ConnectionFileError(
            f"connection file {file}: field 'port' must be in 1..65535, got {port}"
        )
    url = field("url", str, required=False)
    return ConnectionInfo(
        host=host,
        port=port,
        path=(urlsplit(url).path or "/mcp") if url else "/mcp",
        token_file=Path(field("token_file", str)),
        job_id=field("job_id", str, required=False),
        pid=field("pid", int, required=False),
        target=field("target", str, required=False),
    )


def add_connect_command(subparsers: Any) -> None:
    """Register ``connect`` on an argparse sub-parser set."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "connect",
        help="tunnel to the server of a job and print the MCP client configuration",
        description="Read the connection file a job script wrote, open an SSH tunnel to its "
        "node (host key checked), check that the server answers, and print the configuration "
        "for MCP clients. The tunnel stays up until Ctrl-C.",
    )
    parser.add_argument("connection_file", help="the job's connection.json")
    parser.add_argument("-l", dest="user", metavar="USER", help="SSH login name")
    parser.add_argument(
        "--local-port",
        type=int,
        default=None,
        help="local port of the tunnel (default: the server's port; 0 picks a free one)",
    )
    parser.add_argument(
        "-i", dest="key_filename", metavar="KEY", action="append", help="private key file"
    )
    parser.add_argument("-p", dest="ssh_port", type=int, metavar="SSH_PORT", help="SSH port")
    parser.add_argument("--known-hosts", metavar="FILE", help="known_hosts file")
    parser.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust the node's host key if it is unknown, and save it (a changed key is refused)",
    )
    _add_snippet_options(parser)
    parser.set_defaults(handler=run_connect)


def add_config_command(subparsers: Any) -> None:
    """Register ``config`` on an argparse sub-parser set."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "config",
        help="print MCP client configuration for a server URL or a server to start",
        description="Print paste-ready configuration for MCP clients: for a streamable-HTTP "
        "server at --url, or for a client that starts --target itself over stdio.",
    )
    parser.add_argument("--url", help="the MCP endpoint, e.g. http://127.0.0.1:9276/mcp")
    parser.add_argument("--target", help="server to start over stdio: module:attr or file.py:attr")
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        metavar="VAR",
        help="environment variable the clients read the token from (default: %(default)s)",
    )
    token.add_argument(
        "--no-token",
        dest="token_env",
        action="store_const",
        const=None,
        help="the server needs no token",
    )
    _add_snippet_options(parser)
    parser.set_defaults(handler=run_config)


def _add_snippet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--client",
        action="append",
        choices=[*CLIENTS, "all"],
        help="client to configure (repeatable; default: all)",
    )
    parser.add_argument(
        "--name", default="ensemble", help="the server's name in the client (%(default)s)"
    )


def run_config(args: argparse.Namespace) -> int:
    """Print the snippets for parsed ``args``; 2 on missing input."""
    try:
        found = snippets(
            args.client or ["all"],
            url=args.url,
            target=args.target,
            name=args.name,
            token_env=args.token_env,
        )
    except ValueError as exc:
        sys.stderr.write(f"ensemble-mcp config: {exc}\n")
        return 2
    sys.stdout.write(_render(found) + "\n")
    return 0


def run_connect(args: argparse.Namespace) -> int:
    """Tunnel, check, print, hold; the exit code is 0 after Ctrl-C, 1 on any failure."""
    import logging

    from ensemble_mcp.tunnel import TunnelError, start_tunnel

    logging.basicConfig(level=logging.WARNING, format="ensemble-mcp connect: %(message)s")
    try:
        info = read_connection_file(args.connection_file)
        token = read_token_file(info.token_file)
        tunnel = start_tunnel(
            args.user,
            info.host,
            info.port if args.local_port is None else args.local_port,
            info.port,
            key_filename=args.key_filename,
            known_hosts=args.known_hosts,
            port=args.ssh_port,
            accept_new_host_key=args.accept_new_host_key,
        )
    except (ConnectionFileError, ServerCheckError, TunnelError, ValueError) as exc:
        sys.stderr.write(f"ensemble-mcp connect: {exc}\n")
        return 1

    def report() -> bool:
        url = f"http://{tunnel.local_host}:{tunnel.local_port}{info.path}"
        try:
            tools = check_server(url, token)
            found = snippets(args.client or ["all"], url=url, target=info.target, name=args.name)
        except (ServerCheckError, ValueError) as exc:
            sys.stderr.write(f"ensemble-mcp connect: {exc}\n")
            return False
        sys.stdout.write(_connected_text(info, tunnel, url, tools, found) + "\n")
        sys.stdout.flush()
        return True

    return hold_open(tunnel, "ensemble-mcp connect", report)


def _connected_text(
    info: ConnectionInfo, tunnel: Any, url: str, tools: list[str], found: list[Snippet]
) -> str:
    job = f" (job {info.job_id})" if info.job_id else ""
    token_file = info.token_file
    return "\n".join(
        [
            f"tunnel: {tunnel.local_host}:{tunnel.local_port} -> {info.host} -> "
            f"localhost:{info.port}{job}",
            f"the server answers through it: {len(tools)} tools ({', '.join(tools)})",
            f"MCP URL: {url}",
            "",
            f"The token is in {token_file} (not shown). Claude Code and Cursor read it from "
            f"${TOKEN_ENV}: start them from a shell where you ran",
            f'    export {TOKEN_ENV}="$(cat {token_file})"',
            f"VS Code asks for it once: paste what `cat {token_file}` prints.",
            "",
            _render(found),
            "",
            "Keep this running while you use the server; Ctrl-C closes the tunnel.",
        ]
    )


def _render(found: list[Snippet]) -> str:
    return "\n\n".join(snippet.render() for snippet in found)
