"""Tier 2: the engine-fault policy (engine_faults.py) on a fake clock — LLM errors, retries and
timeouts as the caller hears them, and the Answerer on its own. (test_engine_faults.py has
the filler, mid-reply apology, fallback LLM and breaker scenarios.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.conversation.breaker import LlmChain
from agent.conversation.chunker import ChunkerConfig
from agent.conversation.engine_faults import (
    FALLBACK_REPLY,
    FILLER,
    Answerer,
    LlmTimeouts,
    Say,
    Units,
)
from agent.conversation.turns import TurnConfig
from agent.engines.interfaces import LLM, Message, Role
from agent.metrics import TurnMetrics
from tests.test_engine_faults import ClockLlm
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


@pytest.mark.parametrize(
    ("retryable", "calls", "reply"),
    [
        (True, 2, "It's noon. Anything else?"),
        (False, 1, FALLBACK_REPLY),
    ],
)
async def test_llm_failure_before_any_text_is_retried_if_retryable(
    retryable: bool, calls: int, reply: str
) -> None:
    rig = Rig(ScriptedLlm(fail_first=1, retryable=retryable), ScriptedTts())
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hello", rig.metrics())
    await rig.play_all()
    assert len(rig.llm.calls) == calls
    assert rig.of_type("turn")[0]["reply"] == reply


# --- the Answerer on its own -----------------------------------------------------------------


def answerer(llm: LLM, clock: FakeClock, events: list[dict[str, Any]]) -> Answerer:
    return Answerer(llm, clock, events.append, LlmTimeouts(), ChunkerConfig())


def drain(units: Units) -> list[Say | None]:
    out: list[Say | None] = []
    while not units.empty():
        out.append(units.get_nowait())
    return out


async def test_a_slow_first_token_gets_the_filler_then_the_units_then_none() -> None:
    clock = FakeClock()
    events: list[dict[str, Any]] = []
    a = answerer(ClockLlm(clock, first_s=1.0), clock, events)
    metrics, units = TurnMetrics(turn=1), Units()
    task = asyncio.get_running_loop().create_task(
        a.answer(1, lambda: [Message(Role.USER, "hi")], metrics, units)
    )
    await clock.advance(1.2, step=0.05)
    await task
    assert drain(units) == [
        Say(FILLER, filler=True),
        Say("It's noon."),
        Say("Anything else?"),
        None,
    ]
    assert metrics.llm_started is not None and metrics.llm_first_token is not None
    assert metrics.llm_first_token - metrics.llm_started == pytest.approx(1.0, abs=0.06)
    assert events == []


async def test_each_llm_request_reads_the_messages_afresh() -> None:
    """A committed reply's user text may change after it started: the fallback is asked
    with the text as it is then."""
    clock = FakeClock()
    events: list[dict[str, Any]] = []
    primary, fallback = ScriptedLlm(error=True, retryable=False), ScriptedLlm("Fine.")
    a = answerer(LlmChain.of(primary, fallback, clock=clock), clock, events)
    texts = iter(["what time", "what time is it"])
    units = Units()
    await a.answer(1, lambda: [Message(Role.USER, next(texts))], TurnMetrics(turn=1), units)
    assert primary.calls == ["what time"] and fallback.calls == ["what time is it"]
    assert drain(units) == [Say("Fine."), None]
    assert events == [], "the caller got an answer; the primary's breaker is still closed"


async def test_a_plain_llm_gets_a_breaker_whose_opening_is_reported_once() -> None:
    clock = FakeClock()
    events: list[dict[str, Any]] = []
    llm = ScriptedLlm(error=True, retryable=False)
    a = answerer(llm, clock, events)
    assert [m.role for m in a.llms] == ["primary"]
    for _ in range(4):  # the default breaker opens after 3 failures
        units = Units()
        await a.answer(1, lambda: [Message(Role.USER, "hi")], TurnMetrics(turn=1), units)
        assert drain(units) == [Say(FALLBACK_REPLY), None]
    assert len(llm.calls) == 3, "an open breaker is not waited on"
    engine = [e for e in events if e["type"] == "engine"]
    assert engine == [{"type": "engine", "engine": "llm", "role": "primary", "state": "open"}]
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert errors == ["the language model failed"] * 3 + ["the language model is unavailable"]
