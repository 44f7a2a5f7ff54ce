"""``ensemble-mcp serve module:server``: load a Server from a module or a file and run it."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

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
        "'Authorization: Bearer <token>'.",
    )
    parser.add_argument("target", help="module:attribute or file.py:attribute")
    parser.add_argument("--transport", choices=TRANSPORTS, default="streamable-http")
    parser.add_argument(
        "--host", default=None, help="address to bind (default: the server's, 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: the server's, 9276)"
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the target server and run it until interrupted; returns the exit code."""
    try:
        server = load_server(args.target)
    except ServeTargetError as exc:
        sys.stderr.write(f"ensemble-mcp serve: {exc}\n")
        return 2
    kwargs: dict[str, Any] = {}
    if args.transport != "stdio":
        if args.host is not None:
            kwargs["host"] = args.host
        if args.port is not None:
            kwargs["port"] = args.port
    try:
        server.run(args.transport, **kwargs)
    except KeyboardInterrupt:
        pass
    return 0


def load_server(target: str) -> Any:
    """The server object that ``target`` (``module:attr`` or ``file.py:attr``) names.

    Raises:
        ServeTargetError: the file does not exist, the module cannot be imported, it has no
            such attribute, or the attribute is not an MCP server; raised from the cause.
    """
    from mcp.server.mcpserver import MCPServer

    where, _, attr = target.partition(":")
    attr = attr or "server"
    try:
        module = (
            _load_file(Path(where))
            if where.endswith(".py") or "/" in where
            else importlib.import_module(where)
        )
    except ImportError as exc:
        raise ServeTargetError(f"cannot import {where}: {exc}") from exc
    server = getattr(module, attr, None)
    if server is None:
        raise ServeTargetError(f"{where} has no attribute {attr!r} (give it as {where}:NAME)")
    if not isinstance(server, MCPServer):
        raise ServeTargetError(f"{target} is a {type(server).__name__}, not an MCP server")
    return server


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
