"""Tier 2: the TurnManager on a fake clock with scripted engines (speculation, barge-in, errors)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Hashable, Sequence
from typing import Any

import numpy as np
import pytest

from agent.audio import Pcm16
from agent.clock import FakeClock
from agent.conversation.history import Conversation
from agent.conversation.turns import FALLBACK_REPLY, FILLER, State, TurnConfig, TurnManager
from agent.engines.interfaces import EngineError, Message, Role
from agent.engines.priority import Priority, Urgency
from agent.metrics import TurnMetrics

CHUNK = 4800  # 100 ms at 48 kHz


class ScriptedLlm:
    name = "scripted"

    def __init__(self, reply: str = "It's noon. Anything else?", error: bool = False,
                 hang: bool = False, fail_first: int = 0, retryable: bool = True) -> None:
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


class FakeSink:
    """Stands in for the outbound track: queues audio; `play()` plays it like recv() would."""

    def __init__(self, manager_ref: list[TurnManager], clock: FakeClock) -> None:
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
    def __init__(self, llm: ScriptedLlm, tts: ScriptedTts, config: TurnConfig | None = None) -> None:
        self.clock = FakeClock()
        self.events: list[dict[str, Any]] = []
        ref: list[TurnManager] = []
        self.sink = FakeSink(ref, self.clock)
        self.conversation = Conversation()
        self.llm, self.tts = llm, tts
        self.tm = TurnManager(llm, tts, self.sink, self.conversation, self.clock,
                              self.events.append, config or TurnConfig())
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


async def test_speculative_reply_is_held_until_committed() -> None:
    rig = Rig(ScriptedLlm(), ScriptedTts())
    rig.turn = 1
    await rig.tm.on_speech_start()
    await rig.tm.on_pause("what time is it", rig.metrics())
    await rig.settle()
    assert rig.llm.calls == ["what time is it"], "the reply should start during the pause"
    assert rig.sink.queue == [], "nothing may play before the end of turn commits it"

    await rig.tm.on_final("What time is it?", rig.metrics())
    await rig.play_all()

    assert rig.llm.calls == ["what time is it"], "a matching final reuses the speculative reply"
    assert rig.states() == ["processing_speech", "thinking", "speaking", "listening"]
    (turn,) = rig.of_type("turn")
    assert turn["heard"] == "What time is it?"
    assert turn["reply"] == "It's noon. Anything else?"
    assert turn["interrupted"] is False
    assert turn["metrics"]["speculative"] is True
    assert [e["text"] for e in rig.of_type("reply")] == ["It's noon.", "Anything else?"]
    assert rig.conversation.turns == [
        Message(Role.USER, "What time is it?"),
        Message(Role.ASSISTANT, "It's noon. Anything else?"),
    ]
    assert rig.sink.max_queued <= 4 * CHUNK, "backpressure: a reply is never buffered whole"


async def test_different_final_discards_the_speculative_reply() -> None:
    rig = Rig(ScriptedLlm(), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_pause("what time", rig.metrics())
    await rig.settle()
    await rig.tm.on_final("what time is it in Paris", rig.metrics())
    await rig.play_all()
    assert rig.llm.calls == ["what time", "what time is it in Paris"]
    assert rig.llm.closed == 2, "the discarded LLM stream must be closed"
    (turn,) = rig.of_type("turn")
    assert turn["heard"] == "what time is it in Paris"
    assert turn["metrics"]["speculative"] is False
    assert rig.conversation.turns[0].content == "what time is it in Paris"


async def test_resume_discards_and_nothing_enters_history() -> None:
    rig = Rig(ScriptedLlm(), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_pause("what", rig.metrics())
    await rig.settle()
    await rig.tm.on_resume()
    await rig.settle()
    assert rig.llm.closed == 1
    assert rig.sink.queue == []
    assert rig.conversation.turns == []
    assert rig.of_type("turn") == []
    await rig.tm.aclose()


async def test_empty_final_returns_to_listening() -> None:
    rig = Rig(ScriptedLlm(), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_final("", rig.metrics())
    assert rig.tm.state == State.LISTENING
    assert rig.llm.calls == []


async def test_barge_in_stops_audio_and_keeps_only_what_was_heard() -> None:
    story = "One two three four. Five six seven eight. Nine ten eleven twelve."
    rig = Rig(ScriptedLlm(story), ScriptedTts(chunks_per_unit=4, instant=True))
    await rig.tm.on_speech_start()
    await rig.tm.on_final("tell me a story", rig.metrics())
    await rig.settle()
    # Play all of unit 0 (4 chunks) and half of unit 1.
    for _ in range(6):
        await rig.settle()
        rig.sink.play(CHUNK)
    await rig.settle()
    assert rig.tm.state == State.SPEAKING

    await rig.tm.on_speech_start()  # the user talks over the agent

    assert rig.sink.cleared == 1 and rig.sink.queue == []
    assert rig.states()[-2:] == ["interrupted", "processing_speech"]
    (turn,) = rig.of_type("turn")
    assert turn["interrupted"] is True
    assert turn["reply"] == "One two three four. Five six"
    assert rig.conversation.turns[-1] == Message(Role.ASSISTANT, "One two three four. Five six")
    assert rig.llm.closed == 1, "barge-in closes the LLM stream"
    assert rig.tts.closed == len(rig.tts.texts), "barge-in closes the TTS stream"
    await rig.settle()
    assert rig.sink.queue == [], "no audio may be queued after the barge-in"


async def test_llm_failure_speaks_a_fallback_and_reports_it() -> None:
    rig = Rig(ScriptedLlm(error=True), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hello", rig.metrics())
    await rig.play_all()
    assert rig.tts.texts == [FALLBACK_REPLY]
    errors = rig.of_type("error")
    assert [(e["engine"], e["message"]) for e in errors] == [("llm", "the language model failed")]
    assert not any("scripted" in e["message"] for e in errors), "no engine internals"
    assert rig.of_type("turn")[0]["reply"] == FALLBACK_REPLY


async def test_llm_that_hangs_times_out_on_the_injected_clock() -> None:
    config = TurnConfig(llm_first_token_timeout_s=2.0)
    rig = Rig(ScriptedLlm(hang=True), ScriptedTts(), config)
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hello", rig.metrics())
    await rig.clock.advance(1.9)
    # The filler (at 0.5 s) is all that was said: the LLM was not given up on yet.
    assert rig.tts.texts == [FILLER] and rig.llm.closed == 0, "gave up before the timeout"
    await rig.clock.advance(0.2)
    await rig.play_all()
    assert rig.tts.texts == [FILLER, FALLBACK_REPLY]
    assert rig.llm.closed == 1
    errors = rig.of_type("error")
    assert [e["message"] for e in errors] == ["the language model timed out"]


async def test_tts_failure_skips_the_unit_and_goes_on() -> None:
    rig = Rig(ScriptedLlm("First part. Broken part. Last part."), ScriptedTts(fail_on="Broken"))
    await rig.tm.on_speech_start()
    await rig.tm.on_final("go", rig.metrics())
    await rig.play_all()
    assert rig.tts.texts == ["First part.", "Broken part.", "Last part."]
    assert [e["text"] for e in rig.of_type("reply")] == ["First part.", "Last part."]
    assert rig.of_type("error")
    assert rig.of_type("turn")[0]["reply"] == "First part. Last part."


async def test_metrics_are_relative_to_end_of_speech() -> None:
    rig = Rig(ScriptedLlm(), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.clock.advance(0.4)
    await rig.tm.on_final("what time is it", rig.metrics())
    await rig.play_all()
    m = rig.of_type("turn")[0]["metrics"]
    assert m["eou_delay_ms"] == pytest.approx(400.0)
    for key in ("llm_first_token_ms", "tts_first_chunk_ms", "time_to_first_audio_ms", "total_ms"):
        assert m[key] is not None and m[key] >= 400.0


@pytest.mark.parametrize(("fail_first", "spoken"), [(1, ["Hi.", "Hi."]), (2, ["Hi.", "Hi."])])
async def test_retryable_tts_failure_is_tried_once_more(fail_first: int, spoken: list[str]) -> None:
    rig = Rig(ScriptedLlm("Hi."), ScriptedTts(fail_first=fail_first, retryable=True))
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hello", rig.metrics())
    await rig.play_all()
    assert rig.tts.texts == spoken, "one retry, never more"
    heard = rig.of_type("turn")[0]["reply"]
    assert heard == ("Hi." if fail_first == 1 else ""), "the retried unit is played"
    assert bool(rig.of_type("error")) == (fail_first > 1)


async def test_permanent_tts_failure_is_not_retried() -> None:
    rig = Rig(ScriptedLlm("Hi."), ScriptedTts(fail_first=1, retryable=False))
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hello", rig.metrics())
    await rig.play_all()
    assert rig.tts.texts == ["Hi."]
    assert rig.of_type("turn")[0]["reply"] == ""


@pytest.mark.parametrize(("retryable", "calls", "reply"), [
    (True, 2, "It's noon. Anything else?"),
    (False, 1, FALLBACK_REPLY),
])
async def test_llm_failure_before_any_text_is_retried_if_retryable(
    retryable: bool, calls: int, reply: str
) -> None:
    rig = Rig(ScriptedLlm(fail_first=1, retryable=retryable), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hello", rig.metrics())
    await rig.play_all()
    assert len(rig.llm.calls) == calls
    assert rig.of_type("turn")[0]["reply"] == reply


async def test_a_reply_not_yet_heard_is_taken_back_when_the_user_goes_on() -> None:
    rig = Rig(ScriptedLlm("Sure. What should I remind you of?"), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_final("Can you remind me?", rig.metrics())
    await rig.settle()
    assert rig.sink.queue, "the reply is queued for the outbound track"
    assert rig.tm.reply_unheard()
    await rig.tm.on_speech_start(continues_turn=True)  # "... to call mom"
    assert rig.sink.queue == [] and rig.tts.closed >= 1
    assert rig.tm.state == State.PROCESSING_SPEECH
    assert rig.of_type("retracted") and not rig.of_type("turn"), "no exchange happened"
    assert rig.tm.conversation.turns == [], "nothing enters the history"
    await rig.tm.on_final("Can you remind me to call mom?", rig.metrics())
    await rig.play_all()
    (turn,) = rig.of_type("turn")
    assert turn["heard"] == "Can you remind me to call mom?" and not turn["interrupted"]
    assert rig.llm.calls[-1] == "Can you remind me to call mom?"


async def test_a_reply_already_playing_is_interrupted_not_taken_back() -> None:
    rig = Rig(ScriptedLlm("Sure. What should I remind you of?"), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_final("Can you remind me?", rig.metrics())
    await rig.settle()
    rig.sink.play(3 * CHUNK)  # the user has heard its first sentence
    await rig.settle()
    assert not rig.tm.reply_unheard()
    await rig.tm.on_speech_start(continues_turn=True)
    assert not rig.of_type("retracted")
    (turn,) = rig.of_type("turn")
    assert turn["interrupted"] and turn["reply"] == "Sure.", "what was heard stays"


async def test_tts_is_read_ahead_so_a_shared_worker_is_free_before_playback_ends() -> None:
    rig = Rig(ScriptedLlm("One two three."), ScriptedTts(chunks_per_unit=10))  # 1 s of audio
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hi", rig.metrics())
    await rig.settle()
    assert rig.tts.closed == 1, "the whole unit was synthesized and its request ended"
    assert sum(n for _, n in rig.sink.queue) <= 4 * CHUNK, "yet it plays at the track's pace"
    await rig.play_all()
    (turn,) = rig.of_type("turn")
    assert turn["reply"] == "One two three."


async def test_tts_requests_carry_their_class() -> None:
    """A speculative first unit asks as SPECULATIVE and is raised to FIRST_AUDIO by the
    commit; a committed reply's first unit asks as FIRST_AUDIO, later units as READ_AHEAD."""
    rig = Rig(ScriptedLlm(), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_pause("what time is it", rig.metrics())
    await rig.settle()
    ((asked, first),) = rig.tts.urgencies
    assert asked == Priority.SPECULATIVE and first.priority == Priority.SPECULATIVE
    await rig.tm.on_final("What time is it?", rig.metrics())
    assert first.priority == Priority.FIRST_AUDIO
    await rig.play_all()
    assert [a for a, _ in rig.tts.urgencies] == [Priority.SPECULATIVE, Priority.READ_AHEAD]
    (turn,) = rig.of_type("turn")
    assert turn["metrics"]["tts_first_class"] == "speculative"  # made in the pause

    rig = Rig(ScriptedLlm(), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_final("What time is it?", rig.metrics())
    await rig.play_all()
    assert [a for a, _ in rig.tts.urgencies] == [Priority.FIRST_AUDIO, Priority.READ_AHEAD]
    (turn,) = rig.of_type("turn")
    assert turn["metrics"]["tts_first_class"] == "first_audio"


async def test_a_read_ahead_the_listener_reaches_is_raised_to_first_audio() -> None:
    """The second unit is still not synthesized when the audio before it has played out:
    the listener would hear a gap, so it becomes FIRST_AUDIO (not before)."""
    tts = ScriptedTts(chunks_per_unit=10)  # 1 s of audio in the first unit
    tts.hold["Anything else?"] = asyncio.Event()
    rig = Rig(ScriptedLlm(), tts)
    await rig.tm.on_speech_start()
    await rig.tm.on_final("What time is it?", rig.metrics())
    for _ in range(6):  # 0.6 s of the first unit played: 0.4 s still ahead
        await rig.settle()
        rig.sink.play(CHUNK)
    await rig.settle()
    (_, ahead) = tts.urgencies[1]
    assert ahead.priority == Priority.READ_AHEAD
    await rig.clock.advance(0.1)  # 0.3 s of audio ahead by the track's pace: not yet
    assert ahead.priority == Priority.READ_AHEAD
    for _ in range(4):
        await rig.settle()
        rig.sink.play(CHUNK)
    await rig.clock.advance(0.2)  # the deadline: 0.2 s before the audio ahead runs out
    assert ahead.priority == Priority.FIRST_AUDIO
    tts.hold["Anything else?"].set()
    await rig.play_all()
    (turn,) = rig.of_type("turn")
    assert turn["reply"] == "It's noon. Anything else?"
