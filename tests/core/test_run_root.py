"""``LauncherConfig.run_root``: every task runs inside it, judged by resolved paths."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import ConfigError, Launcher, LauncherConfig, Task, TaskStatus
from core.ensemble import expand_tasks
from core.spec_values import contain_run_dir
from core.task import TaskOptions

PRINT_CWD = [sys.executable, "-c", "import os; print(os.getcwd())"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``runs/`` (the root) beside ``runs-evil/`` and ``outside/``, with links out and in."""
    (tmp_path / "runs" / "inside").mkdir(parents=True)
    (tmp_path / "runs-evil").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "runs" / "escape").symlink_to(tmp_path / "outside")
    (tmp_path / "runs" / "alias").symlink_to(tmp_path / "runs" / "inside")
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    base = tmp_path_factory.mktemp("rooted")
    (base / "runs").mkdir()
    (base / "outside").mkdir()
    (base / "runs" / "escape").symlink_to(base / "outside")
    config = LauncherConfig(nlevels=0, run_root=str(base / "runs"))
    with Launcher(launcher_config=config, return_stdout=True) as service:
        yield service


@pytest.mark.parametrize(
    ("run_dir", "inside"),
    [
        (None, "."),
        ("a/b", "a/b"),
        ("inside", "inside"),
        ("alias/x", "inside/x"),  # a link that stays inside is followed, and fine
        ("./c", "c"),
    ],
)
def test_a_run_dir_inside_the_root_resolves_under_it(
    root: Path, run_dir: str | None, inside: str
) -> None:
    assert contain_run_dir(run_dir, root) == str((root / inside).resolve())


def test_an_absolute_run_dir_inside_the_root_is_kept(root: Path) -> None:
    assert contain_run_dir(str(root / "inside" / "new"), root) == str(root / "inside" / "new")


@pytest.mark.parametrize(
    "run_dir",
    [
        "/etc",
        "escape",  # a symlink inside the root that points out of it
        "escape/deeper/still",  # below such a link, even where nothing exists yet
        "{sibling}",  # a sibling whose name starts with the root's: no string prefixes
        "inside/../../outside",
    ],
)
def test_a_run_dir_that_resolves_outside_the_root_is_refused(root: Path, run_dir: str) -> None:
    given = run_dir.replace("{sibling}", str(root.parent / "runs-evil"))

    with pytest.raises(ValueError, match="is outside the run root") as caught:
        contain_run_dir(given, root)

    assert str(root.resolve()) in str(caught.value)
    assert given in str(caught.value)


def test_tasks_run_inside_the_root_relative_run_dirs_under_it(launcher: Launcher) -> None:
    root = Path(launcher.launcher_config.run_root or "")
    results = launcher.submit_tasks(
        [
            Task(task_id="plain", executable=PRINT_CWD),
            Task(task_id="sub", executable=PRINT_CWD, run_dir="jobs/7"),
            Task(task_id="py", executable=os.getcwd, run_dir="py"),
        ]
    ).results(timeout=60)

    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 3
    assert [results[0].stdout.strip(), results[1].stdout.strip()] == [  # type: ignore[union-attr]
        str(root),
        str(root / "jobs" / "7"),
    ]
    assert results[2].result == str(root / "py")


@pytest.mark.parametrize("run_dir", ["escape", "escape/sub", "/tmp"])
def test_a_task_whose_run_dir_escapes_is_refused_at_submission(
    launcher: Launcher, run_dir: str
) -> None:
    with pytest.raises(ConfigError, match=r"^esc: run_dir .* is outside the run root "):
        launcher.submit_tasks([Task(task_id="esc", executable=PRINT_CWD, run_dir=run_dir)])
    with pytest.raises(ConfigError, match=r"^the tasks: run_dir .* is outside the run root "):
        launcher.submit_commands([PRINT_CWD], options=TaskOptions(run_dir=run_dir))


def test_an_ensemble_whose_run_dir_template_escapes_is_refused_at_submission(
    launcher: Launcher,
) -> None:
    spec = {"cmd_template": "true", "run_dir": "{where}/x", "where": ["ok", "escape"]}
    tasks = expand_tasks({"ensembles": {"e": spec}})

    with pytest.raises(ConfigError, match=r"^e-1: run_dir escape/x \(resolved: .*outside/x\)"):
        launcher.submit_tasks(tasks)


def test_dot_dot_is_refused_before_any_root_is_consulted() -> None:
    with pytest.raises(ValidationError, match=r"contains '\.\.'"):
        Task(task_id="t", executable=["true"], run_dir="a/../../b")


def test_an_empty_run_root_is_refused() -> None:
    with pytest.raises(ValidationError, match="run_root"):
        LauncherConfig(run_root="")
