"""A worker process made very slow but never stuck: SIGSTOP/SIGCONT cycles (for the pools'
busy-is-not-hung tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def starved(pid: int, stopped_s: float = 0.4, running_s: float = 0.1) -> AsyncIterator[None]:
    """While inside, the process runs `running_s` out of every `stopped_s + running_s`."""

    async def cycle() -> None:
        try:
            while True:
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(stopped_s)
                os.kill(pid, signal.SIGCONT)
                await asyncio.sleep(running_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    task = asyncio.create_task(cycle())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
