"""What a node offers: CPUs for real, GPUs from recorded tool outputs.

This machine has no GPU, so the GPU side is tested at its boundary: the parsers get outputs
recorded from real nodes (serial numbers and UUIDs replaced), and ``probe_node`` runs fake
``nvidia-smi`` / ``rocm-smi`` / ``xpu-smi`` executables placed first on PATH that print them.
That is the one mock allowed here; the subprocess, timeout and PATH handling are the real code.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.inventory import (
    PRESETS,
    NodeInventory,
    gpus_from_selector,
    parse_nvidia_smi_list,
    parse_rocm_smi,
    parse_xpu_smi_discovery,
    preset,
    probe_node,
    usable_cpus,
)
from tests.conftest import pids_with_env

# nvidia-smi -L on a Polaris-like node (4 x A100).
NVIDIA_4 = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-2a6c1b7e-0f3d-4c1e-9a11-0c2f8e3b9d01)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5b0e7c92-18aa-4d6f-b0c2-7e4d1a9f3c02)
GPU 2: NVIDIA A100-SXM4-40GB (UUID: GPU-9c3d2e81-6b7f-4a20-8d3e-1f5a0b6c7d03)
GPU 3: NVIDIA A100-SXM4-40GB (UUID: GPU-e4f1a0b3-2c5d-4e6f-9a7b-8c9d0e1f2a04)
"""
# nvidia-smi -L with GPU 0 split into two MIG instances (driver >= 470 format).
NVIDIA_MIG = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-2a6c1b7e-0f3d-4c1e-9a11-0c2f8e3b9d01)
  MIG 3g.20gb     Device  0: (UUID: MIG-11111111-2222-5333-8444-555555555555)
  MIG 3g.20gb     Device  1: (UUID: MIG-66666666-7777-5888-9999-aaaaaaaaaaaa)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5b0e7c92-18aa-4d6f-b0c2-7e4d1a9f3c02)
"""
NVIDIA_NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
# rocm-smi --showid on an MI250X node (each GCD is a GPU).
ROCM = """\


============================ ROCm System Management Interface ============================
=========================================== ID ===========================================
GPU[0]		: Device Name: 		Aldebaran/MI200 [Instinct MI250X]
GPU[0]		: Device ID: 		0x7408
GPU[1]		: Device Name: 		Aldebaran/MI200 [Instinct MI250X]
GPU[1]		: Device ID: 		0x7408
GPU[2]		: Device Name: 		Aldebaran/MI200 [Instinct MI250X]
GPU[2]		: Device ID: 		0x7408
==========================================================================================
================================== End of ROCm SMI Log ===================================
"""
# xpu-smi discovery on an Aurora node (boxed table; first two of six devices kept).
XPU_BOXED = """\
+-----------+--------------------------------------------------------------------------------------+
| Device ID | Device Information                                                                   |
+-----------+--------------------------------------------------------------------------------------+
| 0         | Device Name: Intel(R) Data Center GPU Max 1550                                       |
|           | Vendor Name: Intel(R) Corporation                                                    |
|           | SOC UUID: 00000000-0000-0000-1111-222233334444                                       |
|           | PCI BDF Address: 0000:18:00.0                                                        |
|           | DRM Device: /dev/dri/card0                                                           |
|           | Function Type: physical                                                              |
+-----------+--------------------------------------------------------------------------------------+
| 1         | Device Name: Intel(R) Data Center GPU Max 1550                                       |
|           | Vendor Name: Intel(R) Corporation                                                    |
|           | SOC UUID: 00000000-0000-0000-5555-666677778888                                       |
|           | PCI BDF Address: 0000:42:00.0                                                        |
|           | DRM Device: /dev/dri/card1                                                           |
|           | Function Type: physical                                                              |
+-----------+--------------------------------------------------------------------------------------+
"""
# xpu-smi 2.x prints the same table without borders.
XPU_PLAIN = """\

  Device ID     Device Information
  0             Device Name: Intel(R) Arc(TM) Pro B60 Graphics
                Vendor Name: Intel(R) Corporation
  1             Device Name: Intel(R) Arc(TM) Pro B60 Graphics
                Vendor Name: Intel(R) Corporation
"""


def test_nvidia_gpus_are_their_indices() -> None:
    assert parse_nvidia_smi_list(NVIDIA_4) == ("0", "1", "2", "3")


def test_a_mig_partitioned_gpu_is_replaced_by_its_instances() -> None:
    assert parse_nvidia_smi_list(NVIDIA_MIG) == (
        "MIG-11111111-2222-5333-8444-555555555555",
        "MIG-66666666-7777-5888-9999-aaaaaaaaaaaa",
        "1",
    )


def test_nvidia_error_text_gives_no_gpus() -> None:
    assert parse_nvidia_smi_list(NVIDIA_NO_DRIVER) == ()


def test_rocm_gpus_are_the_distinct_indices() -> None:
    assert parse_rocm_smi(ROCM) == ("0", "1", "2")


@pytest.mark.parametrize("text", [XPU_BOXED, XPU_PLAIN])
def test_xpu_devices_from_either_table_style(text: str) -> None:
    assert parse_xpu_smi_discovery(text) == ("0", "1")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("CUDA_VISIBLE_DEVICES", "2,3", ("2", "3")),
        ("CUDA_VISIBLE_DEVICES", " 1 , 0 ", ("1", "0")),
        ("CUDA_VISIBLE_DEVICES", "GPU-5b0e7c92-18aa-4d6f", ("GPU-5b0e7c92-18aa-4d6f",)),
        ("CUDA_VISIBLE_DEVICES", "-1", ()),
        ("CUDA_VISIBLE_DEVICES", "NoDevFiles", ()),
        ("ZE_AFFINITY_MASK", "0.0,0.1,1.0", ("0.0", "0.1", "1.0")),
        ("ROCR_VISIBLE_DEVICES", "0,,1", ("0", "1")),
        ("HIP_VISIBLE_DEVICES", "0,$(x)", ("0",)),
    ],
)
def test_a_selector_value_names_the_usable_gpus(
    variable: str, value: str, expected: tuple[str, ...]
) -> None:
    assert gpus_from_selector(variable, value) == expected


# ---------------------------------------------------------------- probing this node


def fake_tool(directory: Path, name: str, output: str, exit_code: int = 0) -> None:
    """An executable standing in for a GPU tool: prints ``output`` (GPU boundary, see above)."""
    (directory / f"{name}.out").write_text(output)
    script = directory / name
    script.write_text(f"#!/bin/sh\ncat '{directory / (name + '.out')}'\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    return directory


def env_with(tools: Path, **variables: str) -> dict[str, str]:
    return {"PATH": f"{tools}:/usr/bin:/bin", **variables}


def test_cpus_are_this_process_affinity() -> None:
    assert usable_cpus() == tuple(sorted(os.sched_getaffinity(0)))
    assert probe_node(env={"PATH": "/nonexistent"}).cpus == usable_cpus()


def test_a_node_without_gpu_tools_has_no_gpus() -> None:
    assert probe_node(env={"PATH": "/nonexistent"}) == NodeInventory(usable_cpus())


def test_cpus_follow_a_narrowed_affinity() -> None:
    before = os.sched_getaffinity(0)
    cpu = min(before)
    try:
        os.sched_setaffinity(0, {cpu})
        assert probe_node(env={"PATH": "/nonexistent"}).cpus == (cpu,)
    finally:
        os.sched_setaffinity(0, before)


def test_nvidia_smi_output_becomes_cuda_gpus(tools: Path) -> None:
    fake_tool(tools, "nvidia-smi", NVIDIA_4)
    node = probe_node(env=env_with(tools))
    assert (node.gpus, node.gpu_selector, node.gpu_source) == (
        ("0", "1", "2", "3"),
        "CUDA_VISIBLE_DEVICES",
        "nvidia-smi -L",
    )


def test_a_set_selector_variable_wins_over_the_tools(tools: Path) -> None:
    fake_tool(tools, "nvidia-smi", NVIDIA_4)
    node = probe_node(env=env_with(tools, CUDA_VISIBLE_DEVICES="2,3"))
    assert (node.gpus, node.gpu_selector, node.gpu_source) == (
        ("2", "3"),
        "CUDA_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES",
    )


def test_an_existing_ze_affinity_mask_names_intel_tiles(tools: Path) -> None:
    fake_tool(tools, "xpu-smi", XPU_BOXED)
    node = probe_node(env=env_with(tools, ZE_AFFINITY_MASK="0.0,0.1"))
    assert (node.gpus, node.gpu_selector) == (("0.0", "0.1"), "ZE_AFFINITY_MASK")


def test_cuda_visible_devices_minus_one_means_no_gpu_even_with_nvidia_smi(tools: Path) -> None:
    fake_tool(tools, "nvidia-smi", NVIDIA_4)
    node = probe_node(env=env_with(tools, CUDA_VISIBLE_DEVICES="-1"))
    assert (node.gpus, node.gpu_source) == ((), "CUDA_VISIBLE_DEVICES")


def test_a_failing_tool_is_skipped_for_the_next(tools: Path) -> None:
    fake_tool(tools, "nvidia-smi", NVIDIA_NO_DRIVER, exit_code=9)
    fake_tool(tools, "rocm-smi", ROCM)
    node = probe_node(env=env_with(tools))
    assert (node.gpus, node.gpu_selector, node.gpu_source) == (
        ("0", "1", "2"),
        "ROCR_VISIBLE_DEVICES",
        "rocm-smi --showid",
    )


def test_xpu_smi_is_asked_last(tools: Path) -> None:
    fake_tool(tools, "xpu-smi", XPU_PLAIN)
    node = probe_node(env=env_with(tools))
    assert (node.gpus, node.gpu_selector) == (("0", "1"), "ZE_AFFINITY_MASK")


def test_a_hanging_tool_is_cut_off_by_the_timeout_and_leaves_nothing(
    tools: Path, mark: str
) -> None:
    # Had the probe waited, this nvidia-smi would have answered (after 60 s) and won.
    fake_tool(tools, "nvidia-smi.late", NVIDIA_4)
    hang = tools / "nvidia-smi"
    hang.write_text(f"#!/bin/sh\nsleep 60\ncat '{tools / 'nvidia-smi.late.out'}'\n")
    hang.chmod(0o755)
    fake_tool(tools, "rocm-smi", ROCM)
    name, value = mark.split("=", 1)
    node = probe_node(env=env_with(tools, **{name: value}), timeout_s=0.5)
    assert (node.gpus, node.gpu_source) == (("0", "1", "2"), "rocm-smi --showid")
    assert pids_with_env(mark) == []  # the tool's own child (sleep) was killed with it


def test_a_tool_that_is_not_executable_is_harmless(tools: Path) -> None:
    (tools / "nvidia-smi").write_text("not a program")
    (tools / "nvidia-smi").chmod(0o644)
    assert probe_node(env=env_with(tools)).gpus == ()


# ---------------------------------------------------------------- presets


def test_aurora_preset_leaves_out_cores_0_and_52_and_has_12_tiles() -> None:
    aurora = preset("Aurora")
    assert len(aurora.cpus) == 102
    assert 0 not in aurora.cpus and 52 not in aurora.cpus
    assert (aurora.cpus[0], aurora.cpus[-1]) == (1, 103)
    assert aurora.gpus == tuple(f"{g}.{t}" for g in range(6) for t in (0, 1))
    assert aurora.gpu_selector == "ZE_AFFINITY_MASK"


def test_polaris_preset_has_32_cores_and_4_gpus_nearest_first() -> None:
    polaris = preset("polaris")
    assert polaris.cpus == tuple(range(32))
    assert polaris.gpus == ("3", "2", "1", "0")
    assert polaris.gpu_selector == "CUDA_VISIBLE_DEVICES"


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match="no preset named 'frontier'; known presets: aurora, polaris"
    ):
        preset("frontier")
    assert sorted(PRESETS) == ["aurora", "polaris"]
