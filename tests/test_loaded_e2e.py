"""Tier 3 under load: several real aiortc callers at once, their turns ending together, long
replies. Every turn is answered, each caller hears the answer to its own question, in order.

Times are not asserted here (the capacity bench measures them: bench/capacity.py); what a
burst must never do is lose a turn or cross two calls' replies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.audio import OUT_RATE_HZ, peak_dbfs
from harness.peer import Caller, TurnResult
from tests.conftest import Server

pytestmark = pytest.mark.e2e

# Two questions per caller, each with the start of the built-in responder's answer: the
# replies run 2-7 s, so later turns end while other calls' replies still play.
SCRIPTS = [
    [("What can you do?", "I can tell you"), ("What is your name?", "I'm ringback")],
    [("What is your name?", "I'm ringback"), ("What can you do?", "I can tell you")],
    [("What day is it today?", "Today is"), ("What can you do?", "I can tell you")],
    [("What can you do?", "I can tell you"), ("What day is it today?", "Today is")],
]
PERIOD_S = 11.0  # between the ends of consecutive turns: room for the longest reply


async def converse(
    server: Server, speech: dict[str, Any], script: list[tuple[str, str]], t0: float
) -> list[TurnResult]:
    """Say each line so that its speech ends at t0 + i * PERIOD_S (same for every caller)."""
    loop = asyncio.get_running_loop()
    caller = Caller(server.url)
    results = []
    try:
        await caller.connect()
        for i, (text, _) in enumerate(script):
            pcm = speech[text]
            await asyncio.sleep(max(0.0, t0 + i * PERIOD_S - pcm.size / OUT_RATE_HZ - loop.time()))
            results.append(await caller.say(text, pcm))
    finally:
        await caller.close()
    return results


async def test_callers_whose_turns_end_together_are_all_answered(
    server: Server, speech: dict[str, Any]
) -> None:
    t0 = asyncio.get_running_loop().time() + 6.0  # every caller connected and greeted by then
    outcomes = await asyncio.gather(*(converse(server, speech, s, t0) for s in SCRIPTS))

    for script, results in zip(SCRIPTS, outcomes, strict=True):
        assert len(results) == len(script)
        for (text, answer), r in zip(script, results, strict=True):
            assert r.reply is not None, f"{text!r} was not answered: {r}"
            assert r.reply.startswith(answer), (text, r.heard, r.reply)  # its own answer
            assert not r.interrupted, r
            assert r.v2v_ms is not None and r.v2v_ms > 0, r
            assert peak_dbfs(r.reply_pcm) > -20, f"the reply to {text!r} is not audible"
        # Turns numbered in the order they were taken, one per utterance.
        turns = [r.server.get("turn") for r in results]
        numbers = [t for t in turns if isinstance(t, int)]
        assert numbers == turns and numbers == sorted(set(numbers)), turns
    # The long replies really were long (what makes their synthesis compete).
    longest = max(r.reply_pcm.size for results in outcomes for r in results) / OUT_RATE_HZ
    assert longest > 4.0
