"""EnsembleLauncher: the seed's one-shot API — expand ensembles, run them all, return results."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.batch import Batch
from core.client import Launcher
from core.config import LauncherConfig, SystemConfig
from core.ensemble import Source, expand_tasks
from core.errors import ConfigError
from core.nodes import discover_nodes
from core.result import TaskResult
from core.task import Task


class EnsembleLauncher:
    """Run every task of an ensemble definition on this node and return one record per task.

    ``ensemble_file`` is a JSON file, a dict ``{"ensembles": {name: spec}}``, or a dict of
    ``Task`` objects. ``launcher_config=None`` chooses one for the node count. With
    ``launcher_config.profile`` set (``"basic"`` or ``"timeline"``), ``run`` also writes a profile
    to ``profile_dir`` and keeps its path in ``profile_path`` (see docs/profiles.md).

    Example:
        >>> results = EnsembleLauncher("config.json").run()         # doctest: +SKIP
        >>> write_results_to_json(results, "results.json")          # doctest: +SKIP
    """

    def __init__(
        self,
        ensemble_file: Source | Mapping[str, Task],
        system_config: SystemConfig | None = None,
        launcher_config: LauncherConfig | None = None,
        Nodes: list[str] | None = None,
        pin_resources: bool = True,
        return_stdout: bool = False,
        profile_dir: str | os.PathLike[str] = "profiles",
    ) -> None:
        self.tasks = expand_tasks(ensemble_file)
        self.nodes = discover_nodes(Nodes).nodes
        self.system_config = system_config
        config = launcher_config or LauncherConfig.auto(len(self.nodes))
        if return_stdout and not config.return_stdout:
            config = config.model_copy(update={"return_stdout": True})
        self.launcher_config = config
        self.pin_resources = pin_resources
        self.profile_dir = Path(profile_dir)
        self.profile_path: Path | None = None

    def run(self, on_start: Callable[[Batch, Launcher], Any] | None = None) -> list[TaskResult]:
        """Start the launcher, run every task, stop, and return the results in task order.

        ``on_start(batch, launcher)`` is called once the tasks are submitted (progress display).
        """
        level = self.launcher_config.profile
        config = self.launcher_config
        if level is not None:
            _prepare_profile_dir(self.profile_dir)
            config = config.model_copy(update={"profile_dir": str(self.profile_dir)})
        with Launcher(
            self.system_config, config, pin_resources=self.pin_resources, nodes=self.nodes
        ) as launcher:
            batch = launcher.submit_tasks(self.tasks)
            if on_start is not None:
                on_start(batch, launcher)
            results = batch.results()
        if batch.profile is not None:
            self.profile_path = batch.profile.result()
        return results


def _prepare_profile_dir(directory: Path) -> None:
    """Create the profile directory before the run, so that a bad one fails before any task."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"profile: cannot create the profile directory {directory}: {exc.strerror}; "
            "pass another profile_dir (CLI: --profile-dir)"
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            f"profile: the profile directory {directory} is not writable; "
            "pass another profile_dir (CLI: --profile-dir)"
        )
