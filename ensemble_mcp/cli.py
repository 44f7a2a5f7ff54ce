"""The ``ensemble-mcp`` command: run, serve, job, tunnel, check, connect, config and plot."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ensemble-mcp`` console script; returns the exit code."""
    parser = argparse.ArgumentParser(prog="ensemble-mcp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from core.cli import add_run_command

    add_run_command(commands)
    from ensemble_mcp.serve import add_serve_command

    add_serve_command(commands)
    from ensemble_mcp.job import add_job_command

    add_job_command(commands)
    from ensemble_mcp.tunnel_cli import add_tunnel_command

    add_tunnel_command(commands)
    from ensemble_mcp.check import add_check_command

    add_check_command(commands)
    from ensemble_mcp.connect import add_config_command, add_connect_command

    add_connect_command(commands)
    add_config_command(commands)
    from ensemble_mcp.plot import add_plot_command

    add_plot_command(commands)
    args = parser.parse_args(argv)
    handler = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
