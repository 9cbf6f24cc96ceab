"""One TTS worker process serving several syntheses at once (agent/engines/tts_pool.py,
tts_worker.py), with real piper: concurrency, a cancel among others, busy versus hung, and
the process lost with requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any, cast

import numpy as np
import pytest

from agent.engines.interfaces import EngineError
from agent.engines.priority import Priority, Urgency
from agent.engines.tts_pool import TtsPoolConfig, TtsWorkerPool, _Process, _Stalled
from harness.speech import synthesizer
from tests.starve import starved

QUIET: dict[str, Any] = {"noise_scale": 0.0, "noise_w_scale": 0.0}  # the same samples each time
TEXTS = (
    "You said: I would like to book a table for two people tomorrow evening at seven.",
    "The weather in the mountains will be cold and windy, with some snow after midnight.",
    "Your order has been shipped and it should arrive at your door by Thursday afternoon.",
)
# One sentence (piper synthesizes it in one piece): its first chunk comes only when all of
# it is computed, ~1 s of CPU.
LONG_SENTENCE = (
    "You said that you would like to book a table for two people tomorrow evening at seven"
    " in the small Italian place near the station, the one with the garden at the back, and"
    " that you would prefer a quiet table away from the kitchen door if they have one left"
)


def config(**kw: float) -> TtsPoolConfig:
    values: dict[str, float] = {
        "workers": 3,
        "first_chunk_timeout_s": 10,
        "chunk_timeout_s": 10,
        "acquire_timeout_s": 30,
    }
    values.update(kw)
    return TtsPoolConfig(**values)  # type: ignore[arg-type]  # the test's few numbers


async def collect(pool: TtsWorkerPool, text: str, **kw: Any) -> np.ndarray:
    parts = [pcm async for pcm in pool.synthesize(text, **kw)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


async def timed(pool: TtsWorkerPool, text: str) -> tuple[np.ndarray, float]:
    started = time.monotonic()
    audio = await collect(pool, text, **QUIET)
    return audio, time.monotonic() - started


def the_pid(pool: TtsWorkerPool) -> int:
    (worker,) = pool._all
    return worker.pid


async def running(pool: TtsWorkerPool, n: int) -> None:
    """Until `n` requests are being synthesized."""
    for _ in range(2000):
        if len(pool._running) >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never {n} requests at once: {len(pool._running)}")


async def test_concurrent_requests_share_one_process_and_run_at_once() -> None:
    """Three rounds of: each text alone, then all at once; the best round's ratio counts
    (other work shares this machine's two cores, and its load drifts between rounds)."""
    ratios: list[tuple[float, float, float]] = []  # (together / sum alone, together, sum)
    async with synthesizer(config=config()) as pool:
        pid = the_pid(pool)
        for _ in range(3):
            alone = [await timed(pool, text) for text in TEXTS]
            started = time.monotonic()
            tasks = [asyncio.create_task(timed(pool, text)) for text in TEXTS]
            await running(pool, 3)
            together = await asyncio.gather(*tasks)
            wall_s = time.monotonic() - started
            sum_s = sum(t for _, t in alone)
            ratios.append((wall_s / sum_s, wall_s, sum_s))
            for (reference, _), (audio, _) in zip(alone, together, strict=True):
                assert np.array_equal(audio, reference), "each request got its own audio, intact"
        assert the_pid(pool) == pid and len(pool._all) == 1
        assert sum(pool.restarts.values()) == 0
    print("together / sum alone:", ", ".join(f"{w:.3f}/{a:.3f}s" for _, w, a in ratios))
    assert min(ratios)[0] < 1.0, ratios


async def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    async with synthesizer(config=config()) as pool:
        references = [await collect(pool, text, **QUIET) for text in TEXTS[:2]]
        others = [asyncio.create_task(collect(pool, text, **QUIET)) for text in TEXTS[:2]]
        doomed = asyncio.create_task(
            collect(pool, LONG_SENTENCE, urgency=Urgency(Priority.READ_AHEAD), **QUIET)
        )
        await running(pool, 3)
        await asyncio.sleep(0.05)  # inside the inference
        doomed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        got = await asyncio.gather(*others)
        after = await collect(pool, "And the next one.")
        assert sum(pool.restarts.values()) == 0
        assert pool._running == {} and len(pool._idle) == 3, "every slot is free again"
    for audio, reference in zip(got, references, strict=True):
        assert np.array_equal(audio, reference)
    assert after.size > 0


async def test_a_slow_worker_past_the_chunk_timeout_is_not_replaced() -> None:
    timeout_s = 1.0
    async with synthesizer(config=config(first_chunk_timeout_s=timeout_s)) as pool:
        pid = the_pid(pool)
        reference = await collect(pool, LONG_SENTENCE, **QUIET)
        async with starved(pid, stopped_s=0.4, running_s=0.2):
            started = time.monotonic()
            stream = pool.synthesize(LONG_SENTENCE, **QUIET)
            first = await anext(stream)
            first_s = time.monotonic() - started
            audio = np.concatenate([first, *[pcm async for pcm in stream]])
        assert the_pid(pool) == pid, "the slow worker was replaced"
        assert sum(pool.restarts.values()) == 0, pool.restarts
    print(f"first chunk of the slowed worker after {first_s:.2f}s (timeout {timeout_s:g}s)")
    assert first_s > timeout_s, "the synthesis did not outlast the timeout: nothing tested"
    assert np.array_equal(audio, reference), "its audio arrived complete"


async def test_a_stopped_worker_fails_every_request_in_flight_and_is_replaced() -> None:
    timeout_s = 1.0
    async with synthesizer(config=config(first_chunk_timeout_s=timeout_s)) as pool:
        pid = the_pid(pool)
        started = time.monotonic()
        tasks = [asyncio.create_task(collect(pool, text)) for text in (LONG_SENTENCE,) * 2]
        await running(pool, 2)
        os.kill(pid, signal.SIGSTOP)  # for good
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        took_s = time.monotonic() - started
        assert all(isinstance(r, EngineError) and r.retryable for r in results), results
        assert pool.restarts["hung"] == 1 and sum(pool.restarts.values()) == 1
        assert (await collect(pool, "I am back.")).size > 0
        assert the_pid(pool) != pid
    # The first period without CPU: the first or the second after the requests were sent
    # (the first may have seen the CPU used before the stop), never the ceiling.
    assert timeout_s <= took_s < 2 * timeout_s + 1.5, took_s


async def test_process_death_fails_in_flight_requests_retryable_and_the_pool_recovers() -> None:
    async with synthesizer(config=config()) as pool:
        pid = the_pid(pool)
        tasks = [asyncio.create_task(collect(pool, text)) for text in (LONG_SENTENCE,) * 3]
        await running(pool, 3)
        os.kill(pid, signal.SIGKILL)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, EngineError) and r.retryable for r in results), results
        again = await asyncio.gather(*(collect(pool, text) for text in TEXTS))
        assert all(a.size > 48_000 for a in again)
        assert the_pid(pool) != pid and len(pool._idle) == 3
        assert pool.restarts["died"] == 1 and sum(pool.restarts.values()) == 1


async def _stalls_after(pool: TtsWorkerPool, pid: int, timeout_s: float) -> float:
    never = asyncio.Event()
    started = time.monotonic()
    with pytest.raises(_Stalled):
        await pool._patiently(cast(_Process, _Pid(pid)), never.wait, timeout_s)
    return time.monotonic() - started


class _Pid:
    def __init__(self, pid: int) -> None:
        self.pid = pid


async def test_a_spinning_process_is_hung_at_the_ceiling_an_idle_one_at_once() -> None:
    """The watch alone: a process using CPU is waited for, up to the hard ceiling; one
    using none is hung after one period."""
    pool = TtsWorkerPool(config(stall_ceiling_s=1.0))
    spinning = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
    sleeping = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    try:
        await asyncio.sleep(0.3)  # both started
        spun_s = await _stalls_after(pool, spinning.pid, 0.25)
        slept_s = await _stalls_after(pool, sleeping.pid, 0.25)
    finally:
        for proc in (spinning, sleeping):
            proc.kill()
            await proc.wait()
    assert 1.0 <= spun_s < 1.6, spun_s
    assert 0.25 <= slept_s < 0.6, slept_s
