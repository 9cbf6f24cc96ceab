"""The listener on scripted frames: which turn events, and what the recognizer is given."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.audio import Pcm16
from agent.clock import FakeClock
from agent.conversation.completeness import TurnEndConfig
from agent.conversation.endpointer import Endpointer, EndpointerConfig
from agent.conversation.listener import (
    Final,
    Listener,
    ListenerConfig,
    NoiseOnly,
    Partial,
    Paused,
    Resumed,
    SpeechStarted,
    TurnEvent,
)
from agent.engines.interfaces import EngineError, Transcription
from agent.engines.priority import Urgency


@dataclass(frozen=True)
class Frame:
    pcm16: Pcm16
    t: float


class MarkedVoice:
    """A frame is 'voiced' when its samples are positive: frames carry their index as value."""

    def is_speech(self, frame: Pcm16) -> bool:
        return bool(frame[0] > 0)


class ScriptedRecognizer:
    def __init__(self) -> None:
        self.pushed: list[int] = []  # frame values, in order
        self.calls: list[str] = []

    async def open(self) -> None:
        self.calls.append("open")

    async def start(self) -> None:
        self.calls.append("start")
        self.pushed.clear()

    async def push(self, pcm16: Pcm16) -> None:
        self.pushed.append(int(pcm16[0]))

    async def partial(self) -> str:
        return f"{len(self.pushed)} frames"

    async def finish(self) -> str:
        self.calls.append("finish")
        return "final words"

    async def cancel(self) -> None:
        self.calls.append("cancel")

    async def aclose(self) -> None:
        self.calls.append("aclose")


def frames_of(pattern: str, t0: float = 100.0) -> list[Frame]:
    """'x' voiced, '.' silent; a voiced frame holds +index, a silent one -index."""
    out = []
    for i, ch in enumerate(pattern):
        value = i + 1 if ch == "x" else -(i + 1)
        out.append(Frame(np.full(320, value, np.int16), t0 + i * 0.02))
    return out


async def run(
    pattern: str, config: ListenerConfig | None = None
) -> tuple[list[TurnEvent], ScriptedRecognizer]:
    rec = ScriptedRecognizer()
    listener = Listener(
        MarkedVoice(),
        Endpointer(EndpointerConfig()),
        rec,
        FakeClock(),
        config or ListenerConfig(preroll_ms=100, partial_interval_ms=100),
    )
    events: list[TurnEvent] = []
    for frame in frames_of(pattern):
        events += await listener.feed(frame)
    return events, rec


async def test_a_turn_gets_preroll_speech_partials_pause_and_final() -> None:
    events, rec = await run("." * 10 + "x" * 20 + "." * 25, ListenerConfig(preroll_ms=200))
    assert [type(e) for e in events if not isinstance(e, Partial)] == [
        SpeechStarted,
        Paused,
        Final,
    ]
    partials = [e.text for e in events if isinstance(e, Partial)]
    assert partials and len(partials) == len(set(partials)), "only changed partials"
    # The onset fires on the 6th voiced frame (index 15). The 200 ms of pre-roll before it hold
    # the 5 voiced frames of the onset window and 5 silent ones before them.
    assert rec.pushed[:5] == [-6, -7, -8, -9, -10]
    assert rec.pushed[5:25] == list(range(11, 31))
    final = events[-1]
    assert isinstance(final, Final) and final.text == "final words"
    m = final.metrics
    assert m.speech_start is not None and abs(m.speech_start - (100 + 10 * 0.02)) < 1e-9
    assert m.speech_end is not None and abs(m.speech_end - (100 + 30 * 0.02)) < 1e-9
    assert rec.calls == ["start", "finish"]


async def test_resume_after_a_pause_is_reported_and_the_turn_goes_on() -> None:
    events, rec = await run("x" * 12 + "." * 9 + "x" * 6 + "." * 25)
    kinds = [type(e) for e in events if not isinstance(e, Partial)]
    assert kinds == [SpeechStarted, Paused, Resumed, Paused, Final]
    assert rec.calls == ["start", "finish"]


async def test_a_click_is_noise_and_cancels_the_utterance() -> None:
    events, rec = await run("." * 5 + "x" * 7 + "." * 30)
    assert [type(e) for e in events if not isinstance(e, Partial)] == [
        SpeechStarted,
        Paused,
        NoiseOnly,
    ]
    assert rec.calls == ["start", "cancel"]


async def test_partials_are_paced() -> None:
    events, _ = await run("x" * 60, ListenerConfig(preroll_ms=0, partial_interval_ms=200))
    partials = [e for e in events if isinstance(e, Partial)]
    # 60 frames = 1.2 s, the first 6 before the onset: one partial per 200 ms after it.
    assert 4 <= len(partials) <= 6


# --- hybrid recognition: the accurate pass ------------------------------------------------


class ScriptedTranscriber:
    """Answers after `delay_s` on the fake clock; text chosen by how much audio it got."""

    name = "scripted"
    sample_rate_hz = 16_000

    def __init__(
        self,
        clock: FakeClock,
        texts: dict[int, str] | str,
        delay_s: float = 0.06,
        fail: bool = False,
    ) -> None:
        self.clock = clock
        self.texts = texts
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[int] = []  # frames of audio per pass
        self.cancelled = 0

    async def start(self) -> None:
        return None

    async def transcribe(self, pcm16: Pcm16, urgency: Urgency | None = None) -> Transcription:
        frames = pcm16.size // 320
        self.calls.append(frames)
        try:
            await self.clock.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise EngineError("scripted whisper failure")
        if isinstance(self.texts, str):
            return Transcription(self.texts, queue_wait_s=0.01, compute_s=self.delay_s)
        return Transcription(self.texts[frames], compute_s=self.delay_s)

    async def aclose(self) -> None:
        return None


async def run_hybrid(
    pattern: str, transcriber_of: Callable[[FakeClock], ScriptedTranscriber]
) -> tuple[list[tuple[int, TurnEvent]], ScriptedRecognizer, ScriptedTranscriber]:
    """Feed one frame per 20 ms of fake time; returns (frame index, event) pairs."""
    clock = FakeClock()
    rec = ScriptedRecognizer()
    transcriber = transcriber_of(clock)
    listener = Listener(
        MarkedVoice(),
        Endpointer(EndpointerConfig()),  # PAUSE after 160 ms, END_OF_TURN after 400 ms
        rec,
        clock,
        ListenerConfig(preroll_ms=0, turn_end=TurnEndConfig(complete_ms=240, incomplete_ms=900)),
        transcriber=transcriber,
    )
    events: list[tuple[int, TurnEvent]] = []
    for i, frame in enumerate(frames_of(pattern, t0=clock.now())):
        feeding = asyncio.get_running_loop().create_task(listener.feed(frame))
        while not feeding.done():  # a Final may wait for the pass: let fake time run meanwhile
            await clock.advance(0.005)
        events += [(i, e) for e in feeding.result()]
        await clock.advance(0.02 - (clock.now() - frame.t) % 0.02)
    return events, rec, transcriber


def only(events: list[tuple[int, TurnEvent]], kind: type) -> list[tuple[int, Any]]:
    return [(i, e) for i, e in events if isinstance(e, kind)]


async def test_the_pass_started_at_the_pause_is_adopted_and_its_words_end_the_turn_sooner() -> None:
    events, rec, whisper = await run_hybrid(
        "x" * 20 + "." * 40, lambda c: ScriptedTranscriber(c, "What time is it?")
    )
    # One pass, started at the pause: 15 voiced frames after the onset (+1 of pre-roll) and
    # the 8 silent frames that make the pause.
    assert whisper.calls == [24]
    ((i_pause, paused),) = only(events, Paused)
    ((i_final, final),) = only(events, Final)
    assert paused.hypothesis == final.text == "What time is it?"
    assert i_pause in (30, 31), "the hypothesis is reported when the pass is back (~60 ms)"
    # A complete question: the turn ends after 240 ms of silence instead of the default 400.
    m = final.metrics
    assert m.eou_silence_ms == 240 and i_final == 31
    assert (m.final_passes, m.final_passes_wasted, m.completeness) == (1, 0, "complete")
    assert m.asr_queue_wait_ms == 10.0
    assert rec.calls == ["start", "cancel"], "the streaming recognizer's final is not needed"


async def test_unfinished_words_hold_the_turn_open() -> None:
    events, _, _ = await run_hybrid(
        "x" * 20 + "." * 60, lambda c: ScriptedTranscriber(c, "I want to")
    )
    ((i_final, final),) = only(events, Final)
    assert final.metrics.eou_silence_ms == 900 and final.metrics.completeness == "incomplete"
    assert i_final == 20 + 45 - 1


async def test_speech_after_the_pause_discards_the_pass_and_the_next_pause_reruns_it() -> None:
    texts = {24: "I'd like to", 48: "I'd like to book a table."}
    events, _, whisper = await run_hybrid(
        "x" * 20 + "." * 12 + "x" * 12 + "." * 40, lambda c: ScriptedTranscriber(c, texts)
    )
    assert whisper.calls == [24, 48], "re-run on the longer utterance"
    assert [type(e) for _, e in events if not isinstance(e, Partial)] == [
        SpeechStarted,
        Paused,
        Resumed,
        Paused,
        Final,
    ]
    ((_, final),) = only(events, Final)
    assert final.text == "I'd like to book a table."
    # The first pass was back, but its words were not the turn's: its compute was wasted.
    assert (final.metrics.final_passes, final.metrics.final_passes_wasted) == (2, 1)


async def test_resume_while_the_pass_runs_cancels_it() -> None:
    texts = {24: "never used", 36: "Call my mother."}
    events, _, whisper = await run_hybrid(
        "x" * 20 + "." * 8 + "x" * 4 + "." * 40,
        lambda c: ScriptedTranscriber(c, texts, delay_s=0.2),
    )
    assert whisper.cancelled == 1 and whisper.calls == [24, 36]
    ((_, final),) = only(events, Final)
    assert final.text == "Call my mother."
    assert (final.metrics.final_passes, final.metrics.final_passes_wasted) == (2, 1)


async def test_the_turn_is_held_open_until_the_pass_is_back() -> None:
    """A slow pass (500 ms, from the pause at 160 ms): the default 400 ms of silence must not
    end the turn before its words are read; "Hello there." (two words) then ends it at once."""
    events, _, _ = await run_hybrid(
        "x" * 20 + "." * 60, lambda c: ScriptedTranscriber(c, "Hello there.", delay_s=0.5)
    )
    ((i_pause, paused),) = only(events, Paused)
    ((i_final, final),) = only(events, Final)
    assert final.text == paused.hypothesis == "Hello there."
    assert i_final == i_pause == 20 + 33 - 1
    assert final.metrics.eou_silence_ms == 660 and final.metrics.completeness == "unknown"


async def test_a_pass_slower_than_the_longest_wait_is_awaited_at_the_end_of_turn() -> None:
    events, _, _ = await run_hybrid(
        "x" * 20 + "." * 70, lambda c: ScriptedTranscriber(c, "Hello there.", delay_s=1.2)
    )
    ((_, final),) = only(events, Final)
    assert final.text == "Hello there." and final.metrics.eou_silence_ms == 900
    assert not only(events, Paused), "no hypothesis before the final: nothing to speculate on"


class FailingRecognizer(ScriptedRecognizer):
    async def finish(self) -> str:
        self.calls.append("finish")
        raise EngineError("the ASR worker is gone", retryable=True)


async def test_both_recognizers_failing_costs_the_turn_its_words_not_the_call() -> None:
    clock = FakeClock()
    listener = Listener(
        MarkedVoice(),
        Endpointer(EndpointerConfig()),
        FailingRecognizer(),
        clock,
        ListenerConfig(preroll_ms=0),
        transcriber=ScriptedTranscriber(clock, "unused", fail=True),
    )
    events = []
    for frame in frames_of("x" * 20 + "." * 40, t0=clock.now()):
        feeding = asyncio.get_running_loop().create_task(listener.feed(frame))
        while not feeding.done():
            await clock.advance(0.005)
        events += feeding.result()
        await clock.advance(0.02 - (clock.now() - frame.t) % 0.02)
    (final,) = [e for e in events if isinstance(e, Final)]
    assert final.text == "", "heard, not understood"


async def test_a_failed_pass_falls_back_to_the_streaming_final() -> None:
    events, rec, _ = await run_hybrid(
        "x" * 20 + "." * 40, lambda c: ScriptedTranscriber(c, "unused", fail=True)
    )
    ((_, final),) = only(events, Final)
    assert final.text == "final words" and rec.calls == ["start", "finish"]


async def run_continuation(
    pattern: str, texts: dict[int, str], unheard: bool
) -> tuple[list[tuple[int, TurnEvent]], ScriptedTranscriber]:
    clock = FakeClock()
    whisper = ScriptedTranscriber(clock, texts)
    listener = Listener(
        MarkedVoice(),
        Endpointer(EndpointerConfig()),
        ScriptedRecognizer(),
        clock,
        ListenerConfig(preroll_ms=0, turn_end=TurnEndConfig(complete_ms=240, incomplete_ms=900)),
        transcriber=whisper,
        may_continue=lambda: unheard,
    )
    events: list[tuple[int, TurnEvent]] = []
    for i, frame in enumerate(frames_of(pattern, t0=clock.now())):
        feeding = asyncio.get_running_loop().create_task(listener.feed(frame))
        while not feeding.done():
            await clock.advance(0.005)
        events += [(i, e) for e in feeding.result()]
        await clock.advance(0.02 - (clock.now() - frame.t) % 0.02)
    return events, whisper


# "Can you remind me? … to call mom": complete-sounding at the pause (ends after 240 ms of
# silence, frame 31), then speech again at frame 40, before the reply was heard.
CONTINUED = "x" * 20 + "." * 20 + "x" * 12 + "." * 40


async def test_speech_before_the_reply_is_heard_continues_the_turn() -> None:
    texts = {24: "Can you remind me?", 56: "Can you remind me to call mom?"}
    events, whisper = await run_continuation(CONTINUED, texts, unheard=True)
    finals = only(events, Final)
    starts = only(events, SpeechStarted)
    assert [s.continues_turn for _, s in starts] == [False, True]
    # The second pass hears the whole turn without a gap: frames 4 (pre-roll) to 59 (the
    # second pause), the first part, the silence and the new speech.
    assert whisper.calls == [24, 56]
    assert [f.text for _, f in finals] == ["Can you remind me?", "Can you remind me to call mom?"]
    first, second = finals[0][1].metrics, finals[1][1].metrics
    assert second.speech_start == first.speech_start, "the continued turn began with the first"


async def test_speech_after_the_reply_was_heard_is_a_new_turn() -> None:
    texts = {24: "Can you remind me?", 16: "To call mom."}
    events, whisper = await run_continuation(CONTINUED, texts, unheard=False)
    assert [s.continues_turn for _, s in only(events, SpeechStarted)] == [False, False]
    assert whisper.calls == [24, 16], "only the new speech (and the onset pre-roll frame)"


# "What is two plus … three?": the last word alone (160 ms, frames 40-47) is shorter than a
# turn (min_utterance_ms 200) — but it continues the turn whose reply it took back.
SHORT_LAST_WORD = "x" * 20 + "." * 20 + "x" * 8 + "." * 60


async def test_a_short_word_that_continues_a_turn_ends_it_instead_of_being_noise() -> None:
    texts = {24: "What is two plus?", 52: "What is two plus three?"}
    events, whisper = await run_continuation(SHORT_LAST_WORD, texts, unheard=True)
    assert [s.continues_turn for _, s in only(events, SpeechStarted)] == [False, True]
    assert not only(events, NoiseOnly), "the turn that was taken back must get its answer"
    assert whisper.calls == [24, 52], "the whole turn, the short word included"
    assert [f.text for _, f in only(events, Final)] == [
        "What is two plus?",
        "What is two plus three?",
    ]


async def test_a_short_sound_after_a_heard_reply_is_still_noise() -> None:
    texts = {24: "What is two plus?"}
    events, _ = await run_continuation(SHORT_LAST_WORD, texts, unheard=False)
    assert len(only(events, NoiseOnly)) == 1 and len(only(events, Final)) == 1
