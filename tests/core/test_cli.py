"""`ensemble-mcp run`, EnsembleLauncher and the results JSON, with real commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import EnsembleError, LauncherConfig, SystemConfig, write_results_to_json
from core.config import LauncherConfig as Config
from core.launcher import EnsembleLauncher

CLI = [sys.executable, "-m", "ensemble_mcp.cli"]


def write(path: Path, ensembles: dict) -> Path:
    path.write_text(json.dumps({"ensembles": ensembles}))
    return path


def test_the_seed_quick_start_runs_five_tasks_and_writes_their_results(tmp_path: Path) -> None:
    # The seed README's example with ./exe replaced by a real command.
    config = write(
        tmp_path / "config.json",
        {
            "example_ensemble": {
                "nnodes": 1,
                "ppn": 1,
                "cmd_template": "echo -a {arg1} -b {arg2}",
                "arg1": "linspace(0, 10, 5)",
                "arg2": "linspace(0, 1, 5)",
                "relation": "one-to-one",
            }
        },
    )
    results = EnsembleLauncher(str(config), return_stdout=True).run()
    assert [r.stdout for r in results] == [
        "-a 0.0 -b 0.0\n",
        "-a 2.5 -b 0.25\n",
        "-a 5.0 -b 0.5\n",
        "-a 7.5 -b 0.75\n",
        "-a 10.0 -b 1.0\n",
    ]
    out = write_results_to_json(results, tmp_path / "results.json")
    doc = json.loads(out.read_text())
    assert doc["summary"] == {"total": 5, "success": 5, "failed": 0, "timeout": 0, "cancelled": 0}
    first = doc["results"][0]
    assert first["task_id"] == results[0].task_id and first["status"] == "success"
    assert set(first) >= {
        "stdout",
        "stderr",
        "returncode",
        "exception",
        "start_time",
        "end_time",
        "node",
        "cpus",
        "gpus",
        "result",
    }


def test_cli_run_exits_1_and_reports_the_failures(tmp_path: Path) -> None:
    config = write(
        tmp_path / "e.json",
        {"codes": {"cmd_template": "sh -c 'exit $0' {code}", "code": [0, 3, 0]}},
    )
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [*CLI, "run", str(config), "-o", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "3 tasks: 2 success, 1 failed" in proc.stderr
    assert "codes-1: failed: exit code 3" in proc.stderr
    statuses = [r["status"] for r in json.loads(out.read_text())["results"]]
    assert statuses == ["success", "failed", "success"]


def test_cli_run_exits_0_with_a_progress_bar_and_writes_logs(tmp_path: Path) -> None:
    config = write(tmp_path / "e.json", {"ok": {"cmd_template": "true {i}", "i": "range(4)"}})
    proc = subprocess.run(
        [
            *CLI,
            "run",
            str(config),
            "-o",
            str(tmp_path / "r.json"),
            "--logs",
            "--report-interval",
            "0.01",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 tasks: 4 success" in proc.stderr
    assert "4 ok, 0 failed" in proc.stdout + proc.stderr
    assert list((tmp_path / "logs").glob("master-*.log"))
    assert list((tmp_path / "logs").glob("worker-*.log"))


def test_cli_run_rejects_a_bad_file_with_exit_2_and_a_clear_message(tmp_path: Path) -> None:
    config = write(
        tmp_path / "e.json", {"bad": {"cmd_template": "echo {a} {b}", "a": [1, 2, 3], "b": [1, 2]}}
    )
    proc = subprocess.run(
        [*CLI, "run", str(config), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "'bad'" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_executor_and_comm_names_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="dragon"):
        LauncherConfig(comm_name="dragon")
    with pytest.raises(ValueError, match="child_executor_name"):
        LauncherConfig(child_executor_name="threads")  # type: ignore[arg-type]


def test_system_config_fills_ids_and_auto_config_follows_the_node_count() -> None:
    assert SystemConfig(ncpus=2, cpus=[0, 1], ngpus=2).gpus == ["0", "1"]
    assert SystemConfig(gpus=["0", "0", "1"]).ngpus == 3
    assert Config.auto(1).nlevels == 0
    assert (Config.auto(64).nlevels, Config.auto(65).nlevels, Config.auto(4096).nlevels) == (
        1,
        2,
        3,
    )


def test_ensemble_launcher_refuses_a_bad_node_list_at_once() -> None:
    with pytest.raises(EnsembleError, match="Nodes"):
        EnsembleLauncher({"ensembles": {"a": {"cmd_template": "true"}}}, Nodes=["-oProxy=x"])


def test_several_nodes_need_a_child_executor_that_reaches_them() -> None:
    config = LauncherConfig(nlevels=1, child_executor_name="multiprocessing")
    spec = {"ensembles": {"a": {"cmd_template": "true"}}}
    with pytest.raises(EnsembleError, match=r"child_executor_name='multiprocessing'.*use 'mpi'"):
        EnsembleLauncher(spec, launcher_config=config, Nodes=["localhost", "nodeb"]).run()


def test_a_task_no_node_can_hold_fails_at_once_and_the_run_says_why(tmp_path: Path) -> None:
    spec = {"ensembles": {"wide": {"cmd_template": "true", "ppn": 64}}}
    (tmp_path / "e.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "ensemble_mcp.cli", "run", str(tmp_path / "e.json"), "--no-progress",
         "-o", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "asks for ppn=64, but the largest node has" in done.stderr
    (result,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert (result["status"], result["exception_type"]) == ("failed", "core.errors.Unplaceable")


def test_serve_takes_the_launcher_flags_and_refuses_bad_ones_by_name() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ensemble_mcp.cli", "serve", "examples/agents/server.py:server",
         "--transport", "stdio", "--nlevels", "9"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--nlevels" in done.stderr and "3" in done.stderr


def test_a_servers_launcher_config_can_be_set_until_its_launcher_starts() -> None:
    from ensemble_mcp.server import Server

    server = Server("config-test")
    server.launcher_config = Config(nlevels=0, return_stdout=True)
    server.start()
    try:
        assert server.launcher is not None
        assert server.launcher.launcher_config.nlevels == 0
        with pytest.raises(ValueError, match="set its configuration before it starts"):
            server.launcher_config = Config(nlevels=1)
    finally:
        server.shutdown()
