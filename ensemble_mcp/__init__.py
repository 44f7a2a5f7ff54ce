"""ensemble-mcp: one MCP tool call runs an ensemble of HPC tasks.

``Server`` is the MCP server with ``ensemble_tool``; ``start_tunnel``/``stop_tunnel`` forward its
port over SSH. Names load lazily, so that using the tunnel does not import the MCP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_attributes

if TYPE_CHECKING:
    from ensemble_mcp.errors import TunnelError
    from ensemble_mcp.server import Server
    from ensemble_mcp.tunnel import Tunnel, start_tunnel, stop_tunnel

__all__ = ("Server", "Tunnel", "TunnelError", "start_tunnel", "stop_tunnel")

_HOME = {
    "Server": "ensemble_mcp.server",
    "Tunnel": "ensemble_mcp.tunnel",
    "TunnelError": "ensemble_mcp.errors",
    "start_tunnel": "ensemble_mcp.tunnel",
    "stop_tunnel": "ensemble_mcp.tunnel",
}


__getattr__, __dir__ = lazy_attributes(__name__, _HOME)
