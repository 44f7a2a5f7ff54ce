"""The package ``__all__`` tuples are the public API: every name resolves, no other is exported."""

from __future__ import annotations

import core
import ensemble_mcp


def test_core_exports_exactly_its_public_api() -> None:
    assert set(core.__all__) == {
        "Batch",
        "ConfigError",
        "EnsembleError",
        "EnsembleLauncher",
        "LaunchError",
        "Launcher",
        "LauncherBroken",
        "LauncherConfig",
        "ProtocolError",
        "SystemConfig",
        "Task",
        "TaskCancelled",
        "TaskError",
        "TaskFailed",
        "TaskResult",
        "TaskStatus",
        "TaskTimeout",
        "write_results_to_json",
    }
    for name in core.__all__:
        assert getattr(core, name) is not None


def test_ensemble_mcp_exports_server_and_tunnel_lazily() -> None:
    assert set(ensemble_mcp.__all__) == {
        "Server",
        "Tunnel",
        "TunnelError",
        "start_tunnel",
        "stop_tunnel",
    }
    for name in ensemble_mcp.__all__:
        assert getattr(ensemble_mcp, name) is not None
    assert dir(ensemble_mcp) == sorted(ensemble_mcp.__all__)
