"""The exception tree of ensemble-mcp, core and MCP edge together (drawn here, once).

::

    EnsembleError
    ├── ConfigError            (also ValueError) bad config or input, refused before anything runs
    │   ├── UnequalLengthsError  (core.relations) one-to-one lists of different lengths, with the
    │   │                        lengths and the task count of each fix
    │   └── ServeTargetError     (ensemble_mcp.errors) ``ensemble-mcp serve TARGET`` names no server
    ├── LaunchError            a worker or sub-master failed to start (host, argv and output tail)
    ├── LauncherBroken         the service stopped or lost every slot; pending tasks fail with it
    ├── ProtocolError          bad frame or version mismatch between launcher processes
    ├── TaskError              raised by ``Future.result()`` and ``TaskResult.unwrap()``
    │   ├── TaskFailed         the task raised or exited non-zero
    │   │   ├── WorkerLost     the worker process running it died, and its retries are used up
    │   │   ├── NodeLost       its node (sub-master) was lost, and its retries are used up
    │   │   └── Unplaceable    no node of the launcher can ever hold what the task asks for
    │   ├── TaskTimeout        the task ran past its timeout
    │   └── TaskCancelled      the task was cancelled
    ├── TunnelError            (ensemble_mcp.errors) the SSH tunnel could not open or stay up
    └── ToolCallError          (ensemble_mcp.errors; also the MCP SDK's ToolError) a refused call
        └── EnsembleInputError   the arguments cannot form the ensemble's tasks; nothing ran

A task that did not succeed is data first (a ``TaskResult`` whose ``exception_type`` names one of
these classes, e.g. ``core.errors.WorkerLost``); the classes are raised only when a caller asks
for the value. :func:`error_class` turns an ``exception_type`` back into its class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.result import TaskResult


class EnsembleError(Exception):
    """Base class of every error raised by ensemble-mcp."""


class ConfigError(EnsembleError, ValueError):
    """A configuration or ensemble definition is invalid; nothing was started."""


class LaunchError(EnsembleError):
    """A launcher process could not be started."""


class LauncherBroken(EnsembleError):
    """The launcher service is stopped or broken; it accepts no more work."""


class ProtocolError(EnsembleError):
    """A launcher process sent a frame this one cannot accept."""


class TaskError(EnsembleError):
    """A task did not succeed; ``result`` holds its full record."""

    def __init__(self, result: TaskResult) -> None:
        self.result = result
        detail = result.exception or result.stderr or f"exit code {result.returncode}"
        super().__init__(f"task {result.task_id} {result.status}: {detail.strip()[-2000:]}")


class TaskFailed(TaskError):
    """The task raised an exception or exited with a non-zero code."""


class WorkerLost(TaskFailed):
    """The worker process running the task died, on every attempt allowed."""


class NodeLost(TaskFailed):
    """The node (its sub-master) running the task was lost, on every attempt allowed."""


class Unplaceable(TaskFailed):
    """No node of the launcher can ever hold what the task asks for (slots, GPUs, nodes)."""


class TaskTimeout(TaskError):
    """The task ran longer than its timeout and was killed."""


class TaskCancelled(TaskError):
    """The task was cancelled before it finished."""


EMITTED_TYPES = (
    "core.errors.WorkerLost",
    "core.errors.NodeLost",
    "core.errors.Unplaceable",
    "core.errors.LauncherBroken",
    "core.errors.ProtocolError",
)
"""Every ``exception_type`` the launcher writes itself (the tasks' own exceptions aside).

LauncherBroken and ProtocolError carry no TaskResult: a task that ends because of them raises
TaskFailed when its value is asked for.
"""

_TASK_ERRORS: dict[str, type[TaskError]] = {
    f"core.errors.{cls.__name__}": cls for cls in (WorkerLost, NodeLost, Unplaceable)
}


def error_class(exception_type: str | None) -> type[TaskError] | None:
    """The TaskError subclass named by a result's ``exception_type``, if the launcher wrote it."""
    return _TASK_ERRORS.get(exception_type or "")
