"""The micro-batcher of `pcam serve`: patches from requests that arrive together are scored in one
forward pass, and each request gets its own results back."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class MicroBatcher:
    """Scores (n, 96, 96, 3) patch arrays submitted by concurrent requests in shared forward passes.

    The first waiting submission opens a batch; submissions arriving within `wait_s` (or until `max_batch`
    patches are gathered) join it; `score` runs once on the concatenation in a worker thread (one at a
    time: the model is not shared between threads) and each submission gets its slice of the result."""

    def __init__(self, score: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 256, wait_s: float = 0.002) -> None:
        self.score, self.max_batch, self.wait_s = score, max_batch, wait_s
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcam-forward")
        self.passes = 0  # forward passes run (the batching's effect: fewer passes than requests)
        self.patches = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((pixels, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            size = len(items[0][0])
            deadline = loop.time() + self.wait_s
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait() if self.wait_s == 0 else await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                items.append(item)
                size += len(item[0])
            batch = np.concatenate([pixels for pixels, _ in items]) if len(items) > 1 else items[0][0]
            try:
                probs = await loop.run_in_executor(self._executor, self.score, batch)
            except Exception as err:  # each waiting request learns of it; the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.passes += 1
            self.patches += len(batch)
            start = 0
            for pixels, future in items:
                if not future.done():  # a request whose client went away was cancelled
                    future.set_result(probs[start : start + len(pixels)])
                start += len(pixels)
