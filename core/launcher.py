"""EnsembleLauncher: the seed's one-shot API — expand ensembles, run them all, return results."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.batch import Batch
from core.client import Launcher
from core.config import LauncherConfig, SystemConfig
from core.ensemble import Source, expand_tasks
from core.nodes import discover_nodes
from core.result import TaskResult
from core.task import Task


class EnsembleLauncher:
    """Run every task of an ensemble definition on this node and return one record per task.

    ``ensemble_file`` is a JSON file, a dict ``{"ensembles": {name: spec}}``, or a dict of
    ``Task`` objects. ``launcher_config=None`` chooses one for the node count.

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
    ) -> None:
        self.tasks = expand_tasks(ensemble_file)
        self.nodes = discover_nodes(Nodes).nodes
        self.system_config = system_config
        config = launcher_config or LauncherConfig.auto(len(self.nodes))
        if return_stdout and not config.return_stdout:
            config = config.model_copy(update={"return_stdout": True})
        self.launcher_config = config
        self.pin_resources = pin_resources

    def run(self, on_start: Callable[[Batch, Launcher], Any] | None = None) -> list[TaskResult]:
        """Start the launcher, run every task, stop, and return the results in task order.

        ``on_start(batch, launcher)`` is called once the tasks are submitted (progress display).
        """
        handler = _master_log_handler(self.launcher_config)
        try:
            with Launcher(
                self.system_config, self.launcher_config, pin_resources=self.pin_resources,
                nodes=self.nodes,
            ) as launcher:  # fmt: skip
                batch = launcher.submit_tasks(self.tasks)
                if on_start is not None:
                    on_start(batch, launcher)
                return batch.results()
        finally:
            if handler is not None:
                logging.getLogger("ensemble_mcp.master").removeHandler(handler)
                handler.close()


def _master_log_handler(config: LauncherConfig) -> logging.Handler | None:
    if not config.master_logs:
        return None
    os.makedirs(config.log_dir, exist_ok=True)
    handler = logging.FileHandler(Path(config.log_dir) / f"master-{os.getpid()}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("ensemble_mcp.master")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler
