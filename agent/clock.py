"""Injected time: every stage reads time and sleeps through a Clock, so tests can jump it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Like `asyncio.timeout(seconds)` (raises TimeoutError), but on this clock."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        # asyncio.timeout, never asyncio.wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that races with its inner future completing (a barge-in must cancel).
        return asyncio.timeout(seconds)


class FakeClock:
    """A clock that only moves when a test calls `advance`; sleepers wake in deadline order."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[object]:
        """asyncio's own Timeout, expired by this clock: it cancels the body and raises
        TimeoutError exactly as `asyncio.timeout` does, when `advance` reaches the deadline."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as timer:
            inside = True

            def expire(deadline: asyncio.Future[None]) -> None:
                if inside and not deadline.cancelled():
                    timer.reschedule(loop.time())

            deadline: asyncio.Future[None] = loop.create_future()
            deadline.add_done_callback(expire)
            heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), deadline))
            try:
                yield timer
            finally:
                inside = False
                deadline.cancel()

    async def advance(self, seconds: float, step: float = 0.001) -> None:
        """Move time forward in small steps, letting woken tasks run at each step."""
        end = self._now + seconds
        while True:
            await _settle()
            if self._sleepers and self._sleepers[0][0] <= end:
                deadline, _, fut = heapq.heappop(self._sleepers)
                self._now = max(self._now, deadline)
                if not fut.done():
                    fut.set_result(None)
                continue
            self._now = end
            await _settle()
            return


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
