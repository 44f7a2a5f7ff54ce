"""The one module that touches MCP SDK internals fails loudly, and by name, if they move."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.types import CallToolResult, TextContent

from ensemble_mcp.sdk_shim import add_raw_tool, check_sdk_shape, has_tool, sdk_shape_problems
from ensemble_mcp.server import Server


def test_the_installed_sdk_has_every_internal_the_shim_uses() -> None:
    # If this fails after an SDK upgrade, its message lists what moved: update sdk_shim.py.
    check_sdk_shape(Server("shape"))


def test_a_changed_sdk_is_reported_piece_by_piece() -> None:
    class OldTool:
        model_fields: dict[str, Any] = {"fn": None, "name": None}

        async def run(self, arguments: dict[str, Any]) -> None: ...

    problems = sdk_shape_problems(object(), OldTool, object)

    assert problems == [
        "MCPServer._tool_manager._tools is not a dict of tools",
        "MCPServer._tool_manager.get_tool is gone",
        "Tool has no field(s) description, parameters, fn_metadata, is_async",
        "Tool.run no longer takes (arguments, context, convert_result)",
        "FuncMetadata has no arg_model or output_schema field",
        "FuncMetadata.convert_result is gone",
    ]
    assert sdk_shape_problems(Server("shape"), Tool, FuncMetadata) == []


def test_a_changed_sdk_stops_registration_with_a_message_naming_the_shim() -> None:
    server = Server("shape")
    server._tool_manager = object()  # type: ignore[assignment]

    with pytest.raises(RuntimeError, match=r"changed shape: .*sdk_shim\.py must be updated"):
        server.ensemble_tool("echo {x}", name="echo")


async def test_a_raw_tool_gets_the_raw_arguments_and_its_schema_is_published() -> None:
    server = Server("raw")
    seen: list[dict[str, Any]] = []

    async def runner(arguments: dict[str, Any], ctx: Any) -> CallToolResult:
        seen.append(arguments)
        return CallToolResult(
            content=[TextContent(type="text", text="ok")], structured_content={"ok": True}
        )

    schema = {"type": "object", "properties": {"x": {"type": "array"}}}
    add_raw_tool(server, "raw", "A raw tool.", schema, {"type": "object"}, runner)
    async with Client(server) as client:
        (tool,) = (await client.list_tools()).tools
        result = await client.call_tool("raw", {"x": 1, "unknown": "kept"})

    assert has_tool(server, "raw") and not has_tool(server, "other")
    assert (tool.name, tool.description, tool.input_schema) == ("raw", "A raw tool.", schema)
    assert seen == [{"x": 1, "unknown": "kept"}] and result.structured_content == {"ok": True}
