"""An MCP server for the multi-node test, and its client: ``python -m tests.multinode_server``.

``ensemble-mcp serve tests.multinode_server:server`` serves ``where`` (each task returns its
host's name); running this module with ``PORT N`` calls it once with ``N`` elements over
streamable HTTP (bearer token from ``ENSEMBLE_MCP_TOKEN``) and prints the hosts as JSON.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from ensemble_mcp import Server
from ensemble_mcp.auth import token_from_env

server = Server("multinode")


@server.ensemble_tool
def where(i: int) -> str:
    """The host this task runs on.

    Args:
        i: the task's number.
    """
    return socket.gethostname()


async def _call(port: int, count: int) -> list[str]:
    import httpx2 as httpx
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    # The Server above took the token out of this process's environment; it is remembered.
    token = token_from_env()
    assert token is not None, "set ENSEMBLE_MCP_TOKEN"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        url = f"http://127.0.0.1:{port}/mcp"
        for _ in range(300):  # the server binds once its launcher is up
            try:
                await http.get(url)
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        async with Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("where", {"i": list(range(count))})
    assert result.structured_content is not None
    return [task["result"] for task in result.structured_content["tasks"]]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_call(int(sys.argv[1]), int(sys.argv[2])))))
