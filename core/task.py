"""The Task model: one unit of work (a Python callable, a command, or an MPI program)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TaskOptions(BaseModel):
    """Settings shared by the tasks of one submission, validated once, not once per task.

    Used by ``Launcher.map_tasks`` and ``Launcher.submit_commands``; the fields mean what the
    ``Task`` fields of the same names mean.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nnodes: int = Field(default=1, ge=1)
    ppn: int = Field(default=1, ge=1)
    ngpus_per_process: int = Field(default=0, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    run_dir: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    cpu_affinity: list[int] | None = None
    gpu_affinity: list[str] | None = None

    @property
    def nprocs(self) -> int:
        """Processes each task runs (``nnodes * ppn``)."""
        return self.nnodes * self.ppn


DEFAULT_OPTIONS = TaskOptions()


class Task(BaseModel):
    """One task of an ensemble.

    ``executable`` is a Python callable (called with ``args`` and ``kwargs`` in a persistent
    worker process), a command line string (split with ``shlex``, run without a shell unless
    ``shell=True``), or an argv list. A command with ``nnodes * ppn > 1`` runs under ``mpiexec``.

    Example:
        >>> Task(task_id="t0", executable=["echo", "hi"]).kind
        'command'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    task_id: str = Field(min_length=1)
    nnodes: int = Field(default=1, ge=1)
    ppn: int = Field(default=1, ge=1)
    ngpus_per_process: int = Field(default=0, ge=0)
    executable: Callable[..., Any] | str | list[str]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    run_dir: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    cpu_affinity: list[int] | None = None
    gpu_affinity: list[str] | None = None
    shell: bool = False

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
