"""Tier 2: the TurnManager state machine on a fake clock (turn_rig.py): speculation commit and
discard, barge-in, taking back an unheard reply, history, metrics."""

from __future__ import annotations

import pytest

from agent.conversation.turns import State, normalize
from agent.engines.interfaces import Message, Role
from tests.turn_rig import CHUNK, Rig, ScriptedLlm, ScriptedTts


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


def test_normalize_compares_words_not_case_or_punctuation() -> None:
    assert normalize("What time is it?") == normalize("what  time, is it") == "what time is it"
    assert normalize("It's noon!") == "it's noon"
    assert normalize(" ...?! ") == ""
