"""The whisper pool with the real model and real speech: batches, classes, worker deaths."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from agent.audio import Decimator, Pcm16
from agent.engines.interfaces import EngineError, Transcription
from agent.engines.priority import Priority, Urgency
from agent.engines.whisper_pool import WhisperConfig, WhisperPool
from harness.wer import wer
from tests.conftest import SENTENCES

SPECULATIVE, TURN_FINAL = Priority.SPECULATIVE, Priority.TURN_FINAL


def to16k(pcm48: Pcm16) -> Pcm16:
    return Decimator(3).process(pcm48)


LONG = SENTENCES[:4]  # ~5 s: well inside the pass's length cap (a ~6 s clip was cut short)


def long_pass(speech: dict[str, Pcm16]) -> Pcm16:
    """~5 s of speech: keeps a worker busy while the test queues passes behind it."""
    return np.concatenate([to16k(speech[t]) for t in LONG])


async def started(config: WhisperConfig) -> WhisperPool:
    pool = WhisperPool(config)
    await pool.start()
    return pool


async def test_waiting_passes_run_in_one_batch_each_back_to_its_caller(
    speech: dict[str, Pcm16],
) -> None:
    pool = await started(WhisperConfig(workers=1, cpu_threads=2, max_batch=8))
    try:
        busy = asyncio.ensure_future(pool.transcribe(long_pass(speech)))
        await asyncio.sleep(0)
        texts = SENTENCES[:5]
        waiting = [asyncio.ensure_future(pool.transcribe(to16k(speech[t]))) for t in texts]
        await asyncio.sleep(0)
        assert pool.waiting == 5, "the worker is busy: all five wait"
        results = await asyncio.gather(*waiting)
        await busy
        assert pool.batch_sizes == {1: 1, 5: 1}, "the five ran as one batch"
        for text, result in zip(texts, results, strict=True):
            assert wer(text, result.text) == 0.0, (text, result.text)
        # One batch: they started together and share its compute time.
        assert len({round(r.compute_s, 6) for r in results}) == 1
    finally:
        await pool.aclose()


async def test_turn_final_goes_before_a_speculative_pass_queued_earlier(
    speech: dict[str, Pcm16],
) -> None:
    pool = await started(WhisperConfig(workers=1, max_batch=8))
    try:
        busy = asyncio.ensure_future(pool.transcribe(long_pass(speech)))
        await asyncio.sleep(0)
        pcm = to16k(speech["What time is it?"])
        order: list[str] = []

        async def pass_(name: str, urgency: Urgency) -> Transcription:
            result = await pool.transcribe(pcm, urgency)
            order.append(name)
            return result

        spec = asyncio.ensure_future(pass_("speculative", Urgency(SPECULATIVE)))
        await asyncio.sleep(0)
        final = asyncio.ensure_future(pass_("turn_final", Urgency(TURN_FINAL)))
        raised = Urgency(SPECULATIVE)
        late = asyncio.ensure_future(pass_("raised", raised))
        await asyncio.sleep(0)
        raised.raise_to(TURN_FINAL)  # its turn ended while it waited
        s, f, r = await asyncio.gather(spec, final, late)
        await busy
        assert order == ["turn_final", "raised", "speculative"]
        assert pool.batch_sizes == {1: 2, 2: 1}, "the two TURN_FINAL passes: one batch"
        assert s.queue_wait_s > f.queue_wait_s
        assert pool.served == {"turn_final": 3, "speculative": 1}
        assert all(wer("what time is it", x.text) == 0.0 for x in (s, f, r))
    finally:
        await pool.aclose()


async def test_a_cancelled_waiting_pass_leaves_the_line_and_never_runs(
    speech: dict[str, Pcm16],
) -> None:
    pool = await started(WhisperConfig(workers=1))
    try:
        busy = asyncio.ensure_future(pool.transcribe(long_pass(speech)))
        await asyncio.sleep(0)
        pcm = to16k(speech["Good morning."])
        doomed = asyncio.ensure_future(pool.transcribe(pcm, Urgency(SPECULATIVE)))
        kept = asyncio.ensure_future(pool.transcribe(pcm, Urgency(SPECULATIVE)))
        await asyncio.sleep(0)
        assert pool.waiting == 2
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        assert pool.waiting == 1, "out of line at once"
        await busy
        assert wer("good morning", (await kept).text) == 0.0
        assert pool.passes == 2 and pool.batch_sizes == {1: 2}, "the cancelled pass never ran"
    finally:
        await pool.aclose()


async def test_a_killed_worker_is_replaced_alone_and_its_pass_runs_on_the_other(
    speech: dict[str, Pcm16],
) -> None:
    pool = await started(WhisperConfig(workers=2, cpu_threads=1))
    try:
        pids = pool.worker_pids
        assert len(pids) == 2 and os.getpid() not in pids
        long = long_pass(speech)
        victim_pass = asyncio.ensure_future(pool.transcribe(long))  # the first worker
        other_pass = asyncio.ensure_future(pool.transcribe(long))  # the second
        await asyncio.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)
        a, b = await asyncio.gather(victim_pass, other_pass)
        assert a.text == b.text, "the same audio: the same words, re-run or not"
        assert wer(" ".join(LONG), a.text) <= 0.1, a.text
        assert pool.restarts == 1 and pool.reruns == 1
        assert pids[1] in pool.worker_pids, "the other worker was never restarted"
        for _ in range(200):  # the replacement loads its model (~1 s)
            if len(pool.worker_pids) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(pool.worker_pids) == 2 and pids[0] not in pool.worker_pids
        pcm = to16k(speech["What is your name?"])
        again = await asyncio.gather(pool.transcribe(pcm), pool.transcribe(pcm))
        assert all(wer("what is your name", r.text) == 0.0 for r in again)
    finally:
        await pool.aclose()


async def test_a_pass_whose_worker_dies_twice_fails_retryable(speech: dict[str, Pcm16]) -> None:
    """Run again once only: a pass that kills every worker it meets must not go round."""
    pool = await started(WhisperConfig(workers=2, cpu_threads=1))
    try:
        first, second = pool.worker_pids
        doomed = asyncio.ensure_future(pool.transcribe(long_pass(speech)))
        await asyncio.sleep(0.05)
        os.kill(first, signal.SIGKILL)
        for _ in range(100):
            if pool.reruns == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        os.kill(second, signal.SIGKILL)
        with pytest.raises(EngineError) as info:
            await doomed
        assert info.value.retryable and pool.restarts == 2
    finally:
        await pool.aclose()
