"""A batch of tasks submitted together: futures, result streams, and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from functools import partial
from pathlib import Path

from core.result import TaskResult


class Batch:
    """Tasks submitted together: their futures, a result stream, and cancellation."""

    def __init__(
        self, cancel: Callable[[list[int]], None], task_ids: list[str], keys: list[int]
    ) -> None:
        self._cancel = cancel
        self.task_ids = task_ids
        self._keys = keys
        self._results: list[TaskResult | None] = [None] * len(task_ids)
        self._order: list[TaskResult] = []
        self._order_index: list[int] = []
        self.submit_time = time.time()
        self._futures: list[Future[TaskResult]] | None = None
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.on_done: Callable[[Batch], None] | None = None
        """Called once, in the launcher's thread, when the last task has ended."""
        self.profile: Future[Path] | None = None
        """Where this batch's profile is written, when the launcher's config asks for one."""

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def num_done(self) -> int:
        """How many tasks have ended."""
        return len(self._order)

    def done(self) -> bool:
        """True when every task has ended."""
        return len(self._order) == len(self.task_ids)

    @property
    def futures(self) -> list[Future[TaskResult]]:
        """One future per task, in submission order; they resolve to TaskResult, never raise."""
        with self._cond:
            if self._futures is None:
                futures: list[Future[TaskResult]] = []
                for result in self._results:
                    future: Future[TaskResult] = Future()
                    future.set_running_or_notify_cancel()
                    if result is not None:
                        future.set_result(result)
                    futures.append(future)
                self._futures = futures
            return self._futures

    def _finish(self, done: list[tuple[int, TaskResult]]) -> None:
        with self._cond:
            for index, result in done:
                self._results[index] = result
                self._order.append(result)
                self._order_index.append(index)
                if self._futures is not None:
                    self._futures[index].set_result(result)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
            ended = self.done()
        if ended and self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            on_done(self)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    def results(self, timeout: float | None = None) -> list[TaskResult]:
        """Wait for every task; results in submission order."""
        with self._cond:
            if not self._cond.wait_for(self.done, timeout):
                raise TimeoutError(f"{len(self) - self.num_done} of {len(self)} tasks still run")
        return self._results  # type: ignore[return-value]

    def as_completed(self, timeout: float | None = None) -> Iterator[TaskResult]:
        """Yield results as tasks end (completion order)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while seen < len(self):
            with self._cond:
                left = None if deadline is None else deadline - time.monotonic()
                if not self._cond.wait_for(partial(self._more_than, seen), left):
                    raise TimeoutError(f"{len(self) - seen} tasks still run")
                new = self._order[seen:]
            seen += len(new)
            yield from new

    def _more_than(self, seen: int) -> bool:
        return len(self._order) > seen

    async def stream(self) -> AsyncIterator[TaskResult]:
        """Yield results as tasks end (completion order), without blocking the event loop."""
        async for _, result in self.stream_indexed():
            yield result

    async def stream_indexed(self) -> AsyncIterator[tuple[int, TaskResult]]:
        """Yield ``(index in the batch, result)`` as tasks end, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        seen = 0
        while seen < len(self):
            event = None
            with self._cond:
                new = list(zip(self._order_index[seen:], self._order[seen:], strict=True))
                if not new:
                    event = asyncio.Event()
                    self._waiters.append((loop, event))
            if event is not None:
                await event.wait()
                continue
            seen += len(new)
            for pair in new:
                yield pair

    async def wait(self) -> list[TaskResult]:
        """Wait (async) for every task; results in submission order."""
        async for _ in self.stream():
            pass
        return self._results  # type: ignore[return-value]

    def cancel(self) -> None:
        """Cancel every task that has not ended; each still yields a ``cancelled`` result."""
        with self._cond:
            keys = [k for k, r in zip(self._keys, self._results, strict=True) if r is None]
        if keys:
            self._cancel(keys)
