"""Long ensembles: submitted ensembles, journaled, and the tools that watch them.

``<tool>_submit`` starts an ensemble and returns its id at once; ``ensemble_status``,
``ensemble_results`` (paged) and ``ensemble_cancel`` work on that id from any later request,
and after a server restart too:

::

    _submit ─► Registry.add ─► journal row (plan), then one callback per task future
    task ends ─► Recorder thread: entries (ResultConverter), one transaction per drain
               ─► counts in memory (what status and pages show: journaled work only)
    status / results ─► counts + journal pages; tasks without an entry: pending, or lost
                        when a server stop cut them

Bounds: a finished ensemble is dropped ``ttl_s`` after it finished; room for a new one is made
by dropping the oldest finished ones while the journal holds ``max_ensembles`` ensembles or more
than ``max_bytes`` of JSON; a submit is refused when running ensembles alone exceed either.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field, WithJsonSchema

from core import Batch
from core.relations import fan_out
from core.result import TaskResult
from ensemble_mcp.errors import NOTHING_RUN, ToolCallError
from ensemble_mcp.journal import EntryBatch, Journal, StoredEnsemble
from ensemble_mcp.plan import Plan
from ensemble_mcp.results import (
    ANY_JSON,
    STATUSES,
    OutputLimits,
    ResultConverter,
    bound_total,
    render_text,
    summarize,
)
from ensemble_mcp.tools import EnsembleSpec

MAX_PAGE = 1000
_COALESCE_S = 0.01
"""How long the journal's thread lets ended tasks gather before it writes them."""
LOST_NOTE = (
    "the server stopped before this task ended, so its result was never recorded; "
    "run it again if you need it"
)
log = logging.getLogger(__name__)


def plan_record(plan: Plan) -> dict[str, Any]:
    """What the journal keeps of a plan: how the tasks were formed, and the lists as given."""
    return {
        "relation": plan.relation,
        "lengths": plan.lengths,
        "broadcast": list(plan.broadcast),
        "total": plan.total,
        "arguments": plan.json_values,
    }


def _plan_of(record: dict[str, Any]) -> Plan:
    """The plan back from its record (JSON values only: for echoes and summaries)."""
    arguments: dict[str, list[Any]] = record["arguments"]
    fanout = fan_out(record["relation"], {name: len(v) for name, v in arguments.items()})
    return Plan(fanout=fanout, values=arguments, json_values=arguments)


@dataclass
class _Running:
    """An ensemble this server process submitted whose entries are not all journaled yet."""

    ensemble_id: str
    tool: str
    plan: Plan
    created: float
    echoes: list[dict[str, Any]] = field(repr=False)
    batch: Batch = field(repr=False)
    converter: ResultConverter = field(repr=False)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    done: int = 0


@dataclass(frozen=True)
class Snapshot:
    """An ensemble as a reader sees it: journaled work only.

    Attributes:
        ensemble_id: its id.
        tool: the ensemble tool.
        plan: its tasks' plan (JSON values).
        created: when it was submitted (seconds since the epoch).
        finished: when it finished (or was cut by a server stop); None while running.
        counts: tasks per status, with ``pending`` (not ended yet) and ``lost`` (cut by a stop).
    """

    ensemble_id: str
    tool: str
    plan: Plan
    created: float
    finished: float | None
    counts: dict[str, int]

    @property
    def total(self) -> int:
        """The number of tasks."""
        return self.plan.total

    @property
    def done(self) -> int:
        """Tasks that have ended, lost ones included."""
        return self.total - self.counts["pending"]


class Registry:
    """Submitted ensembles: the running ones in memory, every one in the journal.

    ``start`` opens the journal in ``directory`` (when the server starts), ``stop`` writes what
    has ended and closes it (before the launcher stops: tasks it cuts then are ``lost``).

    Args:
        directory: the state directory (see ``ensemble_mcp.journal``).
        limits: the server's output bounds (entries, pages).
        ttl_s: how long a finished ensemble stays readable.
        max_ensembles: the most ensembles kept (running and finished).
        max_bytes: the most JSON text the journal keeps before dropping finished ensembles.
        clock: wall-clock time (seconds since the epoch).
    """

    def __init__(
        self,
        directory: Path,
        *,
        limits: OutputLimits | None = None,
        ttl_s: float = 3600.0,
        max_ensembles: int = 100,
        max_bytes: int = 256 * 2**20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or max_ensembles < 1 or max_bytes < 1:
            raise ValueError("ttl_s must be > 0, max_ensembles >= 1 and max_bytes >= 1")
        self.directory = directory
        self.limits = limits or OutputLimits()
        self.ttl_s = ttl_s
        self.max_ensembles = max_ensembles
        self.max_bytes = max_bytes
        self._clock = clock
        self._journal: Journal | None = None
        self._recorder: _Recorder | None = None
        self._running: dict[str, _Running] = {}
        self._broken: str | None = None
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the journal is open (the server runs)."""
        return self._journal is not None

    def start(self) -> None:
        """Open the journal (idempotent); ensembles a stop cut are now finished, with lost tasks.

        Raises:
            ConfigError: the state directory cannot be used (the message says why and how).
        """
        with self._lock:
            if self._journal is not None:
                return
            journal = Journal.open(self.directory, clock=self._clock)
            self._journal, self._broken = journal, None
            self._recorder = _Recorder(self)
            self._drop_expired()

    def stop(self) -> None:
        """Write the entries of tasks ended so far, then close the journal (idempotent)."""
        with self._lock:
            recorder, journal = self._recorder, self._journal
            self._recorder = None
        if recorder is not None:
            recorder.stop()
        with self._lock:
            self._journal = None
            self._running.clear()
        if journal is not None:
            journal.close()

    # -- submit -------------------------------------------------------------------------------

    def room(self) -> None:
        """Make room for one more ensemble: drop expired, then the oldest finished ones.

        Raises:
            ToolCallError: running ensembles alone fill ``max_ensembles`` or ``max_bytes``, or
                the journal cannot be written.
        """
        with self._lock:
            journal = self._open_journal()
            self._drop_expired()
            count, nbytes = journal.size()
            drop: list[str] = []
            for ensemble_id, _, size in journal.finished():
                if count < self.max_ensembles and nbytes <= self.max_bytes:
                    break
                drop.append(ensemble_id)
                count, nbytes = count - 1, nbytes - size
            journal.delete(drop)
        if count >= self.max_ensembles:
            raise ToolCallError(
                f"{count} ensembles are still running, the most this server keeps; wait for "
                f"one to finish or cancel one with ensemble_cancel. {NOTHING_RUN}"
            )
        if nbytes > self.max_bytes:
            raise ToolCallError(
                f"the results of running ensembles fill this server's journal ({nbytes:,} "
                f"bytes, cap {self.max_bytes:,}); wait for one to finish or cancel one with "
                f"ensemble_cancel. {NOTHING_RUN}"
            )

    def add(
        self,
        spec: EnsembleSpec,
        plan: Plan,
        echoes: list[dict[str, Any]],
        batch: Batch,
        converter: ResultConverter,
    ) -> str:
        """Journal a started ensemble under a new unguessable id, and record its tasks as they end.

        Raises:
            ToolCallError: the journal is closed or cannot be written; the batch is cancelled.
        """
        ensemble_id = f"{spec.name}-{secrets.token_hex(6)}"
        running = _Running(ensemble_id, spec.name, plan, self._clock(), echoes, batch, converter)
        try:
            with self._lock:
                journal = self._open_journal()
                journal.add(ensemble_id, spec.name, plan_record(plan), running.created)
                self._running[ensemble_id] = running
                recorder = self._recorder
        except BaseException:
            batch.cancel()
            raise
        assert recorder is not None
        recorder.watch(running)  # on the recorder's thread: the id goes back at once
        return ensemble_id

    # -- read ---------------------------------------------------------------------------------

    def snapshot(self, ensemble_id: str) -> Snapshot:
        """The ensemble as readers see it now.

        Raises:
            ToolCallError: no such ensemble (never existed, dropped), or the journal failed.
        """
        with self._lock:
            running = self._running.get(ensemble_id)
            if running is not None:
                self._check_broken()
                counts = {**running.counts, "pending": running.plan.total - running.done}
                counts["lost"] = 0
                return Snapshot(
                    ensemble_id, running.tool, running.plan, running.created, None, counts
                )
            stored = self._stored(ensemble_id)
        counts = dict.fromkeys(STATUSES, 0) | stored.counts
        counts["pending"], counts["lost"] = 0, stored.lost
        return Snapshot(
            ensemble_id, stored.tool, _plan_of(stored.plan), stored.created, stored.finished, counts
        )

    def busy_seconds(self, ensemble_id: str) -> float:
        """The run times of the ensemble's ended (journaled) tasks, added up."""
        return self._open_journal(writing=False).busy_seconds(ensemble_id)

    def page(self, snapshot: Snapshot, offset: int, stop: int) -> tuple[list[dict[str, Any]], str]:
        """Entries of tasks ``offset <= index < stop`` (bounded in total), and a note or ``""``.

        Tasks without an entry are ``pending``, or ``lost`` when a server stop cut them.
        """
        journal = self._open_journal(writing=False)
        stored = journal.entries(snapshot.ensemble_id, offset, stop)
        missing = [i for i in range(offset, stop) if i not in stored]
        echoes: dict[int, dict[str, Any]] = {}
        if missing:
            with self._lock:
                running = self._running.get(snapshot.ensemble_id)
            if running is not None:
                echoes = {i: running.echoes[i] for i in missing}
            else:
                tasks = itertools.islice(snapshot.plan.tasks(), offset, stop)
                echoes = {i: echo for i, (_, echo) in enumerate(tasks, offset) if i not in stored}
        gap: dict[str, Any] = {"status": "pending"}
        if snapshot.finished is not None:
            gap = {"status": "lost", "note": LOST_NOTE}
        entries = [
            stored[i] if i in stored else {"index": i, "params": echoes[i], **gap}
            for i in range(offset, stop)
        ]
        return entries, bound_total(entries, self.limits.total_bytes) or ""

    def cancel(self, ensemble_id: str) -> Snapshot:
        """Cancel the tasks of a running ensemble that have not ended; its snapshot."""
        with self._lock:
            running = self._running.get(ensemble_id)
        if running is not None:
            running.batch.cancel()
        return self.snapshot(ensemble_id)

    # -- internals ----------------------------------------------------------------------------

    def _open_journal(self, *, writing: bool = True) -> Journal:
        journal = self._journal
        if journal is None:
            raise ToolCallError(
                "the server's journal of ensembles is closed (the server is starting or "
                "stopping); call again shortly"
            )
        if writing:
            self._check_broken()
        return journal

    def _check_broken(self) -> None:
        if self._broken is not None:
            raise ToolCallError(self._broken)

    def _stored(self, ensemble_id: str) -> StoredEnsemble:
        journal = self._open_journal(writing=False)
        stored = journal.get(ensemble_id)
        if stored is not None and self._expired(stored.finished) and self._broken is None:
            journal.delete([ensemble_id])
            stored = None
        if stored is None:
            raise ToolCallError(
                f"no ensemble has id {ensemble_id!r}; ids come from a *_submit tool, "
                f"and finished ensembles are dropped after {self.ttl_s:g} s"
            )
        return stored

    def _expired(self, finished: float | None) -> bool:
        return finished is not None and self._clock() - finished > self.ttl_s

    def _drop_expired(self) -> None:
        assert self._journal is not None
        old = [e for e, finished, _ in self._journal.finished() if self._expired(finished)]
        self._journal.delete(old)

    def _recorded(self, updates: list[tuple[_Running, EntryBatch]]) -> None:
        """After a commit: what readers see moves on; finished ensembles leave memory."""
        with self._lock:
            for running, batch in updates:
                running.counts = dict(batch.counts)
                running.done = batch.done
                if batch.finished is not None:
                    self._running.pop(running.ensemble_id, None)

    def _failed(self, why: str) -> None:
        with self._lock:
            self._broken = why


class _Recorder:
    """The thread that journals entries of ended tasks: one transaction per drain of its queue.

    Task futures call ``_ended`` on the thread that ends them (the launcher's); that only
    appends to a deque, so the launcher is not slowed by the writing.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._queue: deque[tuple[_Running, int, Future[TaskResult]]] = deque()
        self._new: deque[_Running] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ensemble-mcp-journal", daemon=True)
        self._thread.start()

    def watch(self, running: _Running) -> None:
        """Journal each task of ``running`` when it ends (hooked on the recorder's thread)."""
        self._new.append(running)
        self._wake.set()

    def _hook(self, running: _Running) -> None:
        for index, future in enumerate(running.batch.futures):
            future.add_done_callback(partial(self._ended, running, index))

    def stop(self) -> None:
        """Write what has ended so far, then end the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _ended(self, running: _Running, index: int, future: Future[TaskResult]) -> None:
        if self._stopping:
            return
        self._queue.append((running, index, future))
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._stopping:
                time.sleep(_COALESCE_S)  # let more end, and the submit that woke us answer
            self._wake.clear()
            while self._new:
                self._hook(self._new.popleft())
            items: list[tuple[_Running, int, Future[TaskResult]]] = []
            while self._queue:
                items.append(self._queue.popleft())
            if items:
                try:
                    self._write(items)
                except Exception as exc:  # a journal that cannot be written must say so
                    log.exception("cannot write the journal of ensembles")
                    self._registry._failed(
                        f"the server could not record results in its journal "
                        f"({self._registry.directory}): {exc}; results of running ensembles "
                        "are no longer kept; see the server's log"
                    )
                    return
            if self._stopping:
                return

    def _write(self, items: list[tuple[_Running, int, Future[TaskResult]]]) -> None:
        by_ensemble: dict[str, tuple[_Running, list[int], list[TaskResult]]] = {}
        for running, index, future in items:
            group = by_ensemble.setdefault(running.ensemble_id, (running, [], []))
            group[1].append(index)
            group[2].append(future.result())
        now = self._registry._clock()
        updates: list[tuple[_Running, EntryBatch]] = []
        for running, indexes, results in by_ensemble.values():
            echoes = [running.echoes[i] for i in indexes]
            entries, _ = running.converter.entries(0, echoes, results, bound_total=False)
            counts = dict(running.counts)
            rows = []
            for index, entry in zip(indexes, entries, strict=True):
                entry["index"] = index
                counts[entry["status"]] = counts.get(entry["status"], 0) + 1
                rows.append((index, json.dumps(entry, separators=(",", ":"))))
            done = running.done + len(rows)
            finished = now if done == running.plan.total else None
            updates.append((running, EntryBatch(running.ensemble_id, rows, done, counts, finished)))
        journal = self._registry._journal
        if journal is None:
            return
        journal.record(batch for _, batch in updates)
        self._registry._recorded(updates)


# -- the tools --------------------------------------------------------------------------------


class SubmitOutput(BaseModel):
    """What ``<tool>_submit`` returns."""

    ensemble_id: str
    tool: str
    total: int = Field(description="number of tasks started")
    relation: str
    lengths: dict[str, int]
    broadcast: list[str]


class StatusOutput(BaseModel):
    """What ``ensemble_status`` and ``ensemble_cancel`` return."""

    ensemble_id: str
    tool: str
    total: int
    done: int = Field(description="tasks that have ended (lost ones included)")
    finished: bool
    counts: dict[str, int] = Field(
        description="tasks per status; pending: not ended yet; lost: cut by a server restart"
    )
    elapsed_s: float
    utilisation: float | None = Field(
        default=None,
        description="busy share of the launcher's CPU slots since the ensemble started (the run "
        "times of its ended tasks over slots x elapsed time)",
    )
    note: str | None = None


class ResultEntry(BaseModel):
    """One task in ``ensemble_results``."""

    index: int
    params: dict[str, Any]
    status: str = Field(description="success, failed, timeout, cancelled, pending or lost")
    result: Annotated[Any, WithJsonSchema(ANY_JSON)] = None
    error: str | None = None
    duration_s: float | None = None
    attempts: int | None = None
    node: str | None = None
    cpus: list[int] | None = None
    gpus: list[str] | None = None
    hosts: list[str] | None = None
    note: str | None = None


class ResultsOutput(BaseModel):
    """One page of an ensemble's results, in task order."""

    ensemble_id: str
    total: int
    finished: bool
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")
    counts: dict[str, int]
    tasks: list[ResultEntry]


def submit_output(ensemble_id: str, tool: str, plan: Plan) -> CallToolResult:
    """The result of a ``<tool>_submit`` call."""
    out = SubmitOutput(
        ensemble_id=ensemble_id,
        tool=tool,
        total=plan.total,
        relation=plan.relation,
        lengths=plan.lengths,
        broadcast=list(plan.broadcast),
    )
    text = (
        f"Started ensemble {out.ensemble_id}: {out.total} tasks of {out.tool}. "
        f'Call ensemble_status(ensemble_id="{out.ensemble_id}") until finished is true, '
        "then ensemble_results to read them."
    )
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=out.model_dump(mode="json"),
    )


def _elapsed(snapshot: Snapshot, now: float) -> float:
    end = now if snapshot.finished is None else snapshot.finished
    return round(max(0.0, end - snapshot.created), 3)


def _lost_note(snapshot: Snapshot) -> str | None:
    lost = snapshot.counts["lost"]
    if not lost:
        return None
    return (
        f"{lost} tasks are lost: the server stopped before they ended; their results were "
        "never recorded (run them again if you need them)"
    )


def status_output(
    snapshot: Snapshot, now: float, busy_s: float = 0.0, slots: int = 0
) -> StatusOutput:
    """The status of an ensemble (``busy_s`` of its tasks' run times on ``slots`` CPU slots)."""
    elapsed = _elapsed(snapshot, now)
    utilisation = round(min(1.0, busy_s / (slots * elapsed)), 4) if slots and elapsed else None
    return StatusOutput(
        ensemble_id=snapshot.ensemble_id,
        tool=snapshot.tool,
        total=snapshot.total,
        done=snapshot.done,
        finished=snapshot.counts["pending"] == 0,
        counts=snapshot.counts,
        elapsed_s=elapsed,
        utilisation=utilisation,
        note=_lost_note(snapshot),
    )


STATUS_HELP = (
    "Progress of an ensemble started by a *_submit tool: tasks done, counts by "
    "status, finished true/false."
)
RESULTS_HELP = (
    "Results of an ensemble started by a *_submit tool, in task order, one page at a "
    "time (limit at most 1000); call again with next_offset until it is null. "
    "Tasks not ended yet show status pending; tasks a server restart cut show lost."
)
CANCEL_HELP = (
    "Cancel an ensemble started by a *_submit tool: tasks not ended stop and end "
    "cancelled; results of ended tasks stay readable."
)


def add_ensemble_tools(
    server: MCPServer[Any], registry: Registry, slots: Callable[[], int] = lambda: 0
) -> None:
    """Register ``ensemble_status``, ``ensemble_results`` and ``ensemble_cancel`` on ``server``.

    ``slots`` tells the CPU slots of the server's launcher (for the utilisation in a status).
    """
    clock = registry._clock

    @server.tool(name="ensemble_status", description=STATUS_HELP)
    async def ensemble_status(ensemble_id: str) -> StatusOutput:
        snapshot = registry.snapshot(ensemble_id)
        return status_output(snapshot, clock(), registry.busy_seconds(ensemble_id), slots())

    @server.tool(name="ensemble_results", description=RESULTS_HELP)
    async def ensemble_results(
        ensemble_id: str,
        offset: Annotated[int, Field(ge=0, description="first task index")] = 0,
        limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="tasks per page")] = 100,
    ) -> Annotated[CallToolResult, ResultsOutput]:
        snapshot = registry.snapshot(ensemble_id)
        total = snapshot.total
        stop = min(offset + limit, total)
        entries, note = registry.page(snapshot, offset, stop)
        counts = snapshot.counts
        out = {
            "ensemble_id": ensemble_id,
            "total": total,
            "finished": counts["pending"] == 0,
            "offset": offset,
            "next_offset": stop if stop < total else None,
            "counts": counts,
            "tasks": entries,
        }
        notes = "; ".join(n for n in (note, _lost_note(snapshot)) if n)
        summary = summarize(
            snapshot.tool, snapshot.plan, entries, _elapsed(snapshot, clock()), notes
        )
        summary["counts"] = counts
        text = render_text(summary, entries, max_lines=registry.limits.text_lines)
        if stop < total:
            text += f"\nnext page: offset={stop}"
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=out)

    @server.tool(name="ensemble_cancel", description=CANCEL_HELP)
    async def ensemble_cancel(ensemble_id: str) -> StatusOutput:
        return status_output(registry.cancel(ensemble_id), clock())

    del ensemble_status, ensemble_results, ensemble_cancel
