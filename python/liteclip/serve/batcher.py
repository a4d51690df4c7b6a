"""Gathers requests that arrive together into one model call.

Each kind of request (predict, text search, ...) has a `Batcher`; all of them hand their batches
to one model thread, so the event loop never waits for the model and the CPU's cores go to one
batch at a time instead of to many small ones fighting over them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import Any, Callable


class Overloaded(Exception):
    """The queue of requests waiting for the model is full: the client should retry later."""


class Batcher:
    """Runs `compute(items) -> results` (one result per item, in order) on batches of up to
    `max_batch` items, waiting at most `max_wait` seconds for a batch to fill. At most
    `max_queue` items wait; beyond that `submit` raises `Overloaded` at once.

    If a whole batch fails, its items are run again one by one, so that one bad request gets
    its own error and the others their answers.
    """

    def __init__(
        self,
        name: str,
        compute: Callable[[list[Any]], Sequence[Any]],
        executor: concurrent.futures.Executor,
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[str, int], Any] | None = None,
    ) -> None:
        self.name = name
        self._on_batch = on_batch
        self._compute = compute
        self._executor = executor
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self.requests = 0
        self.batches = 0
        self.largest = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(Overloaded("the server is shutting down"))

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded(f"too many {self.name} requests waiting; retry shortly") from None
        return await future

    def waiting(self) -> int:
        """Requests queued for the model now."""
        return self._queue.qsize()

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches, "largest": self.largest}

    async def _gather(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while len(batch) < self._max_batch:
            # Whatever is already queued joins without waiting; then wait out the deadline.
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        # A client that went away does not need its answer computed.
        return [(item, future) for item, future in batch if not future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self.requests += len(batch)
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            if self._on_batch is not None:
                self._on_batch(self.name, len(batch))
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._compute, items)
            except Exception as error:  # noqa: BLE001 - each request gets its own outcome
                if len(batch) == 1:
                    _settle(batch[0][1], error=error)
                    continue
                for item, future in batch:
                    try:
                        (result,) = await loop.run_in_executor(
                            self._executor, self._compute, [item]
                        )
                    except Exception as single_error:  # noqa: BLE001
                        _settle(future, error=single_error)
                    else:
                        _settle(future, result=result)
                continue
            for (_, future), result in zip(batch, results):
                _settle(future, result=result)


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: Exception | None = None
) -> None:
    if future.done():  # the client went away meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
