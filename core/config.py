"""SystemConfig and LauncherConfig: the seed's configuration API, validated."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.inventory import PRESETS
from core.nodes import hostname

__all__ = ("LauncherConfig", "SystemConfig", "hostname")

ExecutorName = Literal["multiprocessing", "mpi"]
CommName = Literal["multiprocessing", "zmq"]
_UNSUPPORTED = {"dragon": "DragonHPC is not supported by this build"}


def _available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


class SystemConfig(BaseModel):
    """What one node offers: its CPUs and GPUs (every node of the run alike).

    ``cpus`` and ``gpus`` list the ids that tasks may use; each CPU id is one *slot*. Repeating a
    GPU id (``gpus=['0', '0', '1']``) oversubscribes it. Empty lists mean "all": every CPU this
    process may run on, and ``ngpus`` GPUs numbered from 0. A ``name`` that is a preset of
    ``core.inventory`` (``"aurora"``, ``"polaris"``) fills in what is not given from it. Without
    any SystemConfig, each node is asked what it has (``core.inventory.probe_node``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = "local"
    ncpus: int = Field(default_factory=lambda: len(_available_cpus()), ge=1)
    ngpus: int = Field(default=0, ge=0)
    cpus: list[int] = Field(default_factory=list)
    gpus: list[str | int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fill_ids(self) -> SystemConfig:
        preset = PRESETS.get(self.name.lower())
        if preset is not None:
            given = self.model_fields_set
            if not self.cpus and "ncpus" not in given:
                self.cpus = list(preset.cpus)
            if not self.gpus and "ngpus" not in given:
                self.gpus = list(preset.gpus)
        if not self.cpus:
            self.cpus = _available_cpus()[: self.ncpus] or list(range(self.ncpus))
            if len(self.cpus) < self.ncpus:
                self.cpus = list(range(self.ncpus))
        else:
            if len(set(self.cpus)) != len(self.cpus):
                raise ValueError(f"cpus has duplicate ids: {self.cpus}")
            self.ncpus = len(self.cpus)
        if not self.gpus:
            self.gpus = [str(i) for i in range(self.ngpus)]
        else:
            self.gpus = [str(g) for g in self.gpus]
            self.ngpus = len(self.gpus)
        return self


class LauncherConfig(BaseModel):
    """How the launcher runs: executors, transport, tree shape, retries, logging.

    ``child_executor_name`` starts sub-masters on other nodes: ``mpi`` through the MPI launcher
    (``srun`` inside a Slurm job, else ``mpiexec``, whose flavour is detected), ``ssh`` through
    plain ssh; ``multiprocessing`` starts children on this node only (a run over several nodes
    needs ``mpi`` or ``ssh``). Workers always start on their own node. ``task_executor_name``
    runs commands: ``multiprocessing`` directly (under ``mpiexec`` when ``nnodes * ppn > 1``),
    ``mpi`` always under ``mpiexec``. ``comm_name`` is the transport between processes of one
    node (``multiprocessing``: ``ipc://`` sockets; ``zmq``: ``tcp://`` with CURVE); between nodes
    it is always ``tcp://`` with CURVE. ``bind_host`` is the address masters listen on for
    children on other nodes (default: the address this node uses to reach them). ``nlevels`` and
    ``nchildren`` shape the tree (see ``core.tree``). ``prefetch`` caps the tasks queued per slot
    beyond the running one (it adapts to task duration up to this cap). ``max_retries``: re-runs of
    a task whose worker or node was lost while it ran; ``failure_retries``: re-runs of a task that
    failed by itself (exception, non-zero exit, timeout). Heartbeats between masters go every
    ``heartbeat_interval`` seconds; a peer silent for ``heartbeat_timeout`` is lost; a child that
    has not registered ``launch_timeout`` seconds after its start failed to start.
    ``profile`` (``basic`` or ``timeline``) writes, for every batch of tasks once it has ended, a
    profile to ``profile_dir`` (see docs/profiles.md; an MCP call is one batch).
    ``run_root``: when set, every task runs inside this directory: a relative ``run_dir`` is
    taken under it, a task without one runs in it, and a ``run_dir`` that resolves outside it
    (symlinks followed) is refused at submission.
    ``gpu_selector`` is the variable through which a task sees its GPUs (``ZE_AFFINITY_MASK``,
    ``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES``); by default the
    one that matches the GPUs found on the node, else ``ZE_AFFINITY_MASK``.
    """

    model_config = ConfigDict(extra="forbid")

    child_executor_name: Literal["multiprocessing", "mpi", "ssh"] = "multiprocessing"
    task_executor_name: ExecutorName = "multiprocessing"
    comm_name: CommName = "multiprocessing"
    report_interval: float = Field(default=10.0, gt=0)
    nlevels: int = Field(default=1, ge=0, le=3)
    return_stdout: bool = False
    worker_logs: bool = False
    master_logs: bool = False
    nchildren: int | None = Field(default=None, ge=1)
    profile: Literal["basic", "timeline"] | None = None
    profile_dir: str = "profiles"
    gpu_selector: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    prefetch: int = Field(default=64, ge=0, le=4096)
    tail_bytes: int = Field(default=64 * 1024, ge=256)
    log_dir: str = "logs"
    bind_host: str | None = None
    mpiexec: str = "mpiexec"
    run_root: str | None = Field(default=None, min_length=1)
    max_retries: int = Field(default=1, ge=0)
    failure_retries: int = Field(default=0, ge=0)
    heartbeat_interval: float = Field(default=1.0, gt=0)
    heartbeat_timeout: float = Field(default=10.0, gt=0)
    launch_timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _heartbeats_fit(self) -> LauncherConfig:
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_timeout={self.heartbeat_timeout} must be at least twice "
                f"heartbeat_interval={self.heartbeat_interval}"
            )
        return self

    @field_validator("child_executor_name", "task_executor_name", "comm_name", mode="before")
    @classmethod
    def _known_name(cls, value: object) -> object:
        if isinstance(value, str) and value in _UNSUPPORTED:
            raise ValueError(
                f"{value!r}: {_UNSUPPORTED[value]}; use 'multiprocessing', "
                "'mpi', 'ssh' (child executor) or 'zmq' (comm)"
            )
        return value

    @classmethod
    def auto(cls, nnodes: int = 1) -> LauncherConfig:
        """The configuration chosen when none is given: the seed's rule for ``nlevels``."""
        if nnodes <= 1:
            return cls(nlevels=0)
        nlevels = 1 if nnodes <= 64 else 2 if nnodes <= 2048 else 3
        return cls(nlevels=nlevels, child_executor_name="mpi", comm_name="zmq")
