"""``ensemble-mcp run``: run an ensemble file with a progress bar and write the results."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.batch import Batch
from core.client import Launcher
from core.config import LauncherConfig
from core.errors import ConfigError, EnsembleError
from core.launcher import EnsembleLauncher
from core.nodes import discover_nodes
from core.result import TaskStatus, write_results_to_json


def add_run_command(commands: Any) -> None:
    """Register ``run`` on an argparse subparsers object."""
    run = commands.add_parser(
        "run",
        help="run the ensembles of a JSON file",
        description="Run every task of an ensemble JSON file on the run's nodes: those of the "
        "PBS or Slurm job it runs in (or $ENSEMBLE_MCP_HOSTFILE, or this host). The launcher's "
        "shape is chosen for the node count; --config and the flags below override it.",
    )
    run.add_argument("ensemble_file", help='JSON file with {"ensembles": {name: spec}}')
    run.add_argument("-o", "--output", default="results.json", help="results JSON (%(default)s)")
    add_launcher_flags(run)
    run.add_argument("--stdout", action="store_true", help="capture each command's stdout")
    run.add_argument("--logs", action="store_true", help="write logs/master-*.log, worker-*.log")
    run.add_argument(
        "--report-interval",
        type=float,
        default=10.0,
        help="seconds between status lines in the logs (%(default)s)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--profile",
        choices=("basic", "timeline"),
        default=None,
        help="write a profile of the run: per-task timings (basic), plus slot events (timeline)",
    )
    run.add_argument("--profile-dir", default="profiles", help="where profiles go (%(default)s)")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the file; exit code 0 if every task succeeded, 1 if any did not, 2 on bad input."""
    try:
        config = _launcher_config(args)
        launcher = EnsembleLauncher(
            args.ensemble_file, launcher_config=config, profile_dir=args.profile_dir
        )
        watcher: list[threading.Thread] = []

        def show(batch: Batch, running: Launcher) -> None:
            if not args.no_progress:
                thread = threading.Thread(
                    target=_progress, args=(batch, running.num_slots), daemon=True
                )
                thread.start()
                watcher.append(thread)

        results = launcher.run(on_start=show)
        for thread in watcher:
            thread.join()
    except EnsembleError as exc:
        sys.stderr.write(f"ensemble-mcp run: {exc}\n")
        return 2
    path = write_results_to_json(results, args.output)
    counts = {s: sum(1 for r in results if r.status is s) for s in TaskStatus}
    summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
    sys.stderr.write(f"{len(results)} tasks: {summary or 'none'}; results in {path}\n")
    if launcher.profile_path is not None:
        sys.stderr.write(
            f"profile ({config.profile}) in {launcher.profile_path}; draw it with: "
            f"ensemble-mcp plot {launcher.profile_path} -o run.png\n"
        )
    for result in results:
        if not result.ok:
            detail = (result.exception or result.stderr or "").strip().splitlines()
            sys.stderr.write(
                f"  {result.task_id}: {result.status.value}{': ' + detail[0] if detail else ''}\n"
            )
    return 0 if counts[TaskStatus.SUCCESS] == len(results) else 1


def add_launcher_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override the launcher's configuration (``run`` and ``serve``)."""
    parser.add_argument(
        "--config", default=None, help="JSON file of LauncherConfig fields (see docs/ensembles.md)"
    )
    parser.add_argument("--nlevels", type=int, default=None, help="sub-master levels (0-3)")
    parser.add_argument("--nchildren", type=int, default=None, help="children per master")
    parser.add_argument(
        "--child-executor",
        choices=("multiprocessing", "mpi", "ssh"),
        default=None,
        help="how sub-masters start on other nodes",
    )


def launcher_config_from(
    args: argparse.Namespace, base: LauncherConfig | None, **extra: Any
) -> LauncherConfig | None:
    """``base`` (or the ``--config`` file's) with the launcher flags and ``extra`` applied.

    None when nothing was given and ``base`` is None (the launcher then chooses for its nodes).

    Raises:
        ConfigError: the file cannot be read, or a value is out of range (the flag named).
    """
    if args.config is not None:
        try:
            fields = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--config {args.config}: {exc}") from None
        try:
            base = LauncherConfig.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"])) or "the file"
            raise ConfigError(f"--config {args.config}: {where}: {first['msg']}") from None
    flags = {
        "nlevels": args.nlevels,
        "nchildren": args.nchildren,
        "child_executor_name": args.child_executor,
    }
    update: dict[str, Any] = {k: v for k, v in {**flags, **extra}.items() if v is not None}
    if base is None and not update:
        return None
    if base is None:
        base = LauncherConfig.auto(len(discover_nodes().nodes))
    try:
        return LauncherConfig.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def _launcher_config(args: argparse.Namespace) -> LauncherConfig:
    """The config file's, or the one chosen for the discovered nodes, with the flags applied."""
    extra: dict[str, Any] = {"profile": args.profile, "report_interval": args.report_interval}
    if args.stdout:
        extra["return_stdout"] = True
    if args.logs:
        extra |= {"master_logs": True, "worker_logs": True}
    base = LauncherConfig.auto(len(discover_nodes().nodes))
    config = launcher_config_from(args, base, **extra)
    assert config is not None
    return config


def _progress(batch: Batch, nslots: int) -> None:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("tasks", total=len(batch), counts="")
        failed = 0
        for result in batch.as_completed():
            failed += not result.ok
            done = batch.num_done
            running = min(nslots, len(batch) - done)
            bar.update(
                task,
                completed=done,
                counts=f"{done - failed} ok, {failed} failed, {running} running",
            )
