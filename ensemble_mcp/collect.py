"""Collecting one call's results: in task order, with progress, and cancelled with the call."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.server.mcpserver import Context

from core import Batch, TaskResult

__all__ = ("collect",)

_PROGRESS_INTERVAL_S = 0.05
_PROGRESS_EVERY_RESULT = 20
_CANCEL_WAIT_S = 10.0


async def collect(batch: Batch, ctx: Context[Any, Any], total: int) -> list[TaskResult | None]:
    """Gather results in task order, reporting progress; cancel the batch if we are cancelled.

    Progress goes out after every task for up to 20 tasks, else at most every 50 ms and at the
    end. If the call is cancelled, the batch is cancelled and awaited (shielded, up to 10 s), so
    that its processes are gone before the cancellation goes on.
    """
    results: list[TaskResult | None] = [None] * total
    report = _progress_reporter(ctx, total)
    finished = False
    try:
        done = 0
        async for index, result in batch.stream_indexed():
            results[index] = result
            done += 1
            if report is not None:
                await report(done)
        finished = True
    finally:
        if not finished:
            batch.cancel()
            # Shielded: the caller is gone, but its processes must be too before we return.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_WAIT_S):
                await batch.wait()
    return results


def _progress_reporter(
    ctx: Context[Any, Any], total: int
) -> Callable[[int], Awaitable[None]] | None:
    try:
        ctx.request_context  # noqa: B018 - raises outside a request
    except ValueError:
        return None
    last = -1.0

    async def report(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if total <= _PROGRESS_EVERY_RESULT or done == total or now - last >= _PROGRESS_INTERVAL_S:
            last = now
            await ctx.report_progress(done, total, f"{done}/{total} tasks done")

    return report
