"""The listener: 16 kHz frames in, typed turn events out.

Per frame: voice activity (less what the echo guard, agent/media/echo.py, finds to be the
agent's own voice coming back) → the Endpointer → the streaming recognizer. Audio from just
before the detected onset (pre-roll) is given to the recognizer too, so a word's first
syllable is not lost to the onset window. `SpeechStarted` is reported from the speech
detector alone: the recognizer is started and given the pre-roll only once the event has been
handled, so a barge-in never waits for it. While the user speaks, a partial transcript is
asked for every `partial_interval_ms` and reported when it changes.

With an accurate `Transcriber` (hybrid recognition), the streaming recognizer only gives
live captions. At the first pause after speech the accurate pass starts on the utterance so
far, off the event loop, as SPECULATIVE work for the shared pool (other calls' turn-ending
passes go first); when it is back, its text is the hypothesis a reply may start from
(`Paused`), and how complete its words sound sets the silence that ends the turn
(completeness.py); until it is back, the turn is held open as if the words were unfinished. If the user goes on, the pass is discarded (cancelled: if it still waits for the pool, it
never runs) and a new one runs at the next pause over the longer utterance. At the end of
turn the last pass is adopted (awaited if still running, raised to TURN_FINAL: the turn now
waits for it); if it failed, the streaming recognizer's final is used.

    SpeechStarted  the user started talking (a new turn's metrics begin here)
    Partial        a changed live caption
    Paused         the user paused: the hypothesis a speculative reply may start from
    Resumed        speech came back after a pause
    NoiseOnly      the "speech" was too short to be a turn (unless it continues the turn
                   that just ended: then it is that turn's last word, and ends it)
    Final          end of turn: the final transcript (may be empty: heard, not understood)
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agent.audio import Pcm16
from agent.clock import Clock
from agent.conversation.completeness import TurnEndConfig, completeness
from agent.conversation.endpointer import Endpointer, EndpointKind
from agent.engines.interfaces import EngineError, Recognizer, Transcriber, Transcription
from agent.engines.priority import Priority, Urgency
from agent.media.echo import EchoGuard
from agent.metrics import TurnMetrics

log = logging.getLogger(__name__)


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
    continues_turn: bool = False  # the user went on with the turn that just ended


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
    preroll_ms: int = 500  # audio before the detected onset that the recognizers still get
    partial_interval_ms: int = 200
    max_utterance_s: float = 30.0  # the accurate pass sees at most the last this many seconds
    continue_window_ms: int = 2000  # speech this soon after a turn ended may continue it
    turn_end: TurnEndConfig = field(default_factory=TurnEndConfig)

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
        transcriber: Transcriber | None = None,
        may_continue: Callable[[], bool] = lambda: False,
        echo_guard: EchoGuard | None = None,
    ) -> None:
        """`echo_guard`: voiced frames it finds to be the agent's own voice coming back are
        taken as silence."""
        self._vad = vad
        self._echo = echo_guard
        self._opening: tuple[Frame, bool] | None = None  # a turn began: open the recognizer
        self._endpointer = endpointer
        self._rec = recognizer
        self._clock = clock
        self._config = config
        self._ready = recognizer_ready
        self._transcriber = transcriber
        self._may_continue = may_continue
        self._continuable = False  # the last turn ended and may still be continued
        self._continued = False  # the turn under way continues the one before it
        self._ended_at = 0.0
        frame_ms = endpointer.config.frame_ms
        self._preroll: collections.deque[Pcm16] = collections.deque(
            maxlen=max(1, config.preroll_ms // frame_ms)
        )
        # The utterance so far, for the accurate pass (bounded: the last max_utterance_s).
        self._utterance: collections.deque[Pcm16] = collections.deque(
            maxlen=max(1, int(config.max_utterance_s * 1000) // frame_ms)
        )
        self._pass: asyncio.Task[Transcription] | None = None
        self._pass_urgency = Urgency(Priority.SPECULATIVE)
        self._pass_reported = False
        self._turn = 0
        self._metrics = TurnMetrics(turn=0)
        self._last_partial = ""
        self._last_partial_t = 0.0

    async def events(self, frames: AsyncIterator[Frame]) -> AsyncGenerator[TurnEvent, None]:
        try:
            async for frame in frames:
                for event in await self.feed(frame):
                    yield event
                # After SpeechStarted was handled (a barge-in silenced the agent already).
                await self._open_turn()
        finally:
            await self._drop_pass(wasted=False)

    async def feed(self, frame: Frame) -> list[TurnEvent]:
        """One frame in; the turn events it caused (usually none)."""
        await self._open_turn()
        out: list[TurnEvent] = []
        hypothesis = self._pass_result()  # before the endpointer: it may shorten the silence
        if hypothesis is not None:
            out.append(hypothesis)
        ep, rec = self._endpointer, self._rec
        voiced = self._vad.is_speech(frame.pcm16)
        if self._echo is not None and self._echo.check(frame.t, frame.pcm16, voiced).echo:
            voiced = False  # the agent hearing itself: not the user
        event = ep.feed(voiced, frame.t)
        if event is None:
            if not ep.in_speech:
                self._preroll.append(frame.pcm16)
                if self._continuable:
                    self._utterance.append(frame.pcm16)  # the gap, if the turn goes on
                return out
            await self._push(frame.pcm16)
            partial = await self._partial(frame.t)
            return [*out, partial] if partial is not None else out

        kind = event.kind
        if kind == EndpointKind.SPEECH_START:
            return [*out, await self._start(frame, event.speech_start)]  # then _open_turn
        if kind == EndpointKind.NOISE and self._continued:
            # Too short for a turn of its own, but it continues one: a last short word
            # ("... two plus" — "three"). Ending the turn here keeps it (the reply to the first
            # part was taken back when this began; as noise, the turn would have no reply).
            kind = EndpointKind.END_OF_TURN
        if kind == EndpointKind.NOISE:
            await self._drop_pass(wasted=True)
            await rec.cancel()
            return [*out, NoiseOnly()]
        if kind == EndpointKind.PAUSE:
            await self._push(frame.pcm16)
            if self._transcriber is None:
                return [*out, Paused(await rec.partial(), self._metrics)]
            self._start_pass(Priority.SPECULATIVE)
            # Until the pass is back, hold the turn open as long as unfinished words would:
            # ending it on the default silence first would make reading them pointless.
            turn_end = self._config.turn_end
            if turn_end.read_words:
                ep.set_eou_silence_ms(max(turn_end.incomplete_ms, ep.config.eou_silence_ms))
            return out
        if kind == EndpointKind.RESUME:
            await self._push(frame.pcm16)
            await self._drop_pass(wasted=True)
            return [*out, Resumed()]
        assert kind == EndpointKind.END_OF_TURN and event.speech_end is not None
        self._utterance.append(frame.pcm16)  # keeps the audio gapless if the turn goes on
        m = self._metrics
        m.mark("speech_end", event.speech_end)
        m.mark("endpoint", frame.t)
        m.eou_silence_ms = round((frame.t + ep.config.frame_ms / 1000 - event.speech_end) * 1000)
        final = await self._final()
        m.mark("asr_complete", self._clock.now())
        self._continuable = self._transcriber is not None
        self._ended_at = frame.t
        return [*out, Final(final, m)]

    async def _push(self, pcm: Pcm16) -> None:
        self._utterance.append(pcm)
        await self._rec.push(pcm)

    async def _start(self, frame: Frame, speech_start: float) -> SpeechStarted:
        await self._drop_pass(wasted=False)
        continues = (
            self._continuable
            and self._may_continue()
            and frame.t - self._ended_at <= self._config.continue_window_ms / 1000
        )
        self._continuable = False
        self._continued = continues
        previous = self._metrics
        self._turn += 1
        m = self._metrics = TurnMetrics(turn=self._turn)
        m.mark("audio_chunk_received", frame.t)
        m.mark("speech_start", speech_start)
        if continues and previous.speech_start is not None:
            m.mark("speech_start", previous.speech_start, overwrite=True)
        m.mark("asr_started", self._clock.now())
        self._last_partial, self._last_partial_t = "", frame.t
        # The turn manager hears of it now, from the speech detector alone: a barge-in must
        # not wait for the recognizer (`_open_turn` runs once the event has been handled).
        self._opening = (frame, continues)
        return SpeechStarted(m, continues_turn=continues)

    async def _open_turn(self) -> None:
        """The recognizer's side of a turn's start: start it and give it the pre-roll and
        the onset frame."""
        if self._opening is None:
            return
        (frame, continues), self._opening = self._opening, None
        if self._ready is not None:
            await self._ready  # normally long done; raises if the recognizer failed to open
        await self._rec.start()
        if continues:
            # The utterance already holds the gap, pre-roll included: the recognizer gets
            # the pre-roll for its captions, the accurate pass everything since the start.
            for pcm in self._preroll:
                await self._rec.push(pcm)
        else:
            self._utterance.clear()
            for pcm in self._preroll:
                self._utterance.append(pcm)
                await self._rec.push(pcm)
        self._preroll.clear()
        await self._push(frame.pcm16)

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

    # --- the accurate pass -------------------------------------------------------------

    def _start_pass(self, priority: Priority) -> None:
        assert self._transcriber is not None and self._pass is None
        pcm = np.concatenate(list(self._utterance))
        self._pass_urgency = Urgency(priority)
        self._pass = asyncio.get_running_loop().create_task(
            self._transcriber.transcribe(pcm, self._pass_urgency),
            name=f"final-pass-{self._turn}",
        )
        self._pass_reported = False
        self._metrics.final_passes += 1

    def _pass_result(self) -> Paused | None:
        """The pass's hypothesis, once, when it is back: a reply may start from it, and its
        words set the silence that ends the turn."""
        task = self._pass
        if task is None or self._pass_reported or not task.done():
            return None
        self._pass_reported = True
        default_ms = self._endpointer.config.eou_silence_ms
        if task.cancelled() or task.exception() is not None:
            self._endpointer.set_eou_silence_ms(default_ms)  # no words to read
            return None
        text = task.result().text
        self._endpointer.set_eou_silence_ms(self._config.turn_end.silence_ms(text, default_ms))
        self._metrics.completeness = str(completeness(text))
        return Paused(text, self._metrics)

    async def _final(self) -> str:
        """The accurate pass's text if there is one (adopted, or run now), else the streaming
        recognizer's final."""
        m = self._metrics
        if self._transcriber is None:
            return await self._streaming_final()
        if self._pass is None:
            self._start_pass(Priority.TURN_FINAL)
        else:
            self._pass_urgency.raise_to(Priority.TURN_FINAL)  # the turn waits for it now
        task, self._pass = self._pass, None
        assert task is not None
        try:
            result = await task
        except EngineError as exc:
            log.warning("accurate ASR pass failed, using the streaming final: %s", exc)
            return await self._streaming_final()
        await self._rec.cancel()
        m.asr_queue_wait_ms = round(result.queue_wait_s * 1000, 1)
        m.asr_pass_ms = round(result.compute_s * 1000, 1)
        if m.completeness is None:
            m.completeness = str(completeness(result.text))
        return result.text

    async def _streaming_final(self) -> str:
        """The streaming recognizer's final; "" (heard, not understood) if it failed: a
        recognizer fault costs this turn its words, never the call."""
        try:
            return await self._rec.finish()
        except EngineError as exc:
            log.warning("streaming ASR failed at the end of the turn: %s", exc)
            return ""

    async def _drop_pass(self, wasted: bool) -> None:
        task, self._pass = self._pass, None
        if task is None:
            return
        if wasted:
            self._metrics.final_passes_wasted += 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
