"""A TTS worker killed or frozen (SIGSTOP) in the middle of a reply: the TurnManager with the
real piper worker pool. The reply goes on within the chunk timeout, every sentence after the
fault is spoken, and the restart is logged at WARNING with its reason and counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Hashable
from typing import Any

import pytest

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.clock import MonotonicClock
from agent.conversation.history import Conversation
from agent.conversation.turns import TurnManager
from agent.engines.tts_pool import TtsPoolConfig, TtsWorkerPool
from agent.metrics import TurnMetrics
from harness.speech import synthesizer
from tests.turn_rig import ScriptedLlm

REPLY = (
    "The first sentence of this reply is long enough to take a while to say. "
    "The second sentence goes on in the same way for a few more seconds. "
    "The third sentence is spoken by whichever worker is still standing. "
    "And the fourth sentence ends the reply."
)
CHUNK_TIMEOUT_S = 2.0


class RecordingSink:
    """An outbound track that plays everything at once and notes when audio arrived."""

    def __init__(self) -> None:
        self.samples: dict[Hashable, int] = {}
        self.arrivals: list[float] = []
        self.first_audio = asyncio.Event()

    async def enqueue(self, pcm: Pcm16, mark: Hashable) -> None:
        self.samples[mark] = self.samples.get(mark, 0) + pcm.size
        self.arrivals.append(time.monotonic())
        self.first_audio.set()

    async def wait_drained(self) -> None:
        return None

    def end_stream(self) -> None:
        return None

    def clear(self) -> int:
        return 0

    def played_samples(self, mark: Hashable) -> int:
        return self.samples.get(mark, 0)

    def forget(self, mark: Hashable) -> None:
        return None


@pytest.fixture
async def pool() -> AsyncIterator[TtsWorkerPool]:
    config = TtsPoolConfig(
        workers=2,
        first_chunk_timeout_s=CHUNK_TIMEOUT_S,
        chunk_timeout_s=CHUNK_TIMEOUT_S,
        acquire_timeout_s=30,
    )
    async with synthesizer(config=config) as p:
        yield p


def busy_pid(pool: TtsWorkerPool) -> int:
    """The worker process serving the reply (one process serves every slot)."""
    (busy,) = pool._all
    return busy.pid


@pytest.mark.parametrize(("sig", "reason"), [(signal.SIGKILL, "died"), (signal.SIGSTOP, "hung")])
async def test_a_worker_lost_mid_reply_costs_at_most_the_chunk_timeout(
    pool: TtsWorkerPool,
    caplog: pytest.LogCaptureFixture,
    sig: signal.Signals,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING)
    events: list[dict[str, Any]] = []
    done = asyncio.Event()

    def emit(event: dict[str, Any]) -> None:
        events.append(event)
        if event["type"] == "turn":
            done.set()

    sink = RecordingSink()
    tm = TurnManager(ScriptedLlm(REPLY), pool, sink, Conversation(), MonotonicClock(), emit)
    await tm.on_speech_start()
    await tm.on_final("tell me something long", TurnMetrics(turn=0))
    await asyncio.wait_for(sink.first_audio.wait(), 30)
    pid = busy_pid(pool)
    os.kill(pid, sig)
    t_fault = time.monotonic()
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await tm.aclose()
    (turn,) = [e for e in events if e["type"] == "turn"]
    assert turn["reply"].endswith("And the fourth sentence ends the reply."), turn["reply"]
    after = [t for t in sink.arrivals if t > t_fault]
    gaps = [b - a for a, b in zip([t_fault, *after], after, strict=False)]
    # Generous: the chunk timeout, then the other worker synthesizes the next sentence on a
    # loaded machine.
    assert after and max(gaps) < CHUNK_TIMEOUT_S + 2.5, gaps
    if pool.restarts[reason] == 0:  # the worker was lost after its last frame: next use finds it
        async for _ in pool.synthesize("Anyone there?"):
            pass
    assert pool.restarts[reason] == 1, pool.restarts
    assert f"TTS worker pid={pid} restarted: {reason}" in caplog.text
    seconds = sum(sink.samples.values()) / OUT_RATE_HZ
    print(f"{reason}: longest silence after the fault {max(gaps):.2f}s, {seconds:.1f}s spoken")
