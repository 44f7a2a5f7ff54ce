"""``ensemble-mcp tunnel user@host PORT``: hold an SSH port forward until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any


def add_tunnel_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``tunnel`` command on ``subparsers`` from ``ArgumentParser.add_subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tunnel",
        help="forward a local port to the MCP server on a compute node over SSH",
        description=__doc__,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=run_tunnel)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "destination",
        metavar="[user@]host",
        help="SSH login; host may be an alias from ~/.ssh/config",
    )
    parser.add_argument("remote_port", type=int, help="port of the MCP server on the remote side")
    parser.add_argument(
        "--local-port",
        type=int,
        default=None,
        help="local port to listen on (default: remote_port; 0 picks a free one)",
    )
    parser.add_argument(
        "--remote-host",
        default="localhost",
        help="destination host as seen from the SSH host (default: localhost)",
    )
    parser.add_argument("--bind", default="127.0.0.1", help="local address (default: 127.0.0.1)")
    parser.add_argument(
        "-i",
        dest="key_filename",
        metavar="KEY",
        action="append",
        help="private key file (repeatable); ssh-agent and ~/.ssh/id_* follow",
    )
    parser.add_argument(
        "--known-hosts", metavar="FILE", help="known_hosts file (default: ~/.ssh/known_hosts)"
    )
    parser.add_argument(
        "-p",
        dest="ssh_port",
        type=int,
        metavar="SSH_PORT",
        help="SSH port (default: ~/.ssh/config Port, else 22)",
    )
    parser.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust an unknown host key and save it (a changed key is refused)",
    )


def run_tunnel(args: argparse.Namespace) -> int:
    """Open the tunnel for parsed ``args``, print where it listens, hold it; return exit code."""
    from ensemble_mcp.tunnel import TunnelError, start_tunnel

    logging.basicConfig(level=logging.WARNING, format="ensemble-mcp tunnel: %(message)s")
    user, _, host = args.destination.rpartition("@")
    local_port = args.remote_port if args.local_port is None else args.local_port
    try:
        tunnel = start_tunnel(
            user or None,
            host,
            local_port,
            args.remote_port,
            args.remote_host,
            key_filename=args.key_filename,
            known_hosts=args.known_hosts,
            port=args.ssh_port,
            accept_new_host_key=args.accept_new_host_key,
            bind_host=args.bind,
        )
    except (TunnelError, ValueError) as e:
        sys.stderr.write(f"ensemble-mcp tunnel: error: {e}\n")
        return 1

    def announce() -> bool:
        sys.stdout.write(
            f"forwarding {tunnel.local_host}:{tunnel.local_port} -> {tunnel.ssh_host} -> "
            f"{tunnel.remote_host}:{tunnel.remote_port}; MCP URL "
            f"http://{tunnel.local_host}:{tunnel.local_port}/mcp (Ctrl-C to stop)\n"
        )
        sys.stdout.flush()
        return True

    return hold_open(tunnel, "ensemble-mcp tunnel", announce)


def hold_open(tunnel: Any, prog: str, when_open: Callable[[], bool]) -> int:
    """Hold ``tunnel`` open until Ctrl-C, SIGTERM or a break; the exit status.

    ``when_open`` runs once the forward is up; False closes it at once (status 1, the callable
    said why). A break is reported on stderr as ``prog: the tunnel broke: ...`` (status 1).
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tunnel:
            if not when_open():
                return 1
            tunnel.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if tunnel.error is not None:
        sys.stderr.write(f"{prog}: the tunnel broke: {tunnel.error}\n")
        return 1
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tunnel command on its own: ``python -m ensemble_mcp.tunnel_cli user@host PORT``."""
    parser = argparse.ArgumentParser(prog="ensemble-mcp tunnel", description=__doc__)
    _add_arguments(parser)
    return run_tunnel(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
