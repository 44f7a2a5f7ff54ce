"""The errors of the MCP layer, each under ``core.errors.EnsembleError`` (the tree is drawn there).

- ``TunnelError``: the SSH tunnel could not be opened or kept up.
- ``ServeTargetError`` (also a ``ConfigError``): ``ensemble-mcp serve TARGET`` names no server.
- ``ToolCallError`` (also the SDK's ``ToolError``): a tool call refused with a text for the agent;
  nothing was run. The SDK returns the text as an ``isError`` result.
- ``EnsembleInputError(ToolCallError)``: the arguments of an ensemble call cannot form its tasks.

The two tool errors subclass the MCP SDK's ``ToolError``, and importing it imports the whole SDK
(about 0.6 s). They are made on first use, so that the tunnel, which needs only ``TunnelError``,
starts without the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, EnsembleError

__all__ = (
    "NOTHING_RUN",
    "EnsembleInputError",
    "ServeTargetError",
    "ToolCallError",
    "TunnelError",
)

NOTHING_RUN = "Nothing was run."
"""How every tool-call refusal ends: the agent must know that nothing ran, not half of it."""


class TunnelError(EnsembleError):
    """The tunnel could not be opened or kept up; the message says what failed and what to do."""


class ServeTargetError(ConfigError):
    """A serve target (``module:attr`` or ``file.py:attr``) cannot be loaded as an MCP server."""


if TYPE_CHECKING:
    from mcp.server.mcpserver.exceptions import ToolError

    class ToolCallError(EnsembleError, ToolError):
        """For type checkers; the class is made on first use by ``_make_tool_errors``."""

    class EnsembleInputError(ToolCallError):
        """For type checkers; the class is made on first use by ``_make_tool_errors``."""


def _make_tool_errors() -> dict[str, type[Exception]]:
    from mcp.server.mcpserver.exceptions import ToolError

    class ToolCallError(EnsembleError, ToolError):
        """A tool call was refused; the text tells the agent why and what to do. Nothing ran."""

    class EnsembleInputError(ToolCallError):
        """The arguments of an ensemble call cannot form its tasks; nothing was launched."""

    for cls in (ToolCallError, EnsembleInputError):  # importable, picklable, shown by name
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return {"ToolCallError": ToolCallError, "EnsembleInputError": EnsembleInputError}


def __getattr__(name: str) -> Any:
    if name in ("ToolCallError", "EnsembleInputError"):
        globals().update(_make_tool_errors())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
