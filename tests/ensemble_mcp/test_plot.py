"""``ensemble-mcp plot``: a 2,000-task timeline run drawn as a PNG, checked pixel by pixel."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import LauncherConfig, Task
from core.config import hostname
from core.launcher import EnsembleLauncher
from core.profile import read_profile, write_profile
from ensemble_mcp.cli import main

Image = pytest.importorskip("PIL.Image", reason="Pillow comes with matplotlib (the plot extra)")
pytest.importorskip("matplotlib", reason="the plot extra is not installed")
ImageStat = pytest.importorskip("PIL.ImageStat")

NUM_TASKS = 2000
GREEN, RED = (0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28)  # success, failed in ensemble_mcp.plot


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The profile of a 2,000-task run with profile='timeline'."""
    # Short tasks of a fixed length (a stdlib function: workers import nothing of this test), so
    # the bars fill the rows whatever the machine's load, and every hundredth a command that
    # fails after a moment, long enough to be seen in the picture.
    tasks = {
        f"t{i:04d}": Task(task_id=f"t{i:04d}", executable=["sh", "-c", "sleep 0.01; exit 3"])
        if i % 100 == 99
        else Task(task_id=f"t{i:04d}", executable=time.sleep, args=(0.001,))
        for i in range(NUM_TASKS)
    }
    launcher = EnsembleLauncher(
        tasks,
        launcher_config=LauncherConfig(nlevels=0, profile="timeline"),
        profile_dir=tmp_path_factory.mktemp("run") / "profiles",
    )
    results = launcher.run()
    assert sum(r.ok for r in results) == NUM_TASKS - 20
    assert launcher.profile_path is not None
    return launcher.profile_path


def test_a_2000_task_timeline_run_profiles_every_task_on_the_slot_it_ran(timeline: Path) -> None:
    profile = read_profile(timeline)
    assert profile.run["level"] == "timeline"
    assert profile.run["num_tasks"] == NUM_TASKS == len(profile.tasks)
    assert profile.run["counts"] == {"success": 1980, "failed": 20, "timeout": 0, "cancelled": 0}
    assert [t["id"] for t in profile.tasks] == [f"t{i:04d}" for i in range(NUM_TASKS)]
    assert len(profile.slots) == NUM_TASKS  # one CPU each
    slots = {(hostname(), cpu) for cpu in sorted(os.sched_getaffinity(0))}
    assert set(profile.slot_ids) == slots
    assert profile.run["num_slots"] == len(slots)
    for task in profile.tasks:
        assert task["queued"] <= task["started"] <= task["ended"]
    by_slot: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for event in profile.slots:
        by_slot.setdefault((event["node"], event["cpu"]), []).append((event["start"], event["end"]))
    for spans in by_slot.values():  # a slot runs one task at a time
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert 0 < profile.run["utilisation"] <= 1


def test_plot_draws_one_row_per_slot_in_a_png_that_is_not_blank(
    timeline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "run.png"
    assert main(["plot", str(timeline), "-o", str(png)]) == 0
    num_slots = len(os.sched_getaffinity(0))
    assert capsys.readouterr().out.startswith(f"{png}: {num_slots} slots, {NUM_TASKS} task bars")
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size[0] == 1200
        assert 400 <= image.size[1] <= 3000
        rgb = image.convert("RGB")
    colours = {c: n for n, c in rgb.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 20
    assert colours.get(GREEN, 0) > 10_000  # the success bars fill most of the rows
    assert colours.get(RED, 0) > 50  # each failed task is a visible red bar
    assert max(ImageStat.Stat(rgb).var) > 1000


def test_plot_draws_a_basic_profile_too_from_the_tasks_cpus(tmp_path: Path) -> None:
    from ensemble_mcp.plot import plot_profile

    results = EnsembleLauncher(
        {"ensembles": {"e": {"cmd_template": "true {x}", "x": [1, 2, 3, 4]}}},
        launcher_config=LauncherConfig(nlevels=0),
    ).run()
    profile = read_profile(write_profile(results, "basic", tmp_path))
    assert profile.slots == []
    summary = plot_profile(profile, tmp_path / "basic.png")
    assert summary.bars == 4
    assert (tmp_path / "basic.png").stat().st_size > 5000


def test_plot_without_matplotlib_says_how_to_install_it(timeline: Path, tmp_path: Path) -> None:
    hide = "import sys; sys.modules['matplotlib'] = None; from ensemble_mcp.cli import main; "
    done = subprocess.run(
        [sys.executable, "-c", hide + f"sys.exit(main(['plot', {str(timeline)!r}]))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "ensemble-mcp plot needs matplotlib" in done.stderr
    assert "pip install 'hpc-ensemble-mcp[plot]'" in done.stderr
    assert not timeline.with_suffix(".png").exists()


def test_plot_of_a_file_that_is_not_a_profile_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text('{"summary": {}, "results": []}')
    assert main(["plot", str(results)]) == 1
    assert "is not an ensemble-mcp profile" in capsys.readouterr().err
