"""The TTS worker pool with real piper workers: streaming, abandonment, death and hangs."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator

import numpy as np
import pytest

from agent.engines.interfaces import EngineError
from agent.engines.tts_pool import TtsPoolConfig, TtsWorkerPool


async def collect(pool: TtsWorkerPool, text: str) -> np.ndarray:
    return np.concatenate([pcm async for pcm in pool.synthesize(text)])


@pytest.fixture
async def pool() -> AsyncIterator[TtsWorkerPool]:
    # Short chunk timeouts make the hang test quick; a replacement worker may take a while
    # to load its voice on a busy machine.
    config = TtsPoolConfig(
        workers=1, first_chunk_timeout_s=2, chunk_timeout_s=2, acquire_timeout_s=30
    )
    p = TtsWorkerPool(config)
    await p.start()
    try:
        yield p
    finally:
        await p.aclose()


def worker_pid(pool: TtsWorkerPool) -> int:
    (worker,) = pool._all
    return int(worker.proc.pid)


async def test_speech_arrives_at_48k_in_chunks(pool: TtsWorkerPool) -> None:
    chunks = [pcm async for pcm in pool.synthesize("Hello there. This is a test of the voice.")]
    audio = np.concatenate(chunks)
    assert len(chunks) > 3, "long text should stream in several chunks"
    assert 1.5 < audio.size / 48_000 < 6.0
    assert np.abs(audio.astype(np.int32)).max() > 5000


async def test_an_abandoned_request_is_drained_and_the_worker_reused(pool: TtsWorkerPool) -> None:
    pid = worker_pid(pool)
    stream = pool.synthesize("This sentence is long enough to arrive in many separate chunks.")
    async with contextlib.aclosing(stream):
        await anext(stream)  # barge-in: stop after the first chunk
    audio = await collect(pool, "Next one.")
    assert audio.size > 0
    assert worker_pid(pool) == pid, "the same worker serves again after draining"


async def test_a_dead_worker_fails_the_request_and_is_replaced(pool: TtsWorkerPool) -> None:
    pid = worker_pid(pool)
    stream = pool.synthesize("This sentence is long enough to arrive in many separate chunks.")
    async with contextlib.aclosing(stream):
        await anext(stream)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError) as err:
            async for _ in stream:
                pass
    assert err.value.retryable
    audio = await collect(pool, "I am back.")  # waits for the replacement worker
    assert audio.size > 0 and worker_pid(pool) != pid


async def test_a_hung_worker_times_out_and_is_replaced(pool: TtsWorkerPool) -> None:
    pid = worker_pid(pool)
    os.kill(pid, signal.SIGSTOP)  # alive but silent: an engine that hangs
    try:
        with pytest.raises(EngineError, match="hung or died") as err:
            await collect(pool, "Are you there?")
        assert err.value.retryable
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    audio = await collect(pool, "Yes I am.")
    assert audio.size > 0 and worker_pid(pool) != pid


async def test_unknown_engine_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown TTS engine"):
        TtsWorkerPool(TtsPoolConfig(engine="festival"))


async def test_espeak_engine_speaks() -> None:
    pool = TtsWorkerPool(TtsPoolConfig(engine="espeak", workers=1))
    await pool.start()
    try:
        audio = await collect(pool, "Hello from espeak.")
    finally:
        await pool.aclose()
    assert audio.size > 48_000 // 2 and np.abs(audio.astype(np.int32)).max() > 3000
