"""``ensemble-mcp job``: the node side of a batch job, run as a job runs it.

The scheduler cannot exist here: its variables are set by hand (``jobscript``). The command, the
server it runs, the signals, the files and the MCP client that reads the connection file are real.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from core.errors import ConfigError
from ensemble_mcp.check import ServerCheckError, check_server, read_token_file
from ensemble_mcp.cli import main
from ensemble_mcp.connect import read_connection_file
from ensemble_mcp.job import BatchJob, JobFiles, find_job, job_directory
from tests.conftest import pids_with_env, processes_holding, wait_until_gone

from .jobscript import (
    ROOT,
    THIS_NODE,
    Job,
    connection_file_of,
    mode,
    pbs_env,
    slurm_env,
    start_command,
)

EXAMPLE = f"{ROOT / 'examples/agents/server.py'}:server"
WAIT_S = 60.0


def start(target: str, home: Path, env: dict[str, str], mark: str, *flags: str) -> Job:
    """``ensemble-mcp job TARGET`` with ``env`` as the scheduler's variables, ``mark`` set."""
    name, _, value = mark.partition("=")
    argv = [sys.executable, "-m", "ensemble_mcp.cli", "job", target, *flags]
    return start_command(argv, home, env, **{name: value})


async def call_through(connection: Path, tool: str, arguments: dict[str, Any]) -> Any:
    """What a client that knows only the connection file gets from ``tool``."""
    info = read_connection_file(connection)
    token = read_token_file(info.token_file)
    url = f"http://127.0.0.1:{info.port}{info.path}"
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        return await client.call_tool(tool, arguments)


def assert_ended_clean(job: Job, jobs: Path, mark: str) -> None:
    """The job said it cleaned up, left nothing in ``jobs``, and no process it started lives."""
    job.read_until("server stopped, connection files removed")
    assert list(jobs.iterdir()) == []
    assert wait_until_gone(mark) == []


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return f"{path}:server"


# -- finding the job -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "found"),
    [
        ({"PBS_JOBID": "12.pbs01", "PBS_NODEFILE": "/nodes"}, BatchJob("pbs", "12.pbs01")),
        ({"SLURM_JOB_ID": "777", "SLURM_JOB_NODELIST": "n[1-2]"}, BatchJob("slurm", "777")),
        ({"SLURM_JOB_ID": "778", "SLURM_NODELIST": "n1"}, BatchJob("slurm", "778")),
        (  # PBS first, as core.nodes reads the nodes
            {
                "PBS_JOBID": "1",
                "PBS_NODEFILE": "/n",
                "SLURM_JOB_ID": "2",
                "SLURM_JOB_NODELIST": "n",
            },
            BatchJob("pbs", "1"),
        ),
    ],
)
def test_find_job_reads_the_scheduler_and_id_from_the_environment(
    env: dict[str, str], found: BatchJob
) -> None:
    assert find_job(env) == found


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "not inside a batch job: neither PBS_JOBID nor SLURM_JOB_ID is set; submit"),
        ({"PBS_JOBID": "", "SLURM_JOB_ID": ""}, "not inside a batch job"),
        (
            {"PBS_JOBID": "12"},
            "PBS_JOBID is set but PBS_NODEFILE is not, so the job's nodes are unknown: run this "
            "inside a job that qsub started",
        ),
        (
            {"SLURM_JOB_ID": "7"},
            "SLURM_JOB_ID is set but SLURM_JOB_NODELIST is not, so the job's nodes are unknown: "
            "run this inside a job that sbatch started",
        ),
    ],
)
def test_find_job_outside_a_job_says_what_is_missing_and_how_to_submit(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        find_job(env)
    assert str(caught.value).startswith(message)


def test_the_job_directory_is_named_by_the_job_id_with_odd_characters_replaced(
    tmp_path: Path,
) -> None:
    assert job_directory(tmp_path, "4242.pbs01") == tmp_path / "4242.pbs01"
    assert job_directory(tmp_path, "12[3].pbs/../x y") == tmp_path / "12_3_.pbs_.._x_y"
    with pytest.raises(ConfigError, match=r"the job id '\.\.' cannot name a directory"):
        job_directory(tmp_path, "..")


def test_job_files_are_private_written_whole_and_removed_with_their_directory(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "jobs" / "9"
    directory.mkdir(parents=True, mode=0o755)  # left by someone, too open: tightened
    files = JobFiles.create(directory, "a-token")
    assert files.token_file.read_text() == "a-token\n"
    files.write_connection({"version": 1, "port": 5})
    assert json.loads(files.connection_file.read_text()) == {"version": 1, "port": 5}
    assert sorted(p.name for p in directory.iterdir()) == ["connection.json", "token"]
    assert (mode(directory), mode(files.token_file), mode(files.connection_file)) == (
        0o700,
        0o600,
        0o600,
    )
    files.remove()
    assert not directory.exists() and (tmp_path / "jobs").is_dir()


def test_job_files_refuse_a_path_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "9").write_text("")
    with pytest.raises(ConfigError, match=r"cannot make the job directory .*/9: "):
        JobFiles.create(tmp_path / "9", "a-token")


def test_the_job_command_outside_a_job_exits_2_and_makes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("PBS_JOBID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert main(["job", EXAMPLE]) == 2
    assert capsys.readouterr().err.startswith("ensemble-mcp job: not inside a batch job")
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("wait", ["0", "-1", "nan"])
def test_the_job_command_refuses_a_wait_that_is_not_positive(
    home: Path, wait: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["job", EXAMPLE, "--wait", wait]) == 2
    assert f"ensemble-mcp job: --wait must be a positive number of seconds, got {wait}" in (
        capsys.readouterr().err
    )
    assert list(home.iterdir()) == []


# -- the command, end to end ----------------------------------------------------------------


@pytest.mark.slow
def test_the_job_serves_a_client_of_its_connection_file_and_stops_on_sigint(
    home: Path, tmp_path: Path, mark: str
) -> None:
    jobs = tmp_path / "shared" / "jobs"
    job = start(EXAMPLE, home, slurm_env(THIS_NODE, "31"), mark, "--jobs-dir", str(jobs))
    try:
        path = connection_file_of(job)
        assert path == jobs / "31" / "connection.json"
        info = json.loads(path.read_text())
        assert (info["scheduler"], info["job_id"], info["pid"]) == ("slurm", "31", job.process.pid)
        token = Path(info["token_file"]).read_text().strip()
        assert processes_holding(token) == []
        result = anyio.run(call_through, path, "flame_speed", {"pressure": [1], "temperature": 298})
        assert [t["result"] for t in result.structured_content["tasks"]] == [0.38]
        assert len(pids_with_env(mark)) > 1  # the job and its launcher's workers
        job.process.send_signal(signal.SIGINT)
        assert job.process.wait(timeout=WAIT_S) == 128 + signal.SIGINT
    finally:
        job.stop()
    assert_ended_clean(job, jobs, mark)
    assert token not in job.output


@pytest.mark.slow
def test_a_signal_while_the_target_loads_stops_the_job_and_removes_its_files(
    home: Path, tmp_path: Path, mark: str
) -> None:
    target = write(
        tmp_path / "slow_server.py",
        "import time\nprint('loading', flush=True)\ntime.sleep(120)\n",
    )
    job = start(target, home, pbs_env(tmp_path, "55.pbs"), mark)
    try:
        job.read_until("loading")
        assert (home / ".ensemble-mcp" / "jobs" / "55.pbs" / "token").exists()
        job.process.send_signal(signal.SIGTERM)
        assert job.process.wait(timeout=WAIT_S) == 128 + signal.SIGTERM
    finally:
        job.stop()
    assert_ended_clean(job, home / ".ensemble-mcp" / "jobs", mark)
    assert "ensemble-mcp connect" not in job.output


@pytest.mark.slow
def test_a_server_that_refuses_the_job_token_does_not_start_and_leaves_nothing(
    home: Path, tmp_path: Path, mark: str
) -> None:
    target = write(
        tmp_path / "own_token.py",
        "from ensemble_mcp import Server\n"
        "server = Server('own', auth_token='a-token-of-its-own')\n"
        "@server.ensemble_tool\n"
        "def double(x: float) -> float:\n"
        "    return 2 * x\n",
    )
    job = start(target, home, pbs_env(tmp_path), mark)
    assert job.process.wait(timeout=WAIT_S) == 1
    assert_ended_clean(job, home / ".ensemble-mcp" / "jobs", mark)  # its launcher had started
    assert (
        "ensemble-mcp job: the server did not start: the server at http://127.0.0.1:" in job.output
    )
    assert "refused the request: Unauthorized: invalid bearer token" in job.output
    assert "ensemble-mcp connect" not in job.output


@pytest.mark.slow
def test_a_server_whose_start_up_fails_exits_1_and_leaves_nothing(
    home: Path, tmp_path: Path, mark: str
) -> None:
    target = write(
        tmp_path / "failing.py",
        "from contextlib import asynccontextmanager\n"
        "from ensemble_mcp import Server\n"
        "@asynccontextmanager\n"
        "async def lifespan(server):\n"
        "    raise RuntimeError('no database here')\n"
        "    yield\n"
        "server = Server('failing', lifespan=lifespan)\n"
        "@server.ensemble_tool\n"
        "def double(x: float) -> float:\n"
        "    return 2 * x\n",
    )
    job = start(target, home, slurm_env(THIS_NODE, "13"), mark)
    assert job.process.wait(timeout=WAIT_S) == 1
    assert_ended_clean(job, home / ".ensemble-mcp" / "jobs", mark)  # its launcher had started
    assert "RuntimeError: no database here" in job.output
    assert "ensemble-mcp job: the server did not start: its start-up failed" in job.output
    assert "ensemble-mcp connect" not in job.output


@pytest.mark.slow
def test_a_plain_mcp_server_is_served_behind_the_job_token(
    home: Path, tmp_path: Path, mark: str
) -> None:
    target = write(
        tmp_path / "plain.py",
        "from mcp.server.mcpserver import MCPServer\n"
        "server = MCPServer('plain', log_level='WARNING')\n"
        "@server.tool()\n"
        "def hello(name: str) -> str:\n"
        "    return f'hello {name}'\n",
    )
    job = start(target, home, slurm_env(THIS_NODE, "8"), mark)
    try:
        path = connection_file_of(job)
        info = json.loads(path.read_text())
        assert info["target"] == target
        result = anyio.run(call_through, path, "hello", {"name": "node"})
        assert result.content[0].text == "hello node"
        with pytest.raises(ServerCheckError, match="Unauthorized"):
            check_server(info["url"], None)
    finally:
        assert job.stop() == 128 + signal.SIGTERM
    assert_ended_clean(job, home / ".ensemble-mcp" / "jobs", mark)
