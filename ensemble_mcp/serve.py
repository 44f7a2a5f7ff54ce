"""``ensemble-mcp serve module:server``: load a Server from a module or a file and run it."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from core.cli import add_launcher_flags, launcher_config_from
from core.errors import ConfigError
from ensemble_mcp.auth import check_exposure, token_from_env
from ensemble_mcp.errors import ServeTargetError

TRANSPORTS = ("streamable-http", "stdio")


def add_serve_command(subparsers: Any) -> None:
    """Register the ``serve`` sub-command on an argparse sub-parser set."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run an MCP server defined in a module or file",
        description="Run the Server object TARGET names: 'pkg.module:server' or "
        "'path/to/file.py:server' (attribute defaults to 'server'). On a shared "
        "machine set ENSEMBLE_MCP_TOKEN: HTTP requests then need "
        "'Authorization: Bearer <token>'. A --host other than loopback needs it. "
        "Submitted ensembles are journaled in $ENSEMBLE_MCP_STATE_DIR/<server name> "
        "(default ~/.local/state/ensemble-mcp/<server name>).",
    )
    parser.add_argument("target", help="module:attribute or file.py:attribute")
    parser.add_argument("--transport", choices=TRANSPORTS, default="streamable-http")
    parser.add_argument(
        "--host", default=None, help="address to bind (default: the server's, 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: the server's, 9276)"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME[:PORT]",
        help="a Host header to accept (repeat; replaces the default: loopback names, the "
        "bound address and this machine's name; without a port: any port)",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        metavar="URL",
        help="an Origin header to accept, e.g. https://app.example.org (repeat; default: "
        "http(s):// with each allowed host)",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without a token: only behind something that "
        "authenticates every request (a site proxy)",
    )
    add_launcher_flags(parser)  # --config, --nlevels, --nchildren, --child-executor
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the target server and run it until interrupted; returns the exit code.

    The token is taken out of the environment before the target is imported, so that nothing
    the target starts inherits it (``token_from_env``; the server still finds it).
    """
    from ensemble_mcp.server import Server

    try:
        token_from_env()
        server = load_server(args.target)
        apply_launcher_flags(args, server)
        kwargs: dict[str, Any] = {}
        if args.transport != "stdio":
            if args.host is not None:
                kwargs["host"] = args.host
            if args.port is not None:
                kwargs["port"] = args.port
            kwargs.update(_security_options(args, server, Server))
        server.run(args.transport, **kwargs)
    except (ServeTargetError, ConfigError, ValueError) as exc:
        sys.stderr.write(f"ensemble-mcp serve: {exc}\n")
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def apply_launcher_flags(args: argparse.Namespace, server: Any) -> None:
    """Give ``server`` the launcher configuration the launcher flags (``--config``...) ask for.

    Raises:
        ConfigError: the flags are wrong, or given for a plain MCP server (it has no launcher).
    """
    from ensemble_mcp.server import Server

    if isinstance(server, Server):
        config = launcher_config_from(args, server.launcher_config)
        if config is not None:
            server.launcher_config = config
    elif args.config or args.nlevels is not None or args.nchildren or args.child_executor:
        raise ConfigError(f"{args.target} is a plain MCP server: it has no launcher to shape")


def _security_options(args: argparse.Namespace, server: Any, server_class: type) -> dict[str, Any]:
    """The serve flags that only an ensemble_mcp Server understands, for its ``run``.

    Raises:
        ConfigError: a flag given for another kind of MCP server, or such a server asked to
            serve a non-loopback address without ``--allow-unauthenticated``.
    """
    given = {
        "allowed_hosts": args.allowed_host,
        "allowed_origins": args.allowed_origin,
        "allow_unauthenticated": args.allow_unauthenticated or None,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if isinstance(server, server_class):
        return options
    if options.keys() - {"allow_unauthenticated"}:
        raise ConfigError(
            f"{args.target} is a plain MCP server: --allowed-host and --allowed-origin "
            "apply to ensemble_mcp.Server only"
        )
    # A plain MCPServer has no token of its own: the same rule, with no token.
    check_exposure(
        args.host or "127.0.0.1", has_token=False, allowed="allow_unauthenticated" in options
    )
    return {}


def load_server(target: str) -> Any:
    """The server object that ``target`` (``module:attr`` or ``file.py:attr``) names.

    Raises:
        ServeTargetError: the file does not exist, the module cannot be imported, it has no
            such attribute, or the attribute is not an MCP server; raised from the cause.
    """
    from mcp.server.mcpserver import MCPServer

    where, attr = _split_target(target)
    try:
        module = _load_file(Path(where)) if _is_file(where) else importlib.import_module(where)
    except ImportError as exc:
        raise ServeTargetError(f"cannot import {where}: {exc}") from exc
    server = getattr(module, attr, None)
    if server is None:
        raise ServeTargetError(f"{where} has no attribute {attr!r} (give it as {where}:NAME)")
    if not isinstance(server, MCPServer):
        raise ServeTargetError(f"{target} is a {type(server).__name__}, not an MCP server")
    return server


def _split_target(target: str) -> tuple[str, str]:
    """``(where, attribute)`` of ``module:attr`` or ``file.py:attr`` (default ``server``)."""
    where, _, attr = target.partition(":")
    return where, attr or "server"


def absolute_target(target: str) -> str:
    """``target`` with its file, if it names one, as an absolute path (for another directory)."""
    where, attr = _split_target(target)
    return f"{os.path.abspath(where)}:{attr}" if _is_file(where) else f"{where}:{attr}"


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where


def _load_file(path: Path) -> ModuleType:
    import cloudpickle

    if not path.is_file():
        raise ServeTargetError(f"no such file: {path}")
    name = f"ensemble_mcp_served_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ServeTargetError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    # Workers cannot import a module known only by its path: send its functions by value.
    cloudpickle.register_pickle_by_value(module)
    return module


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and examples)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_serving(
    process: subprocess.Popen[Any], host: str, port: int, timeout_s: float = 60.0
) -> None:
    """Wait until ``process`` accepts TCP connections on ``port``.

    The server binds after its launcher has started.

    Raises:
        RuntimeError: the process exited first.
        TimeoutError: it did not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {process.returncode} before "
                f"listening on {host}:{port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port: there is no event to wait on
    raise TimeoutError(f"the server did not listen on {host}:{port} within {timeout_s:g} s")
