"""FakeClock: sleepers and timeouts move only when the test advances time."""

from __future__ import annotations

import asyncio

import pytest

from agent.clock import FakeClock, MonotonicClock


async def test_timeout_expires_at_the_fake_deadline_only() -> None:
    clock = FakeClock()
    outcome: list[str] = []

    async def waits_forever() -> None:
        try:
            async with clock.timeout(1.0):
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append(f"timeout at {clock.now() - 1000.0:.3f}")

    task = asyncio.get_running_loop().create_task(waits_forever())
    await clock.advance(0.999)
    assert outcome == [] and not task.done()
    await clock.advance(0.002)
    await task
    assert outcome == ["timeout at 1.000"]


async def test_timeout_left_in_time_never_fires_later() -> None:
    clock = FakeClock()
    async with clock.timeout(0.5):
        pass  # the body finishes at once
    await clock.advance(1.0)  # the deadline passes after the block was left
    await asyncio.sleep(0)  # nothing cancels this task: it goes on
    assert clock._sleepers == [], "the deadline was withdrawn when the block was left"


async def test_timeout_body_finishing_before_the_deadline() -> None:
    clock = FakeClock()

    async def quick() -> str:
        async with clock.timeout(1.0):
            await clock.sleep(0.5)
        return "done"

    task = asyncio.get_running_loop().create_task(quick())
    await clock.advance(2.0)
    assert task.result() == "done"


async def test_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    clock = FakeClock()

    async def body() -> None:
        async with clock.timeout(10.0):
            await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(body())
    await clock.advance(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_monotonic_timeout_is_asyncio_s() -> None:
    with pytest.raises(TimeoutError):
        async with MonotonicClock().timeout(0.01):
            await asyncio.Event().wait()
