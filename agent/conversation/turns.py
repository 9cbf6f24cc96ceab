"""TurnManager: who speaks when, and the reply pipeline LLM → chunker → TTS → outbound.

States: LISTENING → PROCESSING_SPEECH → THINKING → SPEAKING → LISTENING, and INTERRUPTED
when the user barges in.

A reply is a cancellable task started from a transcript *hypothesis*. When the user pauses
(endpointer PAUSE) a reply may start speculatively from the partial transcript: the LLM and
the TTS of its first unit run while the end-of-turn silence is still being timed, but nothing
is played. At END_OF_TURN the final transcript either *commits* that reply (same words: its
audio may play) or *discards* it (cancelled; nothing played, nothing in history) and a fresh
reply starts from the final text.

Barge-in (speech starts while a committed reply is active): the outbound track is cleared at
once (one-frame fade), the reply task is cancelled and awaited (which closes the TTS, chunker
and LLM streams), and the history keeps only the part of the reply the user heard.

Engine faults: the LLM gets a short first-token timeout and a longer one between tokens. If
its first token is slow, a filler ("One moment.") is spoken and the answer follows; if it
fails before any text, the fallback LLM (when configured) is asked, else a short apology is
spoken; if it fails mid-reply, the complete sentences already received are kept and a short
apology ends the reply instead of a cut-off sentence. Every LLM sits behind a circuit breaker
(agent/engines/breaker.py) whose state changes reach the caller as `engine` events. Error
events say which engine failed and how, never an engine's own message.

A finished turn whose first audio came more than `slow_turn_ms` after the end of speech logs
its stage times once (TurnMetrics.breakdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.clock import Clock
from agent.conversation.chunker import Chunker, ChunkerConfig
from agent.conversation.history import Conversation
from agent.engines.breaker import GuardedLlm, LlmChain
from agent.engines.interfaces import LLM, TTS, EngineError
from agent.engines.priority import Priority, Urgency
from agent.metrics import DEFAULT_BUDGETS_MS, VALUE_FIELDS, TurnMetrics

log = logging.getLogger(__name__)

FALLBACK_REPLY = "Sorry, I'm having trouble answering right now."
MID_REPLY_APOLOGY = "Sorry, I lost my train of thought."
FILLER = "One moment."
FAULT_PHRASES = (FILLER, FALLBACK_REPLY, MID_REPLY_APOLOGY)  # worth caching as audio
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
RETRIES = 1  # per engine request, when the engine marks its failure retryable


class State(StrEnum):
    LISTENING = "listening"
    PROCESSING_SPEECH = "processing_speech"
    THINKING = "thinking"
    SPEAKING = "speaking"
    INTERRUPTED = "interrupted"


class AudioSink(Protocol):
    """What the reply needs from the outbound track.

    `enqueue` waits for room (backpressure); audio whose call was still waiting when `clear()`
    ran is dropped, so a barge-in can never be refilled by a reply that is being cancelled.
    """

    async def enqueue(self, pcm: Pcm16, mark: Hashable) -> None: ...

    async def wait_drained(self) -> None: ...

    def end_stream(self) -> None: ...

    def clear(self) -> int: ...

    def played_samples(self, mark: Hashable) -> int: ...

    def forget(self, mark: Hashable) -> None: ...


Emit = Callable[[dict[str, Any]], None]


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
        if self.llm_first_token_timeout_s <= 0 or self.llm_token_timeout_s <= 0:
            raise ValueError("LLM timeouts must be positive")


@dataclass(frozen=True)
class _Say:
    text: str
    filler: bool = False  # spoken while waiting; kept out of the history


@dataclass
class _Unit:
    mark: tuple[int, int]
    text: str
    samples: int = 0
    complete: bool = False
    failed: bool = False
    filler: bool = False
    urgency: Urgency = field(default_factory=lambda: Urgency(Priority.READ_AHEAD))


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]", " ", text.lower()).split())


class Reply:
    """One reply as a task: produces audio for `user_text`; plays only once committed."""

    _ids = itertools.count(1)

    def __init__(
        self,
        user_text: str,
        metrics: TurnMetrics,
        manager: TurnManager,
    ) -> None:
        self.id = next(self._ids)
        self.user_text = user_text
        self.metrics = metrics
        self.units: list[_Unit] = []
        self.committed = asyncio.Event()
        self.stopped = False  # set at barge-in, before the task's cancellation lands
        self.got_text = False  # the LLM has sent text for this reply
        self.filler_said = False
        self._m = manager
        self.task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._run(), name=f"reply-{self.id}"
        )

    def commit(self) -> None:
        self.committed.set()
        if self.units:  # the first unit, synthesized speculatively, is now on the critical path
            self.units[0].urgency.raise_to(Priority.FIRST_AUDIO)

    def stop(self) -> None:
        """Stop queueing audio at once. Cancelling the task takes a loop iteration or two to
        reach the TTS loop, and in between it could refill the track that was just cleared."""
        self.stopped = True

    async def _play(self, pcm: Pcm16, mark: Hashable) -> None:
        if not self.stopped:
            await self._m.sink.enqueue(pcm, mark)

    def heard_text(self, sink: AudioSink) -> str:
        """The words the user actually heard (a partly played unit is cut proportionally)."""
        heard: list[str] = []
        for unit in self.units:
            if unit.failed:
                continue  # never synthesized: nothing was heard, the reply went on
            played = sink.played_samples(unit.mark)
            if played <= 0:
                break
            if unit.filler:
                if unit.complete and played >= unit.samples:
                    continue  # heard, but not part of the answer
                break
            if unit.complete and played >= unit.samples:
                heard.append(unit.text)
                continue
            words = unit.text.split()
            fraction = played / unit.samples if unit.samples else 0.0
            n = int(len(words) * fraction)
            if n:
                heard.append(" ".join(words[:n]))
            break
        return " ".join(heard)

    async def _run(self) -> None:
        m, clock = self._m, self._m.clock
        units: asyncio.Queue[_Say | None] = asyncio.Queue(maxsize=4)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._think(units))
            tg.create_task(self._speak(units))
        await self.committed.wait()
        m.sink.end_stream()
        await m.sink.wait_drained()
        self.metrics.mark("end", clock.now())

    async def _think(self, units: asyncio.Queue[_Say | None]) -> None:
        """LLM deltas → chunker → speakable units; the primary LLM, else the fallback, else
        an apology."""
        m, clock = self._m, self._m.clock
        chunker = Chunker(m.config.chunker)
        self.metrics.mark("llm_started", clock.now())
        after = m.config.llm_filler_after_s
        filler_at = clock.now() + after if after > 0 else None
        failure: str | None = "is unavailable"  # what the caller is told if no LLM answers
        for member in m.llms:
            if not member.breaker.allow():
                log.info("%s LLM %s skipped: breaker open", member.role, member.llm.name)
                continue
            failure = await self._ask(member, chunker, units, filler_at)
            m.report_breakers()
            if failure is None or self.got_text:
                break  # answered; or failed mid-reply: what was said stands, no second voice
        if failure is not None:
            m.report_breakers()
            await self._apologize(failure, chunker, units)
        await units.put(None)

    async def _apologize(
        self, failure: str, chunker: Chunker, units: asyncio.Queue[_Say | None]
    ) -> None:
        m = self._m
        m.emit({"type": "error", "engine": "llm", "message": f"the language model {failure}"})
        if not self.got_text:
            await units.put(_Say(FALLBACK_REPLY))
            return
        for text in chunker.flush():
            if _SENTENCE_END.search(text.strip()):
                await units.put(_Say(text))  # a whole sentence: say it; a fragment: drop it
        await units.put(_Say(MID_REPLY_APOLOGY))

    async def _ask(
        self,
        member: GuardedLlm,
        chunker: Chunker,
        units: asyncio.Queue[_Say | None],
        filler_at: float | None,
    ) -> str | None:
        """Stream one LLM's reply; None when it succeeded, else what failed (for the caller).
        A fast retryable error (not a timeout) before any text is tried once more."""
        name = f"{member.role} LLM {member.llm.name}"
        for attempt in range(1 + RETRIES):
            try:
                await self._stream_llm(member.llm, chunker, units, filler_at)
            except asyncio.CancelledError:
                member.breaker.release()
                raise
            except TimeoutError:
                member.breaker.record_failure()
                stage = "continuing" if self.got_text else "before its first token"
                log.warning("%s timed out %s (reply %d)", name, stage, self.id)
                return "stopped mid-reply" if self.got_text else "timed out"
            except EngineError as exc:
                member.breaker.record_failure()
                if self.got_text:
                    log.warning("%s failed mid-reply (reply %d): %s", name, self.id, exc)
                    return "stopped mid-reply"
                if _retry(exc, attempt) and member.breaker.allow():
                    log.info("%s failed (%s), trying again", name, exc)
                    continue
                log.warning("%s failed (reply %d): %s", name, self.id, exc)
                return "failed"
            except Exception:  # an engine bug: still a failure the breaker must see
                member.breaker.record_failure()
                log.exception("%s crashed (reply %d)", name, self.id)
                return "stopped mid-reply" if self.got_text else "failed"
            else:
                member.breaker.record_success()
                return None
        return "failed"

    async def _stream_llm(
        self,
        llm: LLM,
        chunker: Chunker,
        units: asyncio.Queue[_Say | None],
        filler_at: float | None,
    ) -> None:
        m, clock, cfg = self._m, self._m.clock, self._m.config
        stream = llm.complete(m.conversation.messages(self.user_text))
        first_by = clock.now() + cfg.llm_first_token_timeout_s
        async with contextlib.aclosing(stream):
            while True:
                if self.got_text:
                    async with clock.timeout(cfg.llm_token_timeout_s):
                        delta = await anext(stream, None)
                else:
                    delta = await self._first_delta(stream, first_by, filler_at, units)
                if delta is None:
                    break
                if not delta:
                    continue
                if not self.got_text:
                    self.got_text = True
                    self.metrics.mark("llm_first_token", clock.now())
                for text in chunker.push(delta):
                    await units.put(_Say(text))
        self.metrics.mark("llm_complete", clock.now())
        for text in chunker.flush():
            await units.put(_Say(text))

    async def _first_delta(
        self,
        stream: AsyncIterator[str],
        first_by: float,
        filler_at: float | None,
        units: asyncio.Queue[_Say | None],
    ) -> str | None:
        """The next delta before the first-token deadline (TimeoutError after it); says the
        filler at `filler_at` if the LLM is still silent then."""
        clock = self._m.clock
        if filler_at is None or self.filler_said:
            async with clock.timeout(max(0.0, first_by - clock.now())):
                return await anext(stream, None)
        pending: asyncio.Future[str | None] = asyncio.ensure_future(anext(stream, None))
        try:
            with contextlib.suppress(TimeoutError):
                async with clock.timeout(max(0.0, min(filler_at, first_by) - clock.now())):
                    return await asyncio.shield(pending)
            if clock.now() < first_by:
                self.filler_said = True
                await units.put(_Say(FILLER, filler=True))
            async with clock.timeout(max(0.0, first_by - clock.now())):
                return await asyncio.shield(pending)
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _speak(self, units: asyncio.Queue[_Say | None]) -> None:
        """Units → TTS → outbound track; holds audio back until the reply is committed."""
        m, clock = self._m, self._m.clock
        index = 0
        while (say := await units.get()) is not None:
            if index > 0:
                # Speculation spends at most one unit of TTS before the endpoint decides.
                await self.committed.wait()
            text = say.text
            unit = _Unit((self.id, index), text, filler=say.filler)
            if index == 0:
                first = Priority.FIRST_AUDIO if self.committed.is_set() else Priority.SPECULATIVE
                unit.urgency.priority = first
            self.units.append(unit)
            index += 1
            self.metrics.mark("tts_started", clock.now())
            for attempt in range(1 + RETRIES):
                try:
                    await self._synthesize(unit)
                    unit.complete = True
                    break
                except EngineError as exc:
                    if _retry(exc, attempt) and unit.samples == 0:
                        log.info("TTS failed for unit %r, trying again: %s", text[:40], exc)
                        continue
                    log.warning("TTS failed for unit %r: %s", text[:40], exc)
                    m.emit({"type": "error", "engine": "tts", "message": "speech synthesis failed"})
                    unit.failed = True
                    break
        self.metrics.mark("tts_complete", clock.now())

    async def _synthesize(self, unit: _Unit) -> None:
        """Speak one unit. Its audio is read from the TTS as fast as the engine makes it
        (`_read_ahead`) and played at the track's pace from here: a shared TTS worker is
        busy for the synthesis (~0.1-0.2 × real time), not for the whole playback, so other
        calls' replies do not queue behind this one being listened to."""
        m, clock = self._m, self._m.clock
        chunks: asyncio.Queue[Pcm16 | BaseException | None] = asyncio.Queue()  # one unit's audio
        reader = asyncio.get_running_loop().create_task(
            _read_ahead(m.tts, unit.text, chunks, unit.urgency), name=f"tts-read-{self.id}"
        )
        try:
            pending: list[Pcm16] = []
            if unit.urgency.priority == Priority.READ_AHEAD:
                # Raise it to first audio when the audio before it has (nearly) played out:
                # the listener would hear a gap.
                ahead_s = sum(
                    max(0, u.samples - m.sink.played_samples(u.mark)) for u in self.units
                ) / OUT_RATE_HZ
                with contextlib.suppress(TimeoutError):
                    async with clock.timeout(max(0.0, ahead_s - 0.2)):
                        await asyncio.shield(reader)
                unit.urgency.raise_to(Priority.FIRST_AUDIO)
            while (pcm := await chunks.get()) is not None:
                if isinstance(pcm, BaseException):
                    raise pcm
                self.metrics.mark("tts_first_chunk", clock.now())
                if self.metrics.tts_first_class is None:
                    self.metrics.tts_first_class = unit.urgency.priority.label
                unit.samples += pcm.size
                if not self.committed.is_set():
                    pending.append(pcm)
                    continue
                for held in pending:
                    await self._play(held, unit.mark)
                pending.clear()
                await self._play(pcm, unit.mark)
            if pending:
                await self.committed.wait()
                for held in pending:
                    await self._play(held, unit.mark)
        finally:
            reader.cancel()  # abandoned (barge-in, a failure): the pool cancels the request
            await asyncio.gather(reader, return_exceptions=True)


async def _read_ahead(
    tts: TTS,
    text: str,
    chunks: asyncio.Queue[Pcm16 | BaseException | None],
    urgency: Urgency | None = None,
) -> None:
    """The whole synthesis of `text` into `chunks` (unbounded: one sentence or so of
    audio), then None; an engine error goes into the queue instead, for the player to raise."""
    try:
        async with contextlib.aclosing(tts.synthesize(text, urgency=urgency)) as audio:
            async for pcm in audio:
                chunks.put_nowait(pcm)
    except Exception as exc:
        chunks.put_nowait(exc)
    else:
        chunks.put_nowait(None)


def _retry(exc: BaseException, attempt: int) -> bool:
    """Try an engine request again once if the engine says that may help (and nothing of
    it has been used yet: the callers check that)."""
    return isinstance(exc, EngineError) and exc.retryable and attempt < RETRIES


class TurnManager:
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
        self.llm = llm
        self.llms = (llm if isinstance(llm, LlmChain) else LlmChain.of(llm, clock=clock)).members
        self._breakers_seen = {member.role: "closed" for member in self.llms}
        self.tts = tts
        self.sink = sink
        self.conversation = conversation
        self.clock = clock
        self.emit = emit
        self.config = config or TurnConfig()
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
        silently, as if the turn had never ended; one already playing is a barge-in."""
        await self._discard_speculative()
        active = self._active
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
        self._speculative = Reply(hypothesis, spec_metrics, self)
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
                await _cancel(spec)
            self._set_state(State.LISTENING)
            return
        if spec is not None and normalize(spec.user_text) == normalize(text):
            reply = spec
        else:
            if spec is not None:
                await _cancel(spec)
            reply = Reply(text, TurnMetrics(turn=metrics.turn), self)
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
        except Exception:
            log.exception("reply %d crashed", reply.id)
            self.emit({"type": "error", "message": "the reply failed"})
        if self._active is reply:
            self._active = None
            self._finish(reply, reply.heard_text(self.sink), interrupted=False)
            self._set_state(State.LISTENING)

    async def _retract(self, reply: Reply) -> None:
        """The turn had not really ended: cancel the reply; nothing was heard, nothing is
        kept, and the user's words come back in the continued turn's final."""
        reply.stop()
        self.sink.clear()
        self._active = None
        await _cancel(reply)
        for unit in reply.units:
            self.sink.forget(unit.mark)
        self.retracted += 1
        self.emit({"type": "retracted", "turn": reply.metrics.turn})
        log.info("reply %d taken back: the user went on with %r", reply.id, reply.user_text[-60:])

    async def _barge_in(self, reply: Reply) -> None:
        reply.stop()
        self.sink.clear()
        self._active = None
        await _cancel(reply)
        heard = reply.heard_text(self.sink)
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
            await _cancel(spec)

    def report_breakers(self) -> None:
        """Tell the caller about LLM breakers whose state changed since it last heard."""
        for member in self.llms:
            state = str(member.breaker.state)
            if self._breakers_seen.get(member.role) != state:
                self._breakers_seen[member.role] = state
                self.emit({"type": "engine", "engine": "llm", "role": member.role, "state": state})

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.emit({"type": "state", "state": str(state)})

    async def aclose(self) -> None:
        await self._discard_speculative()
        if self._active is not None:
            reply, self._active = self._active, None
            await _cancel(reply)
        for watcher in list(self._watchers):
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


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
        if name not in ("turn", "speculative", "tts_first_class"):
            setattr(target, name, getattr(source, name))


async def _cancel(reply: Reply) -> None:
    """Cancel a reply and wait until its streams are closed; never swallows our own cancel."""
    reply.task.cancel()
    try:
        await reply.task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        log.exception("reply %d failed while being cancelled", reply.id)
