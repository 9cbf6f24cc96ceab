"""Tier 2: the engine-fault policy (engine_faults.py) on a fake clock — LLM errors, retries and
timeouts as the caller hears them, and the Answerer on its own. (test_engine_faults.py has
the filler, mid-reply apology, fallback LLM and breaker scenarios.)"""

from __future__ import annotations

import pytest

from agent.conversation.engine_faults import FALLBACK_REPLY, FILLER
from agent.conversation.turns import TurnConfig
from tests.turn_rig import Rig, ScriptedLlm, ScriptedTts


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
