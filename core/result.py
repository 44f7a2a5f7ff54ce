"""Per-task result records and their JSON form."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import TaskCancelled, TaskError, TaskFailed, TaskTimeout, error_class


class TaskStatus(str, enum.Enum):
    """How a task ended."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class TaskResult:
    """The record of one finished task.

    Attributes:
        task_id: the task's id, as given or generated from the ensemble.
        status: ``success``, ``failed``, ``timeout`` or ``cancelled``.
        result: the return value of a Python task.
        stdout: the captured stdout tail of a command (when stdout is returned).
        stderr: the captured stderr tail of a command.
        returncode: the exit code of a command (negative: killed by that signal).
        exception: the exception type and message, then the remote traceback.
        exception_type: the qualified name of the exception's type.
        start_time: when the task started (seconds since the epoch).
        end_time: when the task ended (seconds since the epoch).
        node: the host the task ran on (its first one, where it started).
        cpus: the CPU ids assigned to the task on that host.
        gpus: the GPU ids assigned to the task on that host.
        submit_time: when the task was submitted (seconds since the epoch).
        attempts: how many times the task was started (more than 1 after a retry).
        hosts: every host the task ran on (several for a multi-node MPI task).
        history: what happened to its earlier attempts (a lost worker or node, a failure that
            was retried), one line each.
    """

    task_id: str
    status: TaskStatus
    result: Any = None
    stdout: str | None = None
    stderr: str | None = None
    returncode: int | None = None
    exception: str | None = None
    exception_type: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    node: str | None = None
    cpus: list[int] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)
    submit_time: float | None = None
    attempts: int = 1
    hosts: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the task succeeded."""
        return self.status is TaskStatus.SUCCESS

    @property
    def duration_s(self) -> float | None:
        """Run time in seconds, when the task started."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    def unwrap(self) -> Any:
        """Return the task's value, or raise the TaskError that matches how it ended.

        A failure the launcher itself reported (a lost worker or node, a task no node can hold)
        raises its own class (``WorkerLost``, ``NodeLost``, ``Unplaceable``), all TaskFailed.
        """
        if self.status is TaskStatus.SUCCESS:
            return self.result if self.result is not None or self.stdout is None else self.stdout
        raise (error_class(self.exception_type) or _ERROR_BY_STATUS[self.status])(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (see ``write_results_to_json``)."""
        record = asdict(self)
        record["status"] = self.status.value
        record["result"] = _jsonable(self.result)
        return record


_ERROR_BY_STATUS: dict[TaskStatus, type[TaskError]] = {
    TaskStatus.FAILED: TaskFailed,
    TaskStatus.TIMEOUT: TaskTimeout,
    TaskStatus.CANCELLED: TaskCancelled,
}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return repr(value)


def write_results_to_json(
    results: Iterable[TaskResult] | Mapping[str, TaskResult], path: str | os.PathLike[str]
) -> Path:
    """Write results as JSON and return the path.

    The file holds ``{"summary": {"total": N, "success": ..., "failed": ..., "timeout": ...,
    "cancelled": ...}, "results": [record, ...]}`` with one record per task in submission order;
    each record has the fields of ``TaskResult`` (values that are not JSON become their ``repr``).
    """
    records = list(results.values()) if isinstance(results, Mapping) else list(results)
    summary: dict[str, int] = {"total": len(records)}
    for status in TaskStatus:
        summary[status.value] = sum(1 for r in records if r.status is status)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(
        json.dumps({"summary": summary, "results": [r.to_dict() for r in records]}, indent=1)
    )
    tmp.replace(out)
    return out
