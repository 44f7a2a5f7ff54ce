"""The MCP layer's errors sit under core.errors.EnsembleError; the tunnel loads without the SDK."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mcp.server.mcpserver.exceptions import ToolError

import ensemble_mcp
from core.errors import ConfigError, EnsembleError
from ensemble_mcp import errors
from ensemble_mcp.serve import load_server


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_importable_and_under_the_root(name: str) -> None:
    value = getattr(errors, name)
    if name == "NOTHING_RUN":
        assert value == "Nothing was run."
        return
    assert issubclass(value, EnsembleError)
    assert (value.__module__, value.__qualname__) == ("ensemble_mcp.errors", name)


def test_tool_errors_are_the_sdks_tool_errors_too() -> None:
    assert issubclass(errors.ToolCallError, ToolError)
    assert issubclass(errors.EnsembleInputError, errors.ToolCallError)


def test_the_package_exports_the_one_tunnel_error() -> None:
    from ensemble_mcp.tunnel import TunnelError

    assert ensemble_mcp.TunnelError is errors.TunnelError is TunnelError


def test_the_tunnel_imports_without_the_mcp_sdk() -> None:
    code = (
        "import sys, ensemble_mcp.tunnel; from ensemble_mcp import TunnelError; "
        "loaded = sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')); "
        "print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("no_such_module_xyz:server", "cannot import no_such_module_xyz"),
        ("/no/such/file.py:server", "no such file: /no/such/file.py"),
        ("ensemble_mcp.errors:nothing", "has no attribute 'nothing'"),
        ("ensemble_mcp.errors:NOTHING_RUN", "is a str, not an MCP server"),
    ],
)
def test_a_serve_target_that_names_no_server_is_a_config_error(target: str, problem: str) -> None:
    with pytest.raises(errors.ServeTargetError) as caught:
        load_server(target)

    assert isinstance(caught.value, ConfigError) and problem in str(caught.value)
