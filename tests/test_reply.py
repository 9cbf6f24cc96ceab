"""Tier 2: the reply pipeline (LLM → chunker → TTS → outbound) on a fake clock: TTS read-ahead,
TTS faults, holding audio until commit, and what the user heard."""

from __future__ import annotations

import pytest

from tests.turn_rig import CHUNK, Rig, ScriptedLlm, ScriptedTts


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
