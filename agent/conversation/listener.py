"""The listener: 16 kHz frames in, typed turn events out.

Per frame: voice activity (webrtcvad) → the Endpointer → the recognizer. Audio from just
before the detected onset (pre-roll) is given to the recognizer too, so a word's first
syllable is not lost to the onset window. While the user speaks, a partial transcript is
asked for every `partial_interval_ms` and reported when it changes.

    SpeechStarted  the user started talking (a new turn's metrics begin here)
    Partial        a changed live caption
    Paused         the user has been silent for speculate_ms: the hypothesis so far
    Resumed        speech came back after a pause
    NoiseOnly      the "speech" was too short to be a turn
    Final          end of turn: the final transcript (may be empty: heard, not understood)
"""

from __future__ import annotations

import collections
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol

from agent.audio import Pcm16
from agent.clock import Clock
from agent.conversation.endpointer import Endpointer, EndpointKind
from agent.engines.interfaces import Recognizer
from agent.metrics import TurnMetrics


class VoiceActivity(Protocol):
    def is_speech(self, frame: Pcm16) -> bool: ...


class Frame(Protocol):
    @property
    def pcm16(self) -> Pcm16: ...  # 20 ms, 16 kHz mono

    @property
    def t(self) -> float: ...  # clock time of the frame's start


@dataclass(frozen=True)
class SpeechStarted:
    metrics: TurnMetrics


@dataclass(frozen=True)
class Partial:
    text: str


@dataclass(frozen=True)
class Paused:
    hypothesis: str
    metrics: TurnMetrics


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class NoiseOnly:
    pass


@dataclass(frozen=True)
class Final:
    text: str
    metrics: TurnMetrics


TurnEvent = SpeechStarted | Partial | Paused | Resumed | NoiseOnly | Final


@dataclass(frozen=True)
class ListenerConfig:
    preroll_ms: int = 300  # audio before the detected onset that the recognizer still gets
    partial_interval_ms: int = 200

    def __post_init__(self) -> None:
        if self.preroll_ms < 0 or self.partial_interval_ms <= 0:
            raise ValueError("need preroll_ms >= 0 and partial_interval_ms > 0")


class Listener:
    """Owns the per-call detection state; the recognizer is opened and closed by the caller."""

    def __init__(
        self,
        vad: VoiceActivity,
        endpointer: Endpointer,
        recognizer: Recognizer,
        clock: Clock,
        config: ListenerConfig,
        recognizer_ready: Awaitable[None] | None = None,
    ) -> None:
        self._vad = vad
        self._endpointer = endpointer
        self._rec = recognizer
        self._clock = clock
        self._config = config
        self._ready = recognizer_ready
        frame_ms = endpointer.config.frame_ms
        self._preroll: collections.deque[Pcm16] = collections.deque(
            maxlen=max(1, config.preroll_ms // frame_ms)
        )
        self._turn = 0
        self._metrics = TurnMetrics(turn=0)
        self._last_partial = ""
        self._last_partial_t = 0.0

    async def events(self, frames: AsyncIterator[Frame]) -> AsyncGenerator[TurnEvent, None]:
        async for frame in frames:
            for event in await self.feed(frame):
                yield event

    async def feed(self, frame: Frame) -> list[TurnEvent]:
        """One frame in; the turn events it caused (usually none)."""
        ep, rec = self._endpointer, self._rec
        event = ep.feed(self._vad.is_speech(frame.pcm16), frame.t)
        if event is None:
            if not ep.in_speech:
                self._preroll.append(frame.pcm16)
                return []
            await rec.push(frame.pcm16)
            partial = await self._partial(frame.t)
            return [partial] if partial is not None else []

        kind = event.kind
        if kind == EndpointKind.SPEECH_START:
            return [await self._start(frame, event.speech_start)]
        if kind == EndpointKind.NOISE:
            await rec.cancel()
            return [NoiseOnly()]
        if kind == EndpointKind.PAUSE:
            await rec.push(frame.pcm16)
            return [Paused(await rec.partial(), self._metrics)]
        if kind == EndpointKind.RESUME:
            await rec.push(frame.pcm16)
            return [Resumed()]
        assert kind == EndpointKind.END_OF_TURN and event.speech_end is not None
        m = self._metrics
        m.mark("speech_end", event.speech_end)
        m.mark("endpoint", frame.t)
        final = await rec.finish()
        m.mark("asr_complete", self._clock.now())
        return [Final(final, m)]

    async def _start(self, frame: Frame, speech_start: float) -> SpeechStarted:
        self._turn += 1
        m = self._metrics = TurnMetrics(turn=self._turn)
        m.mark("audio_chunk_received", frame.t)
        m.mark("speech_start", speech_start)
        m.mark("asr_started", self._clock.now())
        self._last_partial, self._last_partial_t = "", frame.t
        if self._ready is not None:
            await self._ready  # normally long done; raises if the recognizer failed to open
        await self._rec.start()
        for pcm in self._preroll:
            await self._rec.push(pcm)
        self._preroll.clear()
        await self._rec.push(frame.pcm16)
        return SpeechStarted(m)

    async def _partial(self, t: float) -> Partial | None:
        if t - self._last_partial_t < self._config.partial_interval_ms / 1000:
            return None
        self._last_partial_t = t
        text = await self._rec.partial()
        if not text or text == self._last_partial:
            return None
        self._last_partial = text
        self._metrics.mark("asr_partial", self._clock.now())
        return Partial(text)
