"""Everything that reaches into the MCP SDK's internals, in one place (written against mcp 2.3).

An ensemble tool checks its own arguments (bare values and unknown arguments must reach the
broadcast rule and its messages) and publishes a schema written by ``ensemble_mcp.tools``, so
``MCPServer.add_tool``, which builds a tool from a function signature, cannot make it. This module:

- ``RawTool``: a ``Tool`` whose ``run`` hands the raw arguments to its function;
- ``add_raw_tool``: puts one in a running server's tool table (the SDK takes ready-made tools only
  in ``MCPServer(tools=[...])``, at construction);
- ``has_tool``: whether a name is taken;
- ``check_sdk_shape``: checks that the internals used here are still there, so that an SDK that
  moved them fails at the first registration, and in the test suite, with a message naming this
  module rather than an ``AttributeError`` deep inside.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.shared.tool_name_validation import validate_and_warn_tool_name
from mcp.types import CallToolResult
from pydantic import BaseModel, create_model

__all__ = ("RawTool", "Runner", "add_raw_tool", "check_sdk_shape", "has_tool")

Runner = Callable[[dict[str, Any], Context[Any, Any]], Awaitable[CallToolResult]]
"""What a raw tool runs: the call's raw arguments and its context in, the result out."""

_TOOL_FIELDS = ("fn", "name", "description", "parameters", "fn_metadata", "is_async")
_RUN_PARAMETERS = ["self", "arguments", "context", "convert_result"]


class RawTool(Tool):
    """A tool whose function gets the raw arguments, unvalidated by the SDK's argument model.

    Error texts follow the SDK's ``Tool.run``: a ``ToolError`` keeps its text after the prefix
    ``Error executing tool <name>: ``; any other exception shows only the prefix.
    """

    async def run(
        self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False
    ) -> Any:
        """Run the tool's function on the raw arguments."""
        try:
            result = await self.fn(arguments, context)
        except ToolError as exc:
            raise ToolError(f"Error executing tool {self.name}: {exc}") from exc
        except Exception as exc:
            raise UnexpectedToolError(f"Error executing tool {self.name}") from exc
        return self.fn_metadata.convert_result(result) if convert_result else result


def has_tool(server: MCPServer[Any], name: str) -> bool:
    """Whether ``server`` has a tool called ``name``."""
    check_sdk_shape(server)
    return server._tool_manager.get_tool(name) is not None


def add_raw_tool(
    server: MCPServer[Any],
    name: str,
    description: str,
    input_schema: dict[str, Any],
    output_schema: dict[str, Any],
    runner: Runner,
) -> None:
    """Add a tool with its own schemas, whose ``runner`` gets the raw arguments.

    Raises:
        RuntimeError: the SDK no longer has the internals this needs (``check_sdk_shape``).
    """
    check_sdk_shape(server)
    validate_and_warn_tool_name(name)
    # The argument model is empty and unused (RawTool.run skips it); FuncMetadata requires one.
    arguments = create_model(f"{name}Arguments", __base__=ArgModelBase)
    tool = RawTool(
        fn=runner,
        name=name,
        description=description,
        parameters=input_schema,
        fn_metadata=FuncMetadata(arg_model=arguments, output_schema=output_schema),
        is_async=True,
    )
    server._tool_manager._tools[name] = tool


def check_sdk_shape(server: MCPServer[Any]) -> None:
    """Check that the SDK still has what this module uses.

    Raises:
        RuntimeError: naming each missing piece, the installed SDK version, and this module.
    """
    problems = sdk_shape_problems(server, Tool, FuncMetadata)
    if problems:
        raise RuntimeError(
            f"the installed MCP SDK (mcp {version('mcp')}) changed shape: "
            + "; ".join(problems)
            + ". ensemble_mcp/sdk_shim.py must be updated for it."
        )


def sdk_shape_problems(server: Any, tool_class: Any, metadata_class: Any) -> list[str]:
    """What is missing of the SDK internals this module uses (empty when nothing is)."""
    problems = []
    manager = getattr(server, "_tool_manager", None)
    if not isinstance(getattr(manager, "_tools", None), dict):
        problems.append("MCPServer._tool_manager._tools is not a dict of tools")
    if not callable(getattr(manager, "get_tool", None)):
        problems.append("MCPServer._tool_manager.get_tool is gone")
    fields = getattr(tool_class, "model_fields", {})
    missing = [f for f in _TOOL_FIELDS if f not in fields]
    if missing:
        problems.append(f"Tool has no field(s) {', '.join(missing)}")
    run = getattr(tool_class, "run", None)
    if run is None or list(inspect.signature(run).parameters)[:4] != _RUN_PARAMETERS:
        problems.append(f"Tool.run no longer takes ({', '.join(_RUN_PARAMETERS[1:])})")
    metadata_fields = getattr(metadata_class, "model_fields", {})
    if not {"arg_model", "output_schema"} <= set(metadata_fields):
        problems.append("FuncMetadata has no arg_model or output_schema field")
    if not callable(getattr(metadata_class, "convert_result", None)):
        problems.append("FuncMetadata.convert_result is gone")
    if not (isinstance(ArgModelBase, type) and issubclass(ArgModelBase, BaseModel)):
        problems.append("ArgModelBase is no longer a pydantic model")
    return problems
