"""The launcher core: run ensembles of Python callables and commands on slots of this node.

::

    EnsembleLauncher ─► core.ensemble (JSON/dict ─► Task) ─► Launcher.submit_tasks ─► Batch
                                                               │
             manager thread: Master (Scheduler) ◄──────────────┘
                    │  ROUTER (ipc:// 0700 dir, or tcp:// + CURVE/ZAP)
        ┌───────────┴───────────┐            nlevels >= 1: sub-master processes in between
     Worker (slot cpu 0)   Worker (slot cpu 1) ─ Python calls in-process, commands as children
                    │ Results (batched) ─► Master ─► Batch futures / async stream ─► TaskResult
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_attributes

if TYPE_CHECKING:
    from core.batch import Batch
    from core.client import Launcher
    from core.config import LauncherConfig, SystemConfig
    from core.errors import (
        ConfigError,
        EnsembleError,
        LauncherBroken,
        LaunchError,
        ProtocolError,
        TaskCancelled,
        TaskError,
        TaskFailed,
        TaskTimeout,
    )
    from core.launcher import EnsembleLauncher
    from core.result import TaskResult, TaskStatus, write_results_to_json
    from core.task import Task

__all__ = (
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
)

# Names load on first use, so that worker processes (``python -m core``) import only what they run.
_HOME = {
    "Batch": "core.batch",
    "Launcher": "core.client",
    "EnsembleLauncher": "core.launcher",
    "LauncherConfig": "core.config",
    "SystemConfig": "core.config",
    "Task": "core.task",
    "TaskResult": "core.result",
    "TaskStatus": "core.result",
    "write_results_to_json": "core.result",
}


__getattr__, __dir__ = lazy_attributes(
    __name__, {name: _HOME.get(name, "core.errors") for name in __all__}
)
