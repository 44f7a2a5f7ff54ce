"""Run profiles: what each task waited, where and when it ran, as JSON lines (docs/profiles.md).

``LauncherConfig(profile="basic")`` writes one ``run`` line (the run's numbers) and one ``task``
line per task; ``"timeline"`` adds one ``slot`` line per task and CPU slot it occupied, enough to
draw which slot ran what and when (``ensemble-mcp plot``). Everything is derived from the
``TaskResult`` records, so a profile costs nothing while the run is going.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.result import TaskResult, TaskStatus

__all__ = (
    "LEVELS",
    "SCHEMA",
    "VERSION",
    "Profile",
    "build_profile",
    "read_profile",
    "slot_events",
    "utilisation",
    "write_profile",
)

SCHEMA = "ensemble-mcp-profile"
VERSION = 1
LEVELS = ("basic", "timeline")
Level = Literal["basic", "timeline"]
Slot = tuple[str, int | None]


@dataclass(frozen=True)
class Profile:
    """A profile as read back: the ``run`` line, the ``task`` lines and the ``slot`` lines.

    Attributes:
        run: the run's numbers (the first line).
        tasks: one record per task, in the order the tasks were given.
        slots: one record per (task, slot) it ran on; empty at level ``basic``.
    """

    run: dict[str, Any]
    tasks: list[dict[str, Any]]
    slots: list[dict[str, Any]]

    @property
    def slot_ids(self) -> list[Slot]:
        """Every slot of the run as ``(node, cpu)``, sorted; idle slots included."""
        return sorted(
            {(s["node"], s["cpu"]) for s in self.run.get("slots", [])}
            | {(s["node"], s["cpu"]) for s in self.slots},
            key=_slot_order,
        )


def build_profile(
    results: Sequence[TaskResult],
    level: Level,
    *,
    slots: Iterable[Slot] | None = None,
    num_slots: int | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """The records of a profile: the ``run`` line first, then ``task`` and ``slot`` lines.

    Args:
        results: one record per task, as ``EnsembleLauncher.run`` returns them.
        level: ``basic`` or ``timeline``.
        slots: every ``(node, cpu)`` slot the run had, so that idle ones are listed too;
            None lists the slots the tasks ran on.
        num_slots: how many slots the run had, when larger than the slots listed (the
            utilisation counts idle slots too).
        run_id: the launcher's run id, kept in the ``run`` line.

    Raises:
        ValueError: an unknown level.
    """
    if level not in LEVELS:
        raise ValueError(f"profile must be one of {', '.join(LEVELS)}, got {level!r}")
    tasks = [_task_record(r) for r in results]
    events = slot_events(tasks)
    known = {(e["node"], e["cpu"]) for e in events}
    all_slots = sorted(known | set(slots or ()), key=_slot_order)
    slot_count = max(len(all_slots), num_slots or 0)
    begins = [t["queued"] if t["queued"] is not None else t["started"] for t in tasks]
    starts = [b for b in begins if b is not None]
    ends = [t["ended"] for t in tasks if t["ended"] is not None]
    start = min(starts) if starts else None
    end = max(ends) if ends else None
    wall = (end - start) if start is not None and end is not None else 0.0
    busy = sum(e["end"] - e["start"] for e in events)
    queued = [t["queue_s"] for t in tasks if t["queue_s"] is not None]
    ran = [t["run_s"] for t in tasks if t["run_s"] is not None]
    run = {
        "kind": "run",
        "schema": SCHEMA,
        "version": VERSION,
        "level": level,
        "run_id": run_id,
        "created": time.time(),
        "start": start,
        "end": end,
        "wall_s": wall,
        "num_tasks": len(tasks),
        "counts": {s.value: sum(t["status"] == s.value for t in tasks) for s in TaskStatus},
        "num_slots": slot_count,
        "slots": [{"node": node, "cpu": cpu} for node, cpu in all_slots],
        "busy_s": busy,
        "utilisation": busy / (slot_count * wall) if slot_count and wall > 0 else 0.0,
        "tasks_per_s": len(tasks) / wall if wall > 0 else 0.0,
        "mean_queue_s": sum(queued) / len(queued) if queued else None,
        "mean_run_s": sum(ran) / len(ran) if ran else None,
    }
    return [run, *tasks, *(events if level == "timeline" else [])]


def write_profile(
    results: Sequence[TaskResult],
    level: Level,
    directory: str | os.PathLike[str] = "profiles",
    *,
    slots: Iterable[Slot] | None = None,
    num_slots: int | None = None,
    run_id: str | None = None,
) -> Path:
    """Write the profile of ``results`` to a new file in ``directory``; return its path.

    The file is ``<directory>/run-<YYYYmmdd-HHMMSS>-<run id>[-<n>].jsonl`` (``-<n>`` when that
    name is taken: a launcher writes one profile per batch), written whole or not at all.
    """
    records = build_profile(results, level, slots=slots, num_slots=num_slots, run_id=run_id)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(records[0]["created"]))
    stem = f"run-{stamp}-{(run_id or uuid.uuid4().hex)[:8]}"
    path = _claim(folder, stem)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        for record in records:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def _claim(folder: Path, stem: str) -> Path:
    """A new file in ``folder`` named after ``stem``, created empty so no one else takes it."""
    for n in range(10_000):
        path = folder / (f"{stem}.jsonl" if n == 0 else f"{stem}-{n}.jsonl")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free profile name for {stem} in {folder}")


def read_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a profile file written by ``write_profile`` (any level, this schema version or older).

    Raises:
        ValueError: the file is not a profile, a line is not JSON, or its version is newer than
            this reader; the message names the file and line.
        OSError: it cannot be read.
    """
    file = Path(path)
    run: dict[str, Any] | None = None
    tasks: list[dict[str, Any]] = []
    slots: list[dict[str, Any]] = []
    with file.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{file}, line {number}: not JSON ({exc})") from exc
            kind = record.get("kind") if isinstance(record, dict) else None
            if run is None:
                run = _check_header(file, record)
            elif kind == "task":
                tasks.append(record)
            elif kind == "slot":
                slots.append(record)
            # other kinds: added by a later minor change; a reader of this version skips them
    if run is None:
        raise ValueError(f"{file} is empty, not a profile")
    return Profile(run, tasks, slots)


def slot_events(tasks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``slot`` record per CPU slot of each task that ran: node, cpu, task, status, start, end.

    A task that never started (cancelled while queued) has none; one without CPU ids gets one with
    ``cpu`` None (its node as a whole).
    """
    return [
        {
            "kind": "slot",
            "node": task["node"] or "?",
            "cpu": cpu,
            "task": task["id"],
            "status": task["status"],
            "start": task["started"],
            "end": task["ended"],
        }
        for task in tasks
        if task["started"] is not None and task["ended"] is not None
        for cpu in task["cpus"] or [None]
    ]


def utilisation(
    events: Iterable[dict[str, Any]], num_slots: int
) -> tuple[list[float], list[float]]:
    """Busy fraction of ``num_slots`` over time, as a step function from ``slot`` records.

    Returns:
        ``(times, fractions)``: from ``times[i]`` on, ``fractions[i]`` of the slots are busy.
    """
    changes: dict[float, int] = {}
    for event in events:
        changes[event["start"]] = changes.get(event["start"], 0) + 1
        changes[event["end"]] = changes.get(event["end"], 0) - 1
    times, fractions, busy = [], [], 0
    for moment in sorted(changes):
        busy += changes[moment]
        times.append(moment)
        fractions.append(busy / num_slots if num_slots else 0.0)
    return times, fractions


def _task_record(result: TaskResult) -> dict[str, Any]:
    queued, started, ended = result.submit_time, result.start_time, result.end_time
    return {
        "kind": "task",
        "id": result.task_id,
        "status": result.status.value,
        "node": result.node,
        "cpus": list(result.cpus),
        "gpus": list(result.gpus),
        "attempt": result.attempts,
        "queued": queued,
        "started": started,
        "ended": ended,
        "queue_s": started - queued if started is not None and queued is not None else None,
        "run_s": ended - started if started is not None and ended is not None else None,
    }


def _check_header(file: Path, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(
            f"{file} is not an ensemble-mcp profile (its first line has no "
            f'"schema": "{SCHEMA}"); profiles are written to profiles/ by runs with '
            'profile="basic" or "timeline"'
        )
    version = record.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"{file} has profile version {version!r}; this ensemble-mcp reads versions up to "
            f"{VERSION}: update ensemble-mcp to read it"
        )
    return record


def _slot_order(slot: Slot) -> tuple[str, int]:
    node, cpu = slot
    return node, -1 if cpu is None else cpu
