"""Ensemble tools with resource options, called through a real in-process MCP client.

The GPU ids are the ones the SystemConfig declares (this machine has no GPU: the allowed
stand-in at the GPU boundary); what each task sees in its environment is real.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client

from core import LauncherConfig, SystemConfig
from ensemble_mcp.server import Server
from tests.ensemble_mcp.conftest_mcp import warm

RANKS = (
    "import os; r = os.environ.get('OMPI_COMM_WORLD_RANK') or os.environ.get('PMI_RANK');"
    "c = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Cpus_allowed_list')];"
    "os.write(1, f'{r}:{c[0]}\\n'.encode())"
)  # one write per rank: mpiexec forwards each rank's writes as they come, so two writes interleave


def build() -> Server:
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    server = Server(
        "resources-test",
        system_config=SystemConfig(ncpus=2, ngpus=2),
        launcher_config=LauncherConfig(
            nlevels=0, gpu_selector="CUDA_VISIBLE_DEVICES", mpiexec="mpiexec.mpich"
        ),
    )
    server.ensemble_tool("sh -c {script}", name="gpu_task", ngpus_per_process=1,
                         submit_tool=False)  # fmt: skip
    server.ensemble_tool(f"{sys.executable} -c {{code}}", name="two_ranks", ppn=2,
                         submit_tool=False)  # fmt: skip
    server.ensemble_tool("sh -c {script}", name="too_wide", ppn=3, submit_tool=False)
    return server


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from warm(build())


async def call(server: Server, tool: str, arguments: dict[str, Any]) -> Any:
    async with Client(server) as client:
        with anyio.fail_after(60):
            return await client.call_tool(tool, arguments)


async def test_a_gpu_tool_gives_each_task_its_gpu_and_says_which(server: Server) -> None:
    script = 'echo "$CUDA_VISIBLE_DEVICES"'
    result = await call(server, "gpu_task", {"script": [script, script]})
    assert not result.is_error, result.content[0].text
    tasks = result.structured_content["tasks"]
    assert [t["status"] for t in tasks] == ["success", "success"]
    for task in tasks:
        assert task["result"].strip() == ",".join(task["gpus"])
        assert task["node"] and len(task["cpus"]) == 1


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec.mpich") is None, reason="MPICH is not installed")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
async def test_a_ppn_2_tool_runs_two_ranks_on_the_two_cpus_it_reports(server: Server) -> None:
    result = await call(server, "two_ranks", {"code": [RANKS]})
    assert not result.is_error, result.content[0].text
    (task,) = result.structured_content["tasks"]
    assert task["status"] == "success", task.get("error")
    ranks = dict(line.split(":") for line in task["result"].split())
    assert sorted(ranks) == ["0", "1"]
    assert sorted(ranks.values()) == sorted(str(c) for c in task["cpus"])


async def test_a_tool_asking_for_more_than_a_node_has_is_refused_before_anything_runs(
    server: Server,
) -> None:
    calls = server.num_calls
    result = await call(server, "too_wide", {"script": ["true"]})
    assert result.is_error
    text = result.content[0].text
    assert "ppn=3" in text and "the largest node has 2 CPU slots" in text
    assert "Nothing was run." in text
    assert server.num_calls == calls
