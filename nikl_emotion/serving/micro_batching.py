"""Concurrent requests answered together: a request's rows wait at most `max_wait_ms` for others, up to
`max_batch_size` rows, then one forward pass per checkpoint serves them all. The model runs in one worker thread, so
the event loop keeps answering (`/health`) while it computes, and requests never run the model at the same time.

A batch also waits for the clients the last batch answered: a client that sends its next request when it gets its
answer is back within a round trip, and a batch taken without it splits such clients into two halves that alternate
(32 clients made batches of ~15 rows; BENCHMARKS.md, issue 47). It waits until all of them are back, never longer
than `RETURN_SHARE` of the time the last batch took to compute: a lone client is back at once, and clients that do
not return (independent callers) delay a batch by at most that share."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MicroBatcher",
    "RETURN_SHARE",
]


# 32 clients were all back 15-45 ms after their answers, beside batches of 230-320 ms (2 cores, electra-mini x 5)
RETURN_SHARE = 0.25


@dataclass
class _Waiting:
    records: list[dict]
    answer: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    arrived: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class MicroBatcher:
    """`await batcher.predict(records)` -> (decisions, probabilities) of those records, batched with others'."""

    def __init__(self, predict, max_batch_size: int = 64, max_wait_ms: float = 5.0):
        self._predict, self.max_batch_size, self.max_wait = predict, max_batch_size, max_wait_ms / 1000
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._held: _Waiting | None = None  # a request that did not fit the last batch: it opens the next
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        # the last batch: its requests, when it answered them, how long it computed
        self._answered, self._answered_at, self._computed = 0, 0.0, 0.0
        self.batches = self.rows = 0
        self.waited_for_returns = 0.0  # seconds batches waited for the last batch's clients

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def close(self) -> None:
        """Stop taking batches; requests still waiting are answered with an error, the running batch finishes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            waiting = self._queue.get_nowait()
            waiting.answer.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def predict(self, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        waiting = _Waiting(records)
        await self._queue.put(waiting)
        return await waiting.answer

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            records = [dict(r, id=str(i)) for i, r in enumerate(r for w in batch for r in w.records)]
            started = loop.time()
            try:  # ids by position in the batch: two requests may use the same ids
                decisions, probs = await loop.run_in_executor(self._executor, self._predict, records)
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, never the service
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(exc)
                continue
            self.batches, self.rows = self.batches + 1, self.rows + len(records)
            start = 0
            for waiting in batch:
                end = start + len(waiting.records)
                if not waiting.answer.done():  # the client may have gone
                    waiting.answer.set_result((decisions[start:end], probs[start:end]))
                start = end
            self._answered, self._answered_at = len(batch), loop.time()
            self._computed = self._answered_at - started

    async def _collect(self, loop) -> list[_Waiting]:
        """The next batch: the first request waiting, then whoever arrives within the window and still fits, and
        the clients the last batch answered, until they are back."""
        first = self._held or await self._queue.get()
        self._held, batch, size = None, [first], len(first.records)
        company_until = loop.time() + self.max_wait
        returns = _Returns(self._answered, self._answered_at, self._answered_at + RETURN_SHARE * self._computed)
        returns.count(first)
        while size < self.max_batch_size:
            waiting = await self._next(loop, max(company_until, returns.wait_until()), company_until)
            if waiting is None:
                break
            returns.count(waiting)
            if size + len(waiting.records) > self.max_batch_size:
                self._held = waiting
                break
            batch.append(waiting)
            size += len(waiting.records)
        return batch

    async def _next(self, loop, until: float, company_until: float) -> _Waiting | None:
        """The next request waiting or arriving before `until`; None once it has passed."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        start = loop.time()
        if until <= start:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), until - start)
        except TimeoutError:
            return None
        finally:  # the time past `max_wait_ms` is the returning clients'
            self.waited_for_returns += max(0.0, loop.time() - max(start, company_until))


@dataclass
class _Returns:
    """The clients the last batch answered, coming back: how many are expected, since when, until when."""

    expected: int
    since: float
    cap: float
    back: int = 0

    def count(self, waiting: _Waiting) -> None:
        self.back += waiting.arrived >= self.since

    def wait_until(self) -> float:
        return self.since if self.back >= self.expected else self.cap
