"""``ensemble-mcp run``: run an ensemble file with a progress bar and write the results."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from core.batch import Batch
from core.client import Launcher
from core.config import LauncherConfig
from core.errors import EnsembleError
from core.launcher import EnsembleLauncher
from core.result import TaskStatus, write_results_to_json


def add_run_command(commands: Any) -> None:
    """Register ``run`` on an argparse subparsers object."""
    run = commands.add_parser(
        "run",
        help="run the ensembles of a JSON file",
        description="Run every task of an ensemble JSON file on this node.",
    )
    run.add_argument("ensemble_file", help='JSON file with {"ensembles": {name: spec}}')
    run.add_argument("-o", "--output", default="results.json", help="results JSON (%(default)s)")
    run.add_argument("--nlevels", type=int, default=None, help="master levels below the client")
    run.add_argument("--stdout", action="store_true", help="capture each command's stdout")
    run.add_argument("--logs", action="store_true", help="write logs/master-*.log, worker-*.log")
    run.add_argument(
        "--report-interval",
        type=float,
        default=10.0,
        help="seconds between status lines in the logs (%(default)s)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the file; exit code 0 if every task succeeded, 1 if any did not, 2 on bad input."""
    try:
        config = LauncherConfig.auto().model_copy(
            update={
                "return_stdout": args.stdout,
                "master_logs": args.logs,
                "worker_logs": args.logs,
                "report_interval": args.report_interval,
                **({"nlevels": args.nlevels} if args.nlevels is not None else {}),
            }
        )
        launcher = EnsembleLauncher(args.ensemble_file, launcher_config=config)
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
    for result in results:
        if not result.ok:
            detail = (result.exception or result.stderr or "").strip().splitlines()
            sys.stderr.write(
                f"  {result.task_id}: {result.status.value}{': ' + detail[0] if detail else ''}\n"
            )
    return 0 if counts[TaskStatus.SUCCESS] == len(results) else 1


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
