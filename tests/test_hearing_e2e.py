"""Hearing, end to end: the real server (defaults: hybrid ASR, Silero detector, an end of turn
that reads the words) and a real aiortc caller speaking the quick evaluation set — speech in
pink noise and babble that goes on 3 s after it, and a sentence with a pause in the middle.

The bounds are far from the targets' margins on purpose (a loaded 2-core CI machine), but far
tighter than what the agent did before this work: it answered noisy speech 3-5 s after it
ended (the endpointer waited for the noise to stop) and misheard ~70 % of its words.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from harness import evalset, noise
from harness.evalset import EvalItem
from harness.peer import Caller
from harness.speech import synthesizer
from harness.wer import wer, words
from tests.conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def items() -> list[EvalItem]:
    async def make() -> list[EvalItem]:
        async with synthesizer("piper") as pool:
            return await evalset.build(1, "quick", pool)

    return asyncio.run(make())


async def test_noisy_speech_is_answered_on_time_and_heard(
    server: Server, items: list[EvalItem]
) -> None:
    caller = Caller(server.url)
    results = []
    try:
        await caller.connect()
        for item in items:
            results.append(await caller.say(item.label, item.pcm48, 20.0, item.speech_end_s))
            await asyncio.sleep(1.0)
    finally:
        await caller.close()

    table = [(i.condition, i.text, r.heard, r.v2v_ms) for i, r in zip(items, results, strict=True)]
    print(*table, sep="\n")
    log = "\n".join(line for line in server.log().splitlines() if "heard" in line)
    answered = [r for r in results if r.v2v_ms is not None]
    # One item in ~30 can still go unanswered (docs/measurements.md, "Hearing"): allow one.
    assert len(answered) >= len(items) - 1, f"answered: {table}\n{log}"
    noisy_or_none = [
        r.v2v_ms for i, r in zip(items, results, strict=True) if i.condition != "clean"
    ]
    noisy = [v for v in noisy_or_none if v is not None]
    assert max(noisy) < 1600, f"a noisy turn waited for the noise to stop: {table}"
    errors = sum(
        wer(i.text, r.heard or "") * len(words(i.text)) for i, r in zip(items, results, strict=True)
    )
    total = sum(len(words(i.text)) for i in items)
    assert errors / total <= 0.25, f"WER {errors / total:.2f}: {table}"
    server_passes = [r.server.get("final_passes") for r in answered]
    assert all(isinstance(p, int) and p >= 1 for p in server_passes), "the whisper pass ran"


async def test_noise_alone_never_interrupts_the_agent(
    server: Server, speech: dict[str, Any]
) -> None:
    rng = np.random.default_rng(4)
    loud_pink = noise.pink(rng, 48_000 * 4)  # −20 dBFS: louder than most speech
    caller = Caller(server.url)
    try:
        await caller.connect()
        t0 = await caller.play(speech["Tell me a story."], "story")
        speaking = await caller.wait_event(
            lambda d: d.get("type") == "state" and d.get("state") == "speaking", t0, 10
        )
        assert speaking is not None, "the agent never started speaking"
        t_noise = caller.clock.now()
        await caller.play(loud_pink, "noise")
        await asyncio.sleep(1.0)
        after = [e.data for e in caller.events if e.t > t_noise]
        still_speaking = caller.first_loud_after(caller.clock.now() - 0.5) is not None
    finally:
        await caller.close()
    kinds = [d.get("state") or d.get("type") for d in after if d.get("type") != "link"]
    assert not {"interrupted", "processing_speech", "partial", "final"} & set(kinds), kinds
    assert still_speaking, "the story went on through the noise"
