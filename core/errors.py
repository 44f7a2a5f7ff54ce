"""The exception tree of the launcher core.

::

    EnsembleError
    ├── ConfigError        (also ValueError) bad config or ensemble, caught before anything starts
    ├── LaunchError        a worker or sub-master failed to start (argv and stderr tail attached)
    ├── LauncherBroken     the service stopped or lost its workers; pending futures fail with it
    ├── ProtocolError      bad frame or version mismatch between launcher processes
    └── TaskError          raised from ``Future.result()``; carries the TaskResult
        ├── TaskFailed     the task raised or exited non-zero
        ├── TaskTimeout    the task ran past its timeout
        └── TaskCancelled  the task was cancelled
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.result import TaskResult


class EnsembleError(Exception):
    """Base class of every error raised by the launcher core."""


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


class TaskTimeout(TaskError):
    """The task ran longer than its timeout and was killed."""


class TaskCancelled(TaskError):
    """The task was cancelled before it finished."""
