"""The Task model: one unit of work (a Python callable, a command, or an MPI program).

Each setting (``nnodes``, ``ppn``, ``env``, ...) has one rule, in ``core.spec_values.CHECKS``;
the field types below apply it, so ``Task``, ``TaskOptions``, ensemble files and
``ensemble_tool`` options accept and refuse the same values with the same messages.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError
from core.spec_values import CHECKS

__all__ = (
    "DEFAULT_OPTIONS",
    "CpuAffinity",
    "Env",
    "GpuAffinity",
    "GpuCount",
    "NodeCount",
    "ProcessCount",
    "Retries",
    "RunDir",
    "Shell",
    "Task",
    "TaskOptions",
    "Timeout",
    "first_problem",
)


def _rule(setting: str) -> BeforeValidator:
    return BeforeValidator(CHECKS[setting])


NodeCount = Annotated[int, _rule("nnodes")]
"""Nodes a task spans: a whole number >= 1."""
ProcessCount = Annotated[int, _rule("ppn")]
"""Processes per node: a whole number >= 1."""
GpuCount = Annotated[int, _rule("ngpus_per_process")]
"""GPUs per process: a whole number >= 0."""
Env = Annotated[dict[str, str], _rule("env")]
"""Environment variables: names without ``=``, string values."""
RunDir = Annotated[str | None, _rule("run_dir")]
"""The directory to run in: a non-empty path without ``..``, or None."""
Timeout = Annotated[float | None, _rule("timeout")]
"""Seconds > 0 after which the task is killed, or None."""
CpuAffinity = Annotated[list[int] | None, _rule("cpu_affinity")]
"""CPU ids (a list, or ``"0,1"``), or None."""
GpuAffinity = Annotated[list[str] | None, _rule("gpu_affinity")]
"""GPU ids (a list, or ``"0,1"``), or None."""
Shell = Annotated[bool, _rule("shell")]
"""Whether a command runs under ``/bin/sh -c``."""
Retries = Annotated[int | None, _rule("max_retries")]
"""Re-runs after the first attempt: a whole number >= 0, or None for the launcher's setting."""


def first_problem(error: ValidationError) -> tuple[str, str]:
    """The field and the message of the first problem pydantic found, for a ConfigError.

    A rule's own message (a ValueError from ``CHECKS``) is given without pydantic's prefix.
    """
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "?"
    cause = (first.get("ctx") or {}).get("error")
    if first["type"] == "value_error" and cause is not None:
        return field, str(cause)
    return field, f"{first['msg']} (got {first['input']!r})"


class TaskOptions(BaseModel):
    """Settings shared by the tasks of one submission, validated once, not once per task.

    Used by ``Launcher.map_tasks`` and ``Launcher.submit_commands``; the fields mean what the
    ``Task`` fields of the same names mean.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nnodes: NodeCount = 1
    ppn: ProcessCount = 1
    ngpus_per_process: GpuCount = 0
    env: Env = Field(default_factory=dict)
    run_dir: RunDir = None
    timeout: Timeout = None
    cpu_affinity: CpuAffinity = None
    gpu_affinity: GpuAffinity = None
    max_retries: Retries = None
    failure_retries: Retries = None

    @property
    def nprocs(self) -> int:
        """Processes each task runs (``nnodes * ppn``)."""
        return self.nnodes * self.ppn

    def check_callable(self) -> None:
        """Refuse options a Python callable cannot run with (it runs in one process).

        Raises:
            ConfigError: ``nnodes * ppn > 1``.
        """
        if self.nprocs > 1:
            raise ConfigError(
                f"a Python callable runs in one process; nnodes={self.nnodes}, "
                f"ppn={self.ppn} need a command"
            )


DEFAULT_OPTIONS = TaskOptions()


class Task(BaseModel):
    """One task of an ensemble.

    ``executable`` is a Python callable (called with ``args`` and ``kwargs`` in a persistent
    worker process), a command line string (split with ``shlex``, run without a shell unless
    ``shell=True``), or an argv list. A command with ``nnodes * ppn > 1`` runs under ``mpiexec``.

    ``max_retries`` is how many times the task runs again when its worker or node is lost while
    it runs; ``failure_retries``, how many times it runs again after failing by itself (an
    exception, a non-zero exit, a timeout). None takes the launcher's setting
    (``LauncherConfig.max_retries``, default 1, and ``failure_retries``, default 0).

    Example:
        >>> Task(task_id="t0", executable=["echo", "hi"]).kind
        'command'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    task_id: str = Field(min_length=1)
    nnodes: NodeCount = 1
    ppn: ProcessCount = 1
    ngpus_per_process: GpuCount = 0
    executable: Callable[..., Any] | str | list[str]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)
    env: Env = Field(default_factory=dict)
    run_dir: RunDir = None
    timeout: Timeout = None
    cpu_affinity: CpuAffinity = None
    gpu_affinity: GpuAffinity = None
    shell: Shell = False
    max_retries: Retries = None
    failure_retries: Retries = None

    @field_validator("executable")
    @classmethod
    def _executable_not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("executable must not be an empty command")
        if isinstance(value, list) and not value:
            raise ValueError("executable must not be an empty argv list")
        return value

    @model_validator(mode="after")
    def _args_only_for_callables(self) -> Task:
        if self.kind == "command" and (self.args or self.kwargs):
            raise ValueError(
                "args and kwargs apply to Python callables; put a command's "
                "arguments in the command itself"
            )
        return self

    @property
    def kind(self) -> str:
        """``python`` for a callable, ``command`` for a command line or argv."""
        return "python" if callable(self.executable) else "command"

    @property
    def nprocs(self) -> int:
        """Processes the task runs (``nnodes * ppn``): the slots it occupies."""
        return self.nnodes * self.ppn

    def argv(self) -> list[str]:
        """The command as an argv list (``['/bin/sh', '-c', cmd]`` when ``shell`` is set)."""
        exe = self.executable
        if callable(exe):
            raise TypeError(f"task {self.task_id} is a Python callable, not a command")
        if self.shell:
            return ["/bin/sh", "-c", exe if isinstance(exe, str) else shlex.join(exe)]
        return shlex.split(exe) if isinstance(exe, str) else list(exe)
