"""Concurrent requests answered together: a request's rows wait at most `max_wait_ms` for others, up to
`max_batch_size` rows, then one forward pass per checkpoint serves them all. The model runs in one worker thread, so
the event loop keeps answering (`/health`) while it computes, and requests never run the model at the same time.

A batch also waits, briefly (`RETURN_WINDOW_S`), for the clients the last batch answered: a client that sends its
next request when it gets its answer is back within a round trip, and a batch taken without it splits such clients
into two halves that alternate (32 clients made batches of ~14-18 rows; BENCHMARKS.md, issue 47)."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MicroBatcher",
    "RETURN_WINDOW_S",
]


# Longer than a loopback or LAN round trip of an HTTP client (~1 ms), short beside a forward pass (tens of ms); it
# ends as soon as every client the last batch answered is back, so a lone client never waits for it.
RETURN_WINDOW_S = 0.004


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
        self._answered, self._answered_at = 0, 0.0  # the last batch's requests and when it answered them
        self.batches = self.rows = 0

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

    async def _collect(self, loop) -> list[_Waiting]:
        """The next batch: the first request waiting, then whoever arrives within the window and still fits; the
        window stays open until the clients the last batch answered are back or `RETURN_WINDOW_S` has passed."""
        first = self._held or await self._queue.get()
        self._held, batch, size = None, [first], len(first.records)
        company_until = loop.time() + self.max_wait
        returned = int(first.arrived >= self._answered_at)
        while size < self.max_batch_size:
            if not self._queue.empty():
                waiting = self._queue.get_nowait()
            elif (left := self._wait_left(loop.time(), company_until, returned)) > 0:
                try:
                    waiting = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            else:
                break
            returned += waiting.arrived >= self._answered_at
            if size + len(waiting.records) > self.max_batch_size:
                self._held = waiting
                break
            batch.append(waiting)
            size += len(waiting.records)
        return batch

    def _wait_left(self, now: float, company_until: float, returned: int) -> float:
        """Seconds the batch may still wait: for company (`max_wait_ms`), and for the last batch's clients while
        some are not back."""
        returns_until = self._answered_at + RETURN_WINDOW_S if returned < self._answered else now
        return max(company_until, returns_until) - now
