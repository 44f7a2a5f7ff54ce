r"""Reach an MCP server on a compute node through an SSH tunnel: list its tools, call one.

The server listens on 127.0.0.1:PORT of the compute node (``ensemble-mcp serve``, or any MCP
streamable-HTTP server); this client runs on the login node or a laptop::

    python examples/agents/client_via_tunnel.py user@compute-node 9276 \\
        --tool add --args '{"a": [1, 2], "b": [10, 20]}'

The host key must already be in ~/.ssh/known_hosts (or pass --accept-new-host-key once). A bearer
token for the server, if it wants one, comes from $ENSEMBLE_MCP_TOKEN (never the command line,
which every user of a login node can read).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from ensemble_mcp import start_tunnel


async def call_through_tunnel(
    destination: str,
    remote_port: int,
    tool: str,
    arguments: dict[str, Any],
    *,
    path: str = "/mcp",
    token: str | None = None,
    **tunnel_options: Any,
) -> tuple[list[str], Any]:
    """Open a tunnel to ``destination``, list the server's tools and call ``tool``.

    Returns:
        The tool names and the ``CallToolResult``.
    """
    user, _, host = destination.rpartition("@")
    opened = functools.partial(start_tunnel, user or None, host, 0, remote_port, **tunnel_options)
    tunnel = await anyio.to_thread.run_sync(opened)  # connecting blocks; keep the loop free
    try:
        url = f"http://127.0.0.1:{tunnel.local_port}{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx2.Timeout(30, read=300)  # the SDK's defaults; results may take long
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                listed = await client.list_tools()
                result = await client.call_tool(tool, arguments)
    finally:
        await anyio.to_thread.run_sync(tunnel.close)
    return [t.name for t in listed.tools], result


def main(argv: Sequence[str] | None = None) -> int:
    token_from_environment = os.environ.get("ENSEMBLE_MCP_TOKEN") or None
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("destination", metavar="[user@]host")
    parser.add_argument("remote_port", type=int)
    parser.add_argument("--tool", required=True, help="tool to call")
    parser.add_argument("--args", default="{}", help="tool arguments as a JSON object")
    parser.add_argument("--path", default="/mcp", help="MCP endpoint path (default /mcp)")
    parser.add_argument("-i", dest="key_filename", metavar="KEY")
    parser.add_argument("-p", dest="port", type=int, metavar="SSH_PORT")
    parser.add_argument("--known-hosts")
    parser.add_argument("--accept-new-host-key", action="store_true")
    args = parser.parse_args(argv)
    arguments = json.loads(args.args)
    if not isinstance(arguments, dict):
        parser.error("--args must be a JSON object")
    names, result = asyncio.run(
        call_through_tunnel(
            args.destination,
            args.remote_port,
            args.tool,
            arguments,
            path=args.path,
            token=token_from_environment,
            key_filename=args.key_filename,
            port=args.port,
            known_hosts=args.known_hosts,
            accept_new_host_key=args.accept_new_host_key,
        )
    )
    print("tools:", ", ".join(names))
    if result.structured_content is not None:
        print(json.dumps(result.structured_content, indent=2))
    else:
        print("\n".join(getattr(c, "text", str(c)) for c in result.content))
    return 1 if result.is_error else 0


if __name__ == "__main__":
    sys.exit(main())
