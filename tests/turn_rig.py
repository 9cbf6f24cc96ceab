"""The tier-2 rig: a TurnManager on a fake clock with scripted engines and a fake outbound
track (test_turns, test_reply, test_engine_faults_policy, test_engine_faults, test_logging)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Hashable, Sequence
from typing import Any, Protocol

import numpy as np

from agent.audio import Pcm16
from agent.clock import FakeClock
from agent.conversation.history import Conversation
from agent.conversation.turns import State, TurnConfig, TurnManager
from agent.engines.interfaces import EngineError, Message
from agent.engines.priority import Priority, Urgency
from agent.metrics import TurnMetrics

CHUNK = 4800  # 100 ms at 48 kHz


class ScriptedLlm:
    name = "scripted"

    def __init__(
        self,
        reply: str = "It's noon. Anything else?",
        error: bool = False,
        hang: bool = False,
        fail_first: int = 0,
        retryable: bool = True,
    ) -> None:
        self.reply = reply
        self.error = error
        self.fail_first = fail_first  # this many calls fail before any text
        self.retryable = retryable
        self.hang = hang
        self.calls: list[str] = []
        self.closed = 0

    async def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        self.calls.append(messages[-1].content)
        try:
            if self.error or len(self.calls) <= self.fail_first:
                raise EngineError("scripted failure", retryable=self.retryable)
            if self.hang:
                await asyncio.sleep(3600)
            for i, word in enumerate(self.reply.split(" ")):
                await asyncio.sleep(0)
                yield word if i == 0 else " " + word
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        return None


class ScriptedTts:
    name = "scripted"
    sample_rate_hz = 48_000

    def __init__(
        self,
        chunks_per_unit: int = 3,
        fail_on: str | None = None,
        instant: bool = False,
        fail_first: int = 0,
        retryable: bool = False,
    ) -> None:
        self.fail_first = fail_first  # this many requests fail before any audio
        self.retryable = retryable
        self.chunks_per_unit = chunks_per_unit
        self.instant = instant  # chunks already waiting in the pipe: no await between them
        self.fail_on = fail_on
        self.texts: list[str] = []
        self.closed = 0
        self.urgencies: list[tuple[Priority, Urgency]] = []  # (class when asked, the object)
        self.hold: dict[str, asyncio.Event] = {}  # text → synthesis waits for this event

    async def synthesize(
        self, text: str, *, urgency: Urgency | None = None
    ) -> AsyncGenerator[Pcm16, None]:
        self.texts.append(text)
        if urgency is not None:
            self.urgencies.append((urgency.priority, urgency))
        try:
            if text in self.hold:
                await self.hold[text].wait()
            if (self.fail_on is not None and self.fail_on in text) or (
                len(self.texts) <= self.fail_first
            ):
                raise EngineError("scripted TTS failure", retryable=self.retryable)
            for _ in range(self.chunks_per_unit):
                if not self.instant:
                    await asyncio.sleep(0)
                yield np.full(CHUNK, 1000, np.int16)
        finally:
            self.closed += 1


class MarkListener(Protocol):
    def on_mark_started(self, mark: Hashable, t: float) -> None: ...


class FakeSink:
    """Stands in for the outbound track: queues audio; `play()` plays it like recv() would."""

    def __init__(self, manager_ref: list[MarkListener], clock: FakeClock) -> None:
        self._ref = manager_ref
        self._clock = clock
        self.queue: list[tuple[Hashable, int]] = []
        self.played: dict[Hashable, int] = {}
        self.cleared = 0
        self.max_queued = 0
        self._changed = asyncio.Event()

    async def enqueue(self, pcm: Pcm16, mark: Hashable) -> None:
        cleared = self.cleared
        while sum(n for _, n in self.queue) > 3 * CHUNK:  # backpressure like the real track
            await self._wait()
            if self.cleared != cleared:
                return  # the AudioSink contract: audio waiting across a clear() is dropped
        self.queue.append((mark, pcm.size))
        self.max_queued = max(self.max_queued, sum(n for _, n in self.queue))

    async def wait_drained(self) -> None:
        while self.queue:
            await self._wait()

    def end_stream(self) -> None:
        self.ended = True

    def clear(self) -> int:
        dropped = sum(n for _, n in self.queue)
        self.queue.clear()
        self.cleared += 1
        self._wake()
        return dropped

    def played_samples(self, mark: Hashable) -> int:
        return self.played.get(mark, 0)

    def forget(self, mark: Hashable) -> None:
        self.played.pop(mark, None)

    def play(self, samples: int) -> None:
        while samples > 0 and self.queue:
            mark, n = self.queue[0]
            take = min(n, samples)
            if mark not in self.played:
                self._ref[0].on_mark_started(mark, self._clock.now())
            self.played[mark] = self.played.get(mark, 0) + take
            samples -= take
            if take == n:
                self.queue.pop(0)
            else:
                self.queue[0] = (mark, n - take)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()


class Rig:
    def __init__(
        self, llm: ScriptedLlm, tts: ScriptedTts, config: TurnConfig | None = None
    ) -> None:
        self.clock = FakeClock()
        self.events: list[dict[str, Any]] = []
        ref: list[MarkListener] = []
        self.sink = FakeSink(ref, self.clock)
        self.conversation = Conversation()
        self.llm, self.tts = llm, tts
        self.tm = TurnManager(
            llm,
            tts,
            self.sink,
            self.conversation,
            self.clock,
            self.events.append,
            config or TurnConfig(),
        )
        ref.append(self.tm)
        self.turn = 0

    def metrics(self) -> TurnMetrics:
        m = TurnMetrics(turn=self.turn)
        m.mark("speech_start", self.clock.now() - 1.0)
        m.mark("speech_end", self.clock.now() - 0.4)
        m.mark("endpoint", self.clock.now())
        return m

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def play_all(self) -> None:
        for _ in range(200):
            await self.settle()
            if not self.sink.queue and self.tm.state == State.LISTENING:
                return
            self.sink.play(CHUNK)
        raise AssertionError("reply never finished")

    def states(self) -> list[str]:
        return [e["state"] for e in self.events if e["type"] == "state"]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]
