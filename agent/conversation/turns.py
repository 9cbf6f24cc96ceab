"""TurnManager: who speaks when — states, speculation, barge-in, history, turn metrics.

States: LISTENING → PROCESSING_SPEECH → THINKING → SPEAKING → LISTENING, and INTERRUPTED
when the user barges in.

A reply (reply.py) is a cancellable task started from a transcript *hypothesis*. When the
user pauses (endpointer PAUSE) a reply may start speculatively from the hypothesis (the
accurate pass's text in hybrid mode, the streaming partial otherwise):
the LLM and the TTS of its first unit run while the end-of-turn silence is still being timed,
but nothing is played. At END_OF_TURN the final transcript either *commits* that reply (same
words: its audio may play) or *discards* it (cancelled; nothing played, nothing in history)
and a fresh reply starts from the final text.

Barge-in (speech starts while a committed reply is active): the outbound track is cleared at
once (one-frame fade), the reply task is cancelled and awaited (which closes the TTS, chunker
and LLM streams), and the history keeps only the part of the reply the user heard.

What a reply says when an engine is slow or fails is engine_faults.py's policy.

A finished turn whose first audio came more than `slow_turn_ms` after the end of speech logs
its stage times once (TurnMetrics.breakdown).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from aiortc.mediastreams import MediaStreamError

from agent.audio import OUT_RATE_HZ
from agent.clock import Clock
from agent.conversation.chunker import ChunkerConfig
from agent.conversation.engine_faults import Answerer, Emit, LlmTimeouts
from agent.conversation.history import Conversation
from agent.conversation.reply import AudioSink, Reply, Stages
from agent.engines.interfaces import LLM, TTS
from agent.metrics import DEFAULT_BUDGETS_MS, VALUE_FIELDS, TurnMetrics

log = logging.getLogger(__name__)


class State(StrEnum):
    LISTENING = "listening"
    PROCESSING_SPEECH = "processing_speech"
    THINKING = "thinking"
    SPEAKING = "speaking"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TurnConfig:
    speculative: bool = True
    llm_first_token_timeout_s: float = 1.5  # per LLM tried: then the fallback, or an apology
    llm_token_timeout_s: float = 4.0  # between two tokens once the reply flows
    llm_filler_after_s: float = 0.5  # no first token by then: say FILLER (<= 0: never)
    max_pending_audio_s: float = 10.0
    continue_heard_s: float = 1.0  # see TurnManager.may_continue
    # A turn whose end of speech → first audio took longer logs its stage times (<= 0: off).
    slow_turn_ms: float = 1200.0
    budgets_ms: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_BUDGETS_MS))
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)

    def __post_init__(self) -> None:
        self.llm_timeouts()  # raises ValueError on a timeout <= 0

    def llm_timeouts(self) -> LlmTimeouts:
        return LlmTimeouts(
            self.llm_first_token_timeout_s, self.llm_token_timeout_s, self.llm_filler_after_s
        )


def normalize(text: str) -> str:
    """Text as compared between a hypothesis and the final: lower case, words only."""
    return " ".join(re.sub(r"[^\w' ]", " ", text.lower()).split())


class TurnManager:
    """The turn state machine of one call; replies run as `Reply` tasks it owns."""

    def __init__(
        self,
        llm: LLM,
        tts: TTS,
        sink: AudioSink,
        conversation: Conversation,
        clock: Clock,
        emit: Emit,
        config: TurnConfig | None = None,
    ) -> None:
        self.tts = tts
        self.sink = sink
        self.conversation = conversation
        self.clock = clock
        self.emit = emit
        self.config = config or TurnConfig()
        self.answerer = Answerer(llm, clock, emit, self.config.llm_timeouts(), self.config.chunker)
        self._stages = Stages(self.answerer, tts, sink, conversation, clock, emit)
        self.state = State.LISTENING
        self.turns_completed = 0
        self.retracted = 0  # replies taken back because the user went on (on_speech_start)
        self._speculative: Reply | None = None
        self._active: Reply | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    # --- endpointer / ASR events -------------------------------------------------------

    async def on_speech_start(self, continues_turn: bool = False) -> None:
        """The user started speaking. `continues_turn`: they went on with the turn that just
        ended (the listener merged the audio): a reply they have not heard yet is taken back
        silently, as if the turn had never ended; one already playing is a barge-in. Either way
        the agent falls silent before anything here awaits."""
        active = self._active
        if active is not None:
            active.stop()
            self.sink.clear()
        await self._discard_speculative()
        if active is not None and continues_turn and self.reply_unheard():
            await self._retract(active)
        elif active is not None:
            await self._barge_in(active)
        self._set_state(State.PROCESSING_SPEECH)

    def reply_unheard(self) -> bool:
        """A reply is under way and none of its audio has been played yet."""
        return self._active is not None and self._active.metrics.first_audio_out is None

    def may_continue(self) -> bool:
        """A reply is under way and the user has heard at most `continue_heard_s` of it: new
        speech now is more likely the rest of their turn than an answer to the reply."""
        reply = self._active
        if reply is None:
            return False
        played = sum(self.sink.played_samples(u.mark) for u in reply.units)
        return played < self.config.continue_heard_s * OUT_RATE_HZ

    async def on_pause(self, hypothesis: str, metrics: TurnMetrics) -> None:
        if not self.config.speculative or not normalize(hypothesis):
            return
        await self._discard_speculative()
        spec_metrics = TurnMetrics(turn=metrics.turn, speculative=True)
        self._speculative = Reply(hypothesis, spec_metrics, self._stages)
        log.debug("speculative reply %d for %r", self._speculative.id, hypothesis)

    async def on_resume(self) -> None:
        await self._discard_speculative()

    async def on_noise(self) -> None:
        await self._discard_speculative()
        if self._active is None:
            self._set_state(State.LISTENING)

    async def on_final(self, text: str, metrics: TurnMetrics) -> None:
        """End of turn with the final transcript: commit or replace the speculative reply."""
        spec, self._speculative = self._speculative, None
        if not normalize(text):
            if spec is not None:
                await spec.cancel()
            self._set_state(State.LISTENING)
            return
        if spec is not None and normalize(spec.user_text) == normalize(text):
            reply = spec
        else:
            if spec is not None:
                await spec.cancel()
            reply = Reply(text, TurnMetrics(turn=metrics.turn), self._stages)
        _adopt(reply.metrics, metrics)
        reply.user_text = text
        self._active = reply
        self._set_state(State.THINKING)
        reply.commit()
        watcher = asyncio.get_running_loop().create_task(self._watch(reply))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def on_mark_started(self, mark: Hashable, t: float) -> None:
        """The outbound track played the first sample of a reply unit."""
        reply = self._active
        if reply is None or not isinstance(mark, tuple) or mark[0] != reply.id:
            return
        unit = next((u for u in reply.units if u.mark == mark), None)
        if unit is None:
            return
        if mark[1] == 0:
            reply.metrics.mark("first_audio_out", t)
            self._set_state(State.SPEAKING)
        self.emit({"type": "reply", "turn": reply.metrics.turn, "text": unit.text})

    # --- reply lifecycle ---------------------------------------------------------------

    async def _watch(self, reply: Reply) -> None:
        try:
            await asyncio.shield(reply.task)
        except asyncio.CancelledError:
            if reply.task.cancelled():
                return  # barge-in or shutdown: handled by whoever cancelled it
            raise
        except Exception as exc:
            if _only_track_stopped(exc):  # the caller hung up mid-reply: a normal end
                log.info("reply %d stopped: the call's audio track ended", reply.id)
            else:
                log.exception("reply %d crashed", reply.id)
                self.emit({"type": "error", "message": "the reply failed"})
        if self._active is reply:
            self._active = None
            self._finish(reply, reply.heard_text(), interrupted=False)
            self._set_state(State.LISTENING)

    async def _retract(self, reply: Reply) -> None:
        """The turn had not really ended: cancel the reply; nothing was heard, nothing is
        kept, and the user's words come back in the continued turn's final. (The caller,
        on_speech_start, already stopped it and cleared the track.)"""
        self._active = None
        await reply.cancel()
        for unit in reply.units:
            self.sink.forget(unit.mark)
        self.retracted += 1
        self.emit({"type": "retracted", "turn": reply.metrics.turn})
        log.info("reply %d taken back: the user went on with %r", reply.id, reply.user_text[-60:])

    async def _barge_in(self, reply: Reply) -> None:
        """The reply is already stopped and the track cleared (on_speech_start)."""
        self._active = None
        await reply.cancel()
        heard = reply.heard_text()
        reply.metrics.mark("end", self.clock.now())
        self._set_state(State.INTERRUPTED)
        self._finish(reply, heard, interrupted=True)
        log.info("barge-in: reply %d cut after %r", reply.id, heard[-60:])

    def _finish(self, reply: Reply, heard: str, interrupted: bool) -> None:
        for unit in reply.units:
            self.sink.forget(unit.mark)
        self.conversation.add_exchange(reply.user_text, heard)
        self.turns_completed += 1
        overruns = reply.metrics.overruns(self.config.budgets_ms)
        for stage, value, budget in overruns:
            log.warning(
                "turn %d over budget: %s %.0f ms > %.0f ms",
                reply.metrics.turn,
                stage,
                value,
                budget,
            )
        self._log_if_slow(reply.metrics)
        self.emit(
            {
                "type": "turn",
                "turn": reply.metrics.turn,
                "heard": reply.user_text,
                "reply": heard,
                "interrupted": interrupted,
                "metrics": reply.metrics.as_dict(),
                "over_budget": [stage for stage, _, _ in overruns],
            }
        )

    def _log_if_slow(self, metrics: TurnMetrics) -> None:
        """One line per slow turn (from `_finish`, which runs once per turn)."""
        threshold_ms = self.config.slow_turn_ms
        took_ms = metrics.voice_to_voice_ms()
        if threshold_ms > 0 and took_ms is not None and took_ms > threshold_ms:
            log.warning(
                "slow turn %d: %.0f ms from end of speech to first audio (over %.0f ms): %s",
                metrics.turn,
                took_ms,
                threshold_ms,
                metrics.breakdown(),
            )

    async def _discard_speculative(self) -> None:
        spec, self._speculative = self._speculative, None
        if spec is not None:
            await spec.cancel()

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.emit({"type": "state", "state": str(state)})

    async def aclose(self) -> None:
        await self._discard_speculative()
        if self._active is not None:
            reply, self._active = self._active, None
            await reply.cancel()
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


def _only_track_stopped(exc: BaseException) -> bool:
    """`exc` is the outbound track refusing audio because it was stopped (aiortc stops it
    when the peer connection closes), alone or as every leaf of an ExceptionGroup."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_track_stopped(e) for e in exc.exceptions)
    return isinstance(exc, MediaStreamError)


def _adopt(target: TurnMetrics, source: TurnMetrics) -> None:
    """Copy what the listener measured (speech, endpoint, ASR) into the reply's metrics."""
    for name in (
        "audio_chunk_received",
        "speech_start",
        "speech_end",
        "endpoint",
        "asr_started",
        "asr_partial",
        "asr_complete",
    ):
        value = getattr(source, name)
        if value is not None:
            target.mark(name, value, overwrite=True)
    for name in VALUE_FIELDS:
        if name not in ("turn", "speculative", "tts_first_class", "tool_ms"):
            setattr(target, name, getattr(source, name))
