"""Interim MPI task command line (replaced by core.mpi's per-flavour builder)."""

from __future__ import annotations

from core.protocol import Placement


def mpi_argv(
    mpiexec: str, argv: list[str], placement: Placement | None, ppn: int, gpu_selector: str
) -> list[str]:
    """``mpiexec -n N argv`` for a task placed on ``placement``."""
    nodes = len(placement.parts) if placement is not None else 1
    return [mpiexec, "-n", str(nodes * ppn), *argv]
