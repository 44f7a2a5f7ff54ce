"""Run profiles: the records built from TaskResults, the file, reading it back, the wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import ConfigError, LauncherConfig, TaskResult, TaskStatus
from core.launcher import EnsembleLauncher
from core.profile import build_profile, read_profile, utilisation, write_profile

T0 = 1_800_000_000.0


def result(task_id: str, status: str, cpu: int | None, start: float | None, end: float | None):
    return TaskResult(
        task_id,
        TaskStatus(status),
        start_time=None if start is None else T0 + start,
        end_time=None if end is None else T0 + end,
        node="n1",
        cpus=[] if cpu is None else [cpu],
        submit_time=T0,
        attempts=2 if task_id == "c" else 1,
    )


RESULTS = [
    result("a", "success", 0, 1.0, 3.0),
    result("b", "failed", 1, 1.0, 2.0),
    result("c", "success", 1, 2.0, 5.0),
    result("d", "cancelled", None, None, None),  # cancelled while queued: never ran
]


def test_basic_holds_the_runs_numbers_and_one_timing_record_per_task() -> None:
    run, *tasks = build_profile(RESULTS, "basic", slots=[("n1", 0), ("n1", 1), ("n1", 2)])
    assert {k: run[k] for k in ("kind", "schema", "version", "level")} == {
        "kind": "run",
        "schema": "ensemble-mcp-profile",
        "version": 1,
        "level": "basic",
    }
    assert (run["start"], run["end"], run["wall_s"]) == (T0, T0 + 5.0, 5.0)
    assert run["counts"] == {"success": 2, "failed": 1, "timeout": 0, "cancelled": 1}
    assert run["num_tasks"] == 4 and run["num_slots"] == 3  # slot 2 stayed idle
    assert run["busy_s"] == 6.0
    assert run["utilisation"] == pytest.approx(6.0 / (3 * 5.0))
    assert run["tasks_per_s"] == pytest.approx(4 / 5.0)
    assert run["mean_queue_s"] == pytest.approx((1 + 1 + 2) / 3)
    assert run["mean_run_s"] == pytest.approx((2 + 1 + 3) / 3)
    assert [t["kind"] for t in tasks] == ["task"] * 4
    assert tasks[2] == {
        "kind": "task",
        "id": "c",
        "status": "success",
        "node": "n1",
        "cpus": [1],
        "gpus": [],
        "attempt": 2,
        "queued": T0,
        "started": T0 + 2.0,
        "ended": T0 + 5.0,
        "queue_s": 2.0,
        "run_s": 3.0,
    }
    assert (tasks[3]["started"], tasks[3]["queue_s"], tasks[3]["run_s"]) == (None, None, None)


def test_timeline_adds_one_slot_record_per_task_that_ran() -> None:
    records = build_profile(RESULTS, "timeline")
    slots = [r for r in records if r["kind"] == "slot"]
    assert [(s["task"], s["node"], s["cpu"], s["status"]) for s in slots] == [
        ("a", "n1", 0, "success"),
        ("b", "n1", 1, "failed"),
        ("c", "n1", 1, "success"),
    ]
    assert (slots[2]["start"], slots[2]["end"]) == (T0 + 2.0, T0 + 5.0)
    assert records[0]["slots"] == [{"node": "n1", "cpu": 0}, {"node": "n1", "cpu": 1}]


def test_utilisation_is_the_busy_share_of_the_slots_as_a_step_function() -> None:
    slots = [r for r in build_profile(RESULTS, "timeline") if r["kind"] == "slot"]
    times, fractions = utilisation(slots, 2)
    assert [t - T0 for t in times] == [1.0, 2.0, 3.0, 5.0]
    assert fractions == [1.0, 1.0, 0.5, 0.0]


def test_a_written_profile_reads_back_line_for_line(tmp_path: Path) -> None:
    path = write_profile(RESULTS, "timeline", tmp_path / "profiles", run_id="abcdef0123456789")
    assert path.parent == tmp_path / "profiles"
    assert path.name.startswith("run-") and path.name.endswith("-abcdef01.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 + 3
    profile = read_profile(path)
    assert profile.run["run_id"] == "abcdef0123456789"
    assert [t["id"] for t in profile.tasks] == ["a", "b", "c", "d"]
    assert len(profile.slots) == 3
    assert profile.slot_ids == [("n1", 0), ("n1", 1)]
    assert read_profile(write_profile(RESULTS, "basic", tmp_path)).slots == []


def test_a_reader_skips_record_kinds_added_later_in_the_same_version(tmp_path: Path) -> None:
    path = write_profile(RESULTS, "basic", tmp_path)
    path.write_text(path.read_text() + '{"kind": "gpu", "busy": 1}\n')
    assert len(read_profile(path).tasks) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"results": []}\n', "is not an ensemble-mcp profile"),
        ("", "is empty, not a profile"),
        ('{"schema": "ensemble-mcp-profile", "version": 2}\n', "has profile version 2"),
        ('{"schema": "ensemble-mcp-profile", "version": 1}\n{oops\n', "line 2: not JSON"),
    ],
)
def test_reading_something_else_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_profile(path)


def test_an_unknown_level_is_refused_naming_the_levels() -> None:
    with pytest.raises(ValueError, match="profile must be one of basic, timeline, got 'full'"):
        build_profile(RESULTS, "full")  # type: ignore[arg-type]


def test_ensemble_launcher_writes_the_profile_its_config_asks_for(tmp_path: Path) -> None:
    ensembles = {
        "ensembles": {"e": {"cmd_template": "true {x}", "x": [1, 2, 3], "relation": "one-to-one"}}
    }
    launcher = EnsembleLauncher(
        ensembles,
        launcher_config=LauncherConfig(nlevels=0, profile="basic"),
        profile_dir=tmp_path / "out",
    )
    results = launcher.run()
    assert launcher.profile_path is not None
    assert launcher.profile_path.parent == tmp_path / "out"
    profile = read_profile(launcher.profile_path)
    assert profile.run["level"] == "basic"
    assert [t["id"] for t in profile.tasks] == [r.task_id for r in results]
    assert profile.run["num_slots"] == len(os.sched_getaffinity(0))
    assert profile.run["run_id"]


def test_without_a_profile_setting_nothing_is_written(tmp_path: Path) -> None:
    ensembles = {"ensembles": {"e": {"cmd_template": "true"}}}
    launcher = EnsembleLauncher(
        ensembles, launcher_config=LauncherConfig(nlevels=0), profile_dir=tmp_path / "out"
    )
    launcher.run()
    assert launcher.profile_path is None
    assert not (tmp_path / "out").exists()


def test_a_profile_directory_that_cannot_be_made_fails_before_any_task_runs(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    marker = tmp_path / "ran"
    ensembles = {"ensembles": {"e": {"cmd_template": f"touch {marker}"}}}
    launcher = EnsembleLauncher(
        ensembles,
        launcher_config=LauncherConfig(nlevels=0, profile="timeline"),
        profile_dir=blocker / "profiles",
    )
    with pytest.raises(ConfigError, match="profile: cannot create the profile directory"):
        launcher.run()
    assert not marker.exists()


def test_the_run_command_writes_a_profile_and_says_where(tmp_path: Path) -> None:
    spec = tmp_path / "ensemble.json"
    spec.write_text(json.dumps({"ensembles": {"e": {"cmd_template": "true {x}", "x": [1, 2]}}}))
    argv = ["run", str(spec), "--profile", "timeline", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "ensemble_mcp.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (path,) = (tmp_path / "profiles").glob("run-*.jsonl")
    assert f"profile (timeline) in profiles/{path.name}" in done.stderr
    assert f"ensemble-mcp plot profiles/{path.name} -o run.png" in done.stderr
    assert len(read_profile(path).slots) == 2


def test_a_launcher_writes_one_profile_per_batch(tmp_path: Path) -> None:
    from core import Launcher

    config = LauncherConfig(nlevels=0, profile="timeline", profile_dir=str(tmp_path))
    with Launcher(launcher_config=config) as launcher:
        first = launcher.map_tasks(abs, [((-i,), {}) for i in range(5)])
        second = launcher.map_tasks(abs, [((i,), {}) for i in range(3)])
        assert first.results(timeout=30) and second.results(timeout=30)
        assert first.profile is not None and second.profile is not None
        paths = [first.profile.result(timeout=30), second.profile.result(timeout=30)]
    profiles = [read_profile(path) for path in paths]
    assert [len(p.tasks) for p in profiles] == [5, 3]
    assert len({*paths}) == 2 and {p.parent for p in paths} == {tmp_path}
    assert set(profiles[0].slot_ids) == set(launcher.slots)
