"""What one node offers: the CPUs this process may run on and the GPUs it can see.

:func:`probe_node` answers for the node it runs on:

- **CPUs**: ``os.sched_getaffinity(0)``, i.e. what the batch system's cgroup or a parent's
  pinning leaves to this process (not ``os.cpu_count()``).
- **GPUs**, first answer wins:

  1. a selector variable already set and non-empty (``CUDA_VISIBLE_DEVICES``,
     ``ROCR_VISIBLE_DEVICES``, ``HIP_VISIBLE_DEVICES``, ``ZE_AFFINITY_MASK``, in this order): the
     job or the user has narrowed the GPUs, and exactly those ids are usable (Slurm's
     ``--gpus`` sets ``CUDA_VISIBLE_DEVICES``; on Aurora a mask such as ``0.0,0.1`` names tiles).
     CUDA's "no device" values (``-1``, ``NoDevFiles``) mean no GPU;
  2. ``nvidia-smi -L``: one id per GPU (its index, in nvidia-smi's PCI order; the MIG
     instances' ``MIG-...`` UUIDs in place of a GPU that has them);
  3. ``rocm-smi --showid``: the ``GPU[N]`` indices;
  4. ``xpu-smi discovery``: the device ids (whole GPUs: whether Level Zero shows tiles as
     devices depends on ``ZE_FLAT_DEVICE_HIERARCHY``, so tiles come from a preset or a mask).

  Each tool runs under a short timeout; a tool that is absent, fails or hangs counts as "no
  GPUs of that kind" and the next one is asked.

:data:`PRESETS` describes known systems without probing (their facts are cited below).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SELECTORS = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
)
_NO_CUDA_DEVICE = {"-1", "NoDevFiles"}
_GPU_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*", re.ASCII)
_NVIDIA_GPU = re.compile(r"GPU (\d+): .*\(UUID: (GPU-[^)\s]+)\)", re.ASCII)
_NVIDIA_MIG = re.compile(r"\s+MIG .*Device\s+\d+: \(UUID: (MIG-[^)\s]+)\)", re.ASCII)
_ROCM_GPU = re.compile(r"GPU\[(\d+)\]", re.ASCII)
_XPU_DEVICE = re.compile(r"\|?\s*(\d+)\s*\|?\s+[A-Za-z][A-Za-z ]*:", re.ASCII)


@dataclass(frozen=True, slots=True)
class NodeInventory:
    """The CPU ids and GPU ids one node offers, and how its GPUs are selected."""

    cpus: tuple[int, ...]
    gpus: tuple[str, ...] = ()
    gpu_selector: str | None = None
    """The variable these GPU ids are written to (None when there are no GPUs)."""
    gpu_source: str = "none"
    """Where the GPU ids came from (a variable or a tool), for logs."""


# Aurora (ALCF): 2 Xeon Max CPUs x 52 cores (ids 0-103; 104-207 are their second hyperthreads),
# cores 0 and 52 reserved for system services since 2025-03-31; 6 PVC GPUs x 2 tiles named
# "$gpu.$tile" for ZE_AFFINITY_MASK. Source: argonne-lcf/user-guides,
# docs/aurora/running-jobs-aurora.md ("MPI rank and thread binding to cores and GPUs").
# Polaris (ALCF): 1 AMD EPYC Milan, 32 cores (ids 0-31; 32-63 hyperthreads), 4 NVIDIA A100.
# GPUs are listed 3,2,1,0 so that handing out CPUs and GPUs in order pairs each block of
# 8 cores with its nearest GPU ("need to assign GPUs in reverse order due to topology", ALCF's
# set_affinity_gpu_polaris.sh). Source: argonne-lcf/user-guides, docs/polaris/running-jobs.md.
PRESETS: Mapping[str, NodeInventory] = {
    "aurora": NodeInventory(
        cpus=tuple(cpu for cpu in range(104) if cpu not in (0, 52)),
        gpus=tuple(f"{gpu}.{tile}" for gpu in range(6) for tile in range(2)),
        gpu_selector="ZE_AFFINITY_MASK",
        gpu_source="preset aurora",
    ),
    "polaris": NodeInventory(
        cpus=tuple(range(32)),
        gpus=("3", "2", "1", "0"),
        gpu_selector="CUDA_VISIBLE_DEVICES",
        gpu_source="preset polaris",
    ),
}

_PROBES = (
    (("nvidia-smi", "-L"), "CUDA_VISIBLE_DEVICES"),
    (("rocm-smi", "--showid"), "ROCR_VISIBLE_DEVICES"),
    (("xpu-smi", "discovery"), "ZE_AFFINITY_MASK"),
)


def probe_node(env: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> NodeInventory:
    """Describe the node this process runs on (see the module doc for the order of questions).

    Args:
        env: the environment to read selector variables and ``PATH`` from (default
            ``os.environ``); the GPU tools run with it.
        timeout_s: how long each GPU tool may take.
    """
    env = os.environ if env is None else env
    cpus = usable_cpus()
    for variable in SELECTORS:
        if value := env.get(variable, "").strip():
            return NodeInventory(cpus, gpus_from_selector(variable, value), variable, variable)
    for argv, selector in _PROBES:
        output = _run_tool(argv, env, timeout_s)
        gpus = _PARSERS[argv[0]](output) if output is not None else ()
        if gpus:
            return NodeInventory(cpus, gpus, selector, " ".join(argv))
    return NodeInventory(cpus)


def preset(name: str) -> NodeInventory:
    """The inventory of a known system's compute node (``aurora``, ``polaris``)."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"no preset named {name!r}; known presets: {known}") from None


def usable_cpus() -> tuple[int, ...]:
    """The CPU ids this process may run on, sorted."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return tuple(range(os.cpu_count() or 1))


def gpus_from_selector(variable: str, value: str) -> tuple[str, ...]:
    """The GPU ids a selector variable's value names (ids that are not well-formed are dropped)."""
    entries = [entry.strip() for entry in value.split(",")]
    if variable == "CUDA_VISIBLE_DEVICES" and entries and entries[0] in _NO_CUDA_DEVICE:
        return ()
    return tuple(entry for entry in entries if _GPU_ID.fullmatch(entry))


def parse_nvidia_smi_list(text: str) -> tuple[str, ...]:
    """GPU ids from ``nvidia-smi -L``: indices, or a GPU's MIG UUIDs when it is partitioned."""
    gpus: list[list[str]] = []
    for line in text.splitlines():
        if match := _NVIDIA_GPU.match(line):
            gpus.append([match[1]])
        elif (match := _NVIDIA_MIG.match(line)) and gpus:
            if gpus[-1][0].isdigit():
                gpus[-1] = []
            gpus[-1].append(match[1])
    return tuple(gpu for ids in gpus for gpu in ids)


def parse_rocm_smi(text: str) -> tuple[str, ...]:
    """GPU ids from ``rocm-smi``: the distinct ``GPU[N]`` indices, in order of appearance."""
    return tuple(dict.fromkeys(match[1] for match in _ROCM_GPU.finditer(text)))


def parse_xpu_smi_discovery(text: str) -> tuple[str, ...]:
    """Device ids from ``xpu-smi discovery`` (boxed or plain table)."""
    ids = (match[1] for line in text.splitlines() if (match := _XPU_DEVICE.match(line)))
    return tuple(dict.fromkeys(ids))


_PARSERS = {
    "nvidia-smi": parse_nvidia_smi_list,
    "rocm-smi": parse_rocm_smi,
    "xpu-smi": parse_xpu_smi_discovery,
}


def run_tool(
    argv: Sequence[str], env: Mapping[str, str], timeout_s: float
) -> tuple[int, str] | None:
    """Run a local tool bounded in time: (exit code, stdout + stderr), or None if it cannot run.

    The tool gets its own session; when it runs past ``timeout_s`` the whole session is killed,
    so nothing it started outlives the question (returns None then too).
    """
    path = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if path is None:
        return None
    try:
        process = subprocess.Popen(
            [path, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    except OSError:
        return None
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None
    return process.returncode, output.decode(errors="replace")


def _run_tool(argv: tuple[str, ...], env: Mapping[str, str], timeout_s: float) -> str | None:
    """A GPU tool's output, or None when it is absent, fails or runs past ``timeout_s``."""
    done = run_tool(argv, env, timeout_s)
    return done[1] if done is not None and done[0] == 0 else None
