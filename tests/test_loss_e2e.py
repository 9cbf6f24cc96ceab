"""Under 5 % seeded uplink loss the agent still understands: FEC + concealment end to end."""

from __future__ import annotations

from typing import Any

import pytest

from harness.impair import Impairment
from harness.peer import Caller
from harness.wer import wer
from tests.conftest import Server

pytestmark = pytest.mark.e2e


async def test_agent_transcribes_through_5pct_loss(server: Server, speech: dict[str, Any]) -> None:
    caller = Caller(server.url, impairment=Impairment(loss_pct=5, seed=11))
    try:
        await caller.connect()
        results = [
            await caller.say(text, speech[text])
            for text in ("What time is it?", "What is your name?", "Thank you very much.")
        ]
    finally:
        await caller.close()

    assert caller.impaired is not None and caller.impaired.dropped > 0, "no packet was dropped"
    heard = [r.heard or "" for r in results]
    assert "time" in heard[0], heard
    assert sum(wer(r.label, h) for r, h in zip(results, heard, strict=True)) / 3 <= 0.35, heard
    assert results[0].reply and results[0].reply.startswith("It's")
    link = results[-1].link
    assert link["path"] == "ringback" and link["codec"] == "opus"
    # The server saw the loss and answered every missing slot with FEC or concealment.
    assert link["packets_lost"] > 0
    assert link["frames_fec_recovered"] + link["frames_concealed"] >= link["packets_lost"]
    assert link["playout_delay_ms_p50"] <= 60
