"""Long ensembles: a bounded registry of running ensembles and the tools that watch them.

``<tool>_submit`` starts an ensemble and returns its id at once; ``ensemble_status``,
``ensemble_results`` (paged) and ``ensemble_cancel`` work on that id from any later request.
Finished ensembles are kept for ``ttl_s`` seconds, and at most ``max_ensembles`` are kept.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field, WithJsonSchema

from core import Batch
from ensemble_mcp.errors import NOTHING_RUN, ToolCallError
from ensemble_mcp.plan import Plan
from ensemble_mcp.results import ANY_JSON, STATUSES, ResultConverter, render_text, summarize
from ensemble_mcp.tools import EnsembleSpec

MAX_PAGE = 1000


@dataclass
class Ensemble:
    """One submitted ensemble and what is needed to report on it."""

    ensemble_id: str
    spec: EnsembleSpec
    plan: Plan
    echoes: list[dict[str, Any]] = field(repr=False)
    batch: Batch = field(repr=False)
    converter: ResultConverter = field(repr=False)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def counts(self) -> dict[str, int]:
        """Tasks per status, ``pending`` for those not ended."""
        counts = dict.fromkeys((*STATUSES, "pending"), 0)
        for future in self.batch.futures:
            counts[future.result().status.value if future.done() else "pending"] += 1
        return counts


class Registry:
    """The ensembles this server runs or has run, bounded in time and number."""

    def __init__(
        self,
        *,
        ttl_s: float = 3600.0,
        max_ensembles: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_ensembles < 1:
            raise ValueError("ttl_s must be > 0 and max_ensembles >= 1")
        self.ttl_s = ttl_s
        self.max_ensembles = max_ensembles
        self._clock = clock
        self._ensembles: dict[str, Ensemble] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ensembles)

    def room(self) -> None:
        """Make room for one more ensemble.

        Raises:
            ToolCallError: ``max_ensembles`` ensembles are still running.
        """
        with self._lock:
            self._prune()
            if len(self._ensembles) >= self.max_ensembles:
                raise ToolCallError(
                    f"{len(self._ensembles)} ensembles are still running, the most "
                    "this server keeps; wait for one to finish or cancel one with "
                    f"ensemble_cancel. {NOTHING_RUN}"
                )

    def add(
        self,
        spec: EnsembleSpec,
        plan: Plan,
        echoes: list[dict[str, Any]],
        batch: Batch,
        converter: ResultConverter,
    ) -> Ensemble:
        """Register a started ensemble under a new unguessable id."""
        ensemble = Ensemble(
            f"{spec.name}-{secrets.token_hex(6)}",
            spec,
            plan,
            echoes,
            batch,
            converter,
            started=self._clock(),
        )
        with self._lock:
            self._ensembles[ensemble.ensemble_id] = ensemble
        return ensemble

    def get(self, ensemble_id: str) -> Ensemble:
        """The ensemble with this id.

        Raises:
            ToolCallError: no such ensemble (never existed, or dropped after ``ttl_s``).
        """
        with self._lock:
            self._prune()
            ensemble = self._ensembles.get(ensemble_id)
        if ensemble is None:
            raise ToolCallError(
                f"no ensemble has id {ensemble_id!r}; ids come from a *_submit tool, "
                f"and finished ensembles are dropped after {self.ttl_s:g} s"
            )
        return ensemble

    def clear(self) -> None:
        """Forget every ensemble (the launcher that ran them has stopped)."""
        with self._lock:
            self._ensembles.clear()

    def _prune(self) -> None:
        now = self._clock()
        finished: list[tuple[float, int, str]] = []
        for order, e in enumerate(self._ensembles.values()):
            if e.finished is None and e.batch.done():
                e.finished = now
            if e.finished is not None:
                finished.append((e.finished, order, e.ensemble_id))
        for ended, _, ensemble_id in sorted(finished):
            if now - ended > self.ttl_s or len(self._ensembles) >= self.max_ensembles:
                del self._ensembles[ensemble_id]


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
    done: int = Field(description="tasks that have ended")
    finished: bool
    counts: dict[str, int] = Field(description="tasks per status; pending: not ended yet")
    elapsed_s: float


class ResultEntry(BaseModel):
    """One task in ``ensemble_results``."""

    index: int
    params: dict[str, Any]
    status: str = Field(description="success, failed, timeout, cancelled or pending")
    result: Annotated[Any, WithJsonSchema(ANY_JSON)] = None
    error: str | None = None
    duration_s: float | None = None
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


def submit_output(ensemble: Ensemble) -> CallToolResult:
    """The result of a ``<tool>_submit`` call."""
    plan = ensemble.plan
    out = SubmitOutput(
        ensemble_id=ensemble.ensemble_id,
        tool=ensemble.spec.name,
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


def status_output(ensemble: Ensemble, clock: Callable[[], float]) -> StatusOutput:
    """The status of an ensemble now."""
    counts = ensemble.counts()
    total = ensemble.plan.total
    return StatusOutput(
        ensemble_id=ensemble.ensemble_id,
        tool=ensemble.spec.name,
        total=total,
        done=total - counts["pending"],
        finished=counts["pending"] == 0,
        counts=counts,
        elapsed_s=round(clock() - ensemble.started, 3),
    )


STATUS_HELP = (
    "Progress of an ensemble started by a *_submit tool: tasks done, counts by "
    "status, finished true/false."
)
RESULTS_HELP = (
    "Results of an ensemble started by a *_submit tool, in task order, one page at a "
    "time (limit at most 1000); call again with next_offset until it is null. "
    "Tasks not ended yet show status pending."
)
CANCEL_HELP = (
    "Cancel an ensemble started by a *_submit tool: tasks not ended stop and end "
    "cancelled; results of ended tasks stay readable."
)


def add_ensemble_tools(
    server: MCPServer[Any], registry: Registry, clock: Callable[[], float] = time.monotonic
) -> None:
    """Register ``ensemble_status``, ``ensemble_results`` and ``ensemble_cancel`` on ``server``."""

    @server.tool(name="ensemble_status", description=STATUS_HELP)
    async def ensemble_status(ensemble_id: str) -> StatusOutput:
        return status_output(registry.get(ensemble_id), clock)

    @server.tool(name="ensemble_results", description=RESULTS_HELP)
    async def ensemble_results(
        ensemble_id: str,
        offset: Annotated[int, Field(ge=0, description="first task index")] = 0,
        limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="tasks per page")] = 100,
    ) -> Annotated[CallToolResult, ResultsOutput]:
        ensemble = registry.get(ensemble_id)
        total = ensemble.plan.total
        stop = min(offset + limit, total)
        futures = ensemble.batch.futures[offset:stop]
        results = [f.result() if f.done() else None for f in futures]
        entries, note = ensemble.converter.entries(offset, ensemble.echoes[offset:stop], results)
        counts = ensemble.counts()
        out = {
            "ensemble_id": ensemble.ensemble_id,
            "total": total,
            "finished": counts["pending"] == 0,
            "offset": offset,
            "next_offset": stop if stop < total else None,
            "counts": counts,
            "tasks": entries,
        }
        summary = summarize(
            ensemble.spec.name, ensemble.plan, entries, clock() - ensemble.started, note
        )
        summary["counts"] = counts
        text = render_text(summary, entries, max_lines=ensemble.converter.limits.text_lines)
        if stop < total:
            text += f"\nnext page: offset={stop}"
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=out)

    @server.tool(name="ensemble_cancel", description=CANCEL_HELP)
    async def ensemble_cancel(ensemble_id: str) -> StatusOutput:
        ensemble = registry.get(ensemble_id)
        ensemble.batch.cancel()
        return status_output(ensemble, clock)

    del ensemble_status, ensemble_results, ensemble_cancel
