"""Tier 2: the reply pipeline (LLM → chunker → TTS → outbound) on a fake clock: TTS read-ahead,
TTS faults, holding audio until commit, and what the user heard."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from agent.clock import FakeClock
from agent.conversation.chunker import ChunkerConfig
from agent.conversation.engine_faults import Answerer, LlmTimeouts
from agent.conversation.history import Conversation
from agent.conversation.reply import Reply, Stages, Unit
from agent.engines.priority import Priority, Urgency
from agent.metrics import TurnMetrics
from tests.turn_rig import CHUNK, FakeSink, Rig, ScriptedLlm, ScriptedTts


async def test_tts_failure_skips_the_unit_and_goes_on() -> None:
    rig = Rig(ScriptedLlm("First part. Broken part. Last part."), ScriptedTts(fail_on="Broken"))
    await rig.tm.on_speech_start()
    await rig.tm.on_final("go", rig.metrics())
    await rig.play_all()
    assert rig.tts.texts == ["First part.", "Broken part.", "Last part."]
    assert [e["text"] for e in rig.of_type("reply")] == ["First part.", "Last part."]
    assert rig.of_type("error")
    assert rig.of_type("turn")[0]["reply"] == "First part. Last part."


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


# --- Reply on its own: no TurnManager, the rig's fakes --------------------------------------


class Marks:
    def __init__(self) -> None:
        self.started: list[Hashable] = []

    def on_mark_started(self, mark: Hashable, t: float) -> None:
        self.started.append(mark)


def stages(llm: ScriptedLlm, tts: ScriptedTts) -> tuple[Stages, FakeSink, Marks]:
    clock, marks = FakeClock(), Marks()
    sink = FakeSink([marks], clock)
    answerer = Answerer(llm, clock, lambda _: None, LlmTimeouts(), ChunkerConfig())
    return Stages(answerer, tts, sink, Conversation(), clock, lambda _: None), sink, marks


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_an_uncommitted_reply_synthesizes_one_unit_and_plays_nothing() -> None:
    llm, tts = ScriptedLlm("First part. Second part. Last part."), ScriptedTts()
    s, sink, marks = stages(llm, tts)
    reply = Reply("go on", TurnMetrics(turn=1), s)
    await settle()
    assert llm.calls == ["go on"]
    assert tts.texts == ["First part."], "speculation spends at most one unit of TTS"
    assert sink.queue == [] and marks.started == []
    reply.commit()
    while not reply.task.done():
        await settle()
        sink.play(CHUNK)
    await reply.task
    assert tts.texts == ["First part.", "Second part.", "Last part."]
    assert marks.started == [(reply.id, 0), (reply.id, 1), (reply.id, 2)]
    assert reply.heard_text() == "First part. Second part. Last part."


async def test_heard_text_cuts_a_partly_played_unit_and_skips_filler_and_failed_ones() -> None:
    s, sink, _ = stages(ScriptedLlm(hang=True), ScriptedTts())
    reply = Reply("hi", TurnMetrics(turn=1), s)
    await reply.cancel()
    i = reply.id
    reply.units = [
        Unit((i, 0), "One moment.", samples=100, complete=True, filler=True),
        Unit((i, 1), "never synthesized", failed=True),
        Unit((i, 2), "a b c d", samples=200, complete=True),
        Unit((i, 3), "e f g h", samples=400, complete=True),
        Unit((i, 4), "i j", samples=100, complete=True),
    ]
    sink.played = {(i, 0): 100, (i, 2): 200, (i, 3): 200}
    assert reply.heard_text() == "a b c d e f"
    sink.played[(i, 0)] = 50  # the filler itself was cut: nothing after it was heard
    assert reply.heard_text() == ""


async def test_cancel_closes_the_llm_and_tts_streams_and_plays_no_more() -> None:
    llm = ScriptedLlm("One two three four. Five six seven eight.")
    tts = ScriptedTts(chunks_per_unit=10)
    s, sink, _ = stages(llm, tts)
    reply = Reply("story", TurnMetrics(turn=1), s)
    reply.commit()
    await settle()
    assert sink.queue, "it was playing"
    reply.stop()
    sink.clear()
    await reply.cancel()
    assert reply.task.cancelled()
    assert llm.closed == 1 and tts.closed == len(tts.texts) >= 1
    await settle()
    assert sink.queue == []


def priority_of(urgency: Urgency) -> Priority:
    """Read afresh (the reply raises it while the test holds the object)."""
    return urgency.priority


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
    assert priority_of(first) == Priority.FIRST_AUDIO
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
    assert priority_of(ahead) == Priority.FIRST_AUDIO
    tts.hold["Anything else?"].set()
    await rig.play_all()
    (turn,) = rig.of_type("turn")
    assert turn["reply"] == "It's noon. Anything else?"
