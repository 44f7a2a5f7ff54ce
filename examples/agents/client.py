"""Call the example server's ensemble tool over streamable HTTP and print the results as a table.

    python examples/agents/client.py [--url http://127.0.0.1:9276/mcp]

When ``$ENSEMBLE_MCP_TOKEN`` is set, it is sent as ``Authorization: Bearer <token>`` (a server
started with the same variable requires it). It is read from the environment, never from the
command line, where other users of the machine could read it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

DEFAULT_URL = "http://127.0.0.1:9276/mcp"
REQUEST: dict[str, Any] = {"pressure": [1, 2, 5, 10], "temperature": 300}


async def run(url: str, out: Any = sys.stdout, token: str | None = None) -> int:
    """List the tools, run one ensemble call, print a table; returns an exit code.

    ``token``, if given, is sent as the bearer token.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx2.Timeout(30, read=300)  # the SDK's defaults; results may take long
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        tools = (await client.list_tools()).tools
        print(f"tools on {url}: {', '.join(t.name for t in tools)}", file=out)

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            print(f"  progress: {message or progress}", file=out)

        print(f"calling flame_speed({REQUEST})", file=out)
        result = await client.call_tool("flame_speed", REQUEST, progress_callback=on_progress)
        if result.is_error or result.structured_content is None:
            text = result.content[0].text if result.content else "(no text)"  # type: ignore[union-attr]
            print(f"error: {text}", file=out)
            return 1
        print(format_table(result.structured_content), file=out)
        counts = result.structured_content["summary"]["counts"]
        return 0 if counts["success"] == len(result.structured_content["tasks"]) else 1


def format_table(output: dict[str, Any]) -> str:
    """The tasks of a structured ensemble result as a fixed-width table, then the summary."""
    tasks = output["tasks"]
    names = list(tasks[0]["params"]) if tasks else []
    header = ["#", *names, "status", "result", "time (s)"]
    rows = [
        [
            str(t["index"]),
            *(str(t["params"][n]) for n in names),
            t["status"],
            str(t.get("result", t.get("error", ""))),
            f"{t['duration_s']:.4f}" if t.get("duration_s") is not None else "-",
        ]
        for t in tasks
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    summary = output["summary"]
    counts = ", ".join(f"{v} {k}" for k, v in summary["counts"].items() if v)
    lines.append(
        f"{summary['total']} tasks ({summary['relation']}): {counts} in "
        f"{summary['wall_time_s']:.3f} s"
    )
    return "\n".join(lines)


def main() -> int:
    """Parse the command line and run the client."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    token = os.environ.get("ENSEMBLE_MCP_TOKEN") or None
    try:
        return anyio.run(run, args.url, sys.stdout, token)
    except Exception as exc:
        error = _first_leaf(exc)
        if not isinstance(error, MCPError):
            raise
        # e.g. the server wants a token: say so in one line, not a traceback of task groups
        print(f"error: {error}", file=sys.stderr)
        return 1


def _first_leaf(exc: BaseException) -> BaseException:
    while inner := getattr(exc, "exceptions", ()):
        exc = inner[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
