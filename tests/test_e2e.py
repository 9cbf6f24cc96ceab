"""Tier 3: the real server process, real embedded engines, a real aiortc caller on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.audio import OUT_RATE_HZ, peak_dbfs
from agent.engines.local_llm import STORY
from harness.echo import EchoConfig
from harness.peer import Caller
from harness.wer import wer
from tests.conftest import ROOT, SENTENCES, Server

pytestmark = pytest.mark.e2e

CONVERSATION = [s for s in SENTENCES if s != "Tell me a story."]


async def test_spoken_conversation(server: Server, speech: dict[str, Any]) -> None:
    caller = Caller(server.url)
    try:
        await caller.connect()
        results = [await caller.say(text, speech[text]) for text in CONVERSATION]
    finally:
        await caller.close()

    errors = [wer(text, r.heard or "") for text, r in zip(CONVERSATION, results, strict=True)]
    assert sum(errors) / len(errors) <= 0.35, [(r.label, r.heard) for r in results]
    assert "time" in (results[0].heard or "")
    for r in results:
        assert r.reply, f"no reply to {r.label!r}"
        assert not r.interrupted
        assert r.v2v_ms is not None and 0 < r.v2v_ms < 3000, r
        assert peak_dbfs(r.reply_pcm) > -20, f"reply to {r.label!r} is not audible"
        m = r.server
        for key in (
            "eou_delay_ms",
            "asr_complete_ms",
            "llm_first_token_ms",
            "tts_first_chunk_ms",
            "time_to_first_audio_ms",
            "total_ms",
        ):
            assert isinstance(m.get(key), float), (key, m)
        assert m["time_to_first_audio_ms"] <= m["total_ms"]
    first_reply = results[0].reply
    assert first_reply is not None and first_reply.startswith("It's"), results[0]
    kinds = [e.data["type"] for e in caller.events]
    for kind in ("hello", "state", "partial", "final", "reply", "turn"):
        assert kind in kinds
    states = [e.data["state"] for e in caller.events if e.data["type"] == "state"]
    for state in ("listening", "processing_speech", "thinking", "speaking"):
        assert state in states
    await assert_metrics_page(server, min_turns=len(CONVERSATION))


async def assert_metrics_page(server: Server, min_turns: int) -> None:
    """/metrics (Prometheus text) counts the turns and, once the call ended, its link."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    def sample(text: str, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        raise KeyError(name, labels)

    text = ""
    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # the server records the link when the session has wound down
            async with http.get(server.url + "/metrics") as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                text = await resp.text()
            if sample(text, "ringback_link_frames_total", kind="delivered") > 0:
                break
            await asyncio.sleep(0.1)
    assert sample(text, "ringback_turns_total", interrupted="false") >= min_turns
    ttfa = sample(text, "ringback_turn_stage_ms", stage="time_to_first_audio_ms", quantile="0.5")
    assert 0 < ttfa < 3000
    assert sample(text, "ringback_voice_to_voice_server_seconds_count") >= min_turns
    assert sample(text, "ringback_link_frames_total", kind="delivered") > 0


async def test_barge_in_stops_the_agent(server: Server, speech: dict[str, Any]) -> None:
    caller = Caller(server.url)
    try:
        await caller.connect()
        t_story = await caller.play(speech["Tell me a story."], "story")
        # Wait until the (long) story has been playing for a while.
        speaking = await caller.wait_event(
            lambda d: d.get("type") == "state" and d.get("state") == "speaking", t_story, 10
        )
        assert speaking is not None, "the agent never started speaking"
        await asyncio.sleep(1.5)
        interruption = speech["What time is it?"]
        t_barge_sent = await caller.play(interruption, "barge")
        t_barge = caller.speech_onset("barge", interruption)
        turn = await caller.wait_event(
            lambda d: d.get("type") == "turn" and d.get("interrupted") is True, t_story, 10
        )
        answer = await caller.wait_event(
            lambda d: d.get("type") == "turn" and d.get("interrupted") is False, t_barge, 20
        )
        await asyncio.sleep(0.3)
    finally:
        await caller.close()

    assert turn is not None, "the story was not reported as interrupted"
    heard = turn.data["reply"]
    assert heard and len(heard) < len(STORY) / 2
    assert STORY.startswith(heard.rstrip(".,")[: len(heard) - 2])
    # The story's audio stopped soon after the interruption began: find the last loud story
    # frame before the answer's first loud frame.
    assert answer is not None, "the interruption got no answer"
    answer_onset = caller.first_loud_after(t_barge_sent)
    assert answer_onset is not None
    story_end = caller.last_loud_before(answer_onset - 0.2)
    assert story_end is not None
    stop_delay_s = story_end - t_barge
    # onset detection (min_speech_ms) + aiortc's receive buffers both ways; the agent itself
    # stops within one frame. pipecat measured ~450 ms here.
    interrupted = next(
        e.t for e in caller.events if e.data.get("state") == "interrupted" and e.t > t_barge
    )
    print(f"barge-in: agent silent at the caller {stop_delay_s * 1000:.0f} ms after speech onset")
    assert stop_delay_s < 0.6, (
        f"agent kept talking {stop_delay_s * 1000:.0f} ms into barge-in "
        f"(interrupted event after {(interrupted - t_barge) * 1000:.0f} ms)"
    )


def test_call_cli_writes_json(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "call.json"
    rec = tmp_path / "rec"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaling",
            "call",
            "--url",
            server.url,
            "--say",
            "What time is it?",
            "--json",
            str(out),
            "--record",
            str(rec),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "voice-to-voice ms: p50" in proc.stdout
    data = json.loads(out.read_text())
    (turn,) = data["turns"]
    assert "time" in turn["heard"]
    assert turn["reply"].startswith("It's")
    assert turn["v2v_ms"] > 0
    assert turn["server"]["time_to_first_audio_ms"] > 0
    assert data["summary"]["v2v_ms_p50"] == turn["v2v_ms"]
    wav = rec / "turn01.wav"
    assert wav.stat().st_size > OUT_RATE_HZ  # > 0.5 s of reply audio
    from harness.speech import load_wav

    assert np.max(np.abs(load_wav(wav).astype(np.int32))) > 3000


async def test_the_agents_own_voice_echoed_back_never_cuts_a_reply(
    server: Server, speech: dict[str, Any]
) -> None:
    """A speakerphone without echo cancellation: what the caller hears goes back into its
    microphone 6 dB quieter and 60 ms later. The agent never takes that for the user (no reply
    cut, none of its words heard as the user's), and the user talking over it still cuts in."""
    caller = Caller(server.url, echo=EchoConfig(gain_db=-6.0, delay_ms=60.0))
    questions = CONVERSATION[:3]
    try:
        await caller.connect()
        t0 = caller.clock.now()
        results = [await caller.say(text, speech[text]) for text in questions]
        await caller.play(speech["Tell me a story."], "story")
        speaking = await caller.wait_event(
            lambda d: d.get("type") == "state" and d.get("state") == "speaking", t0, 10
        )
        assert speaking is not None, "the agent never started the story"
        await asyncio.sleep(3.0)  # the story plays, its echo going back
        t_barge = caller.clock.now()
        before = [e.data for e in caller.events if e.t < t_barge]
        interruption = speech["What time is it?"]
        await caller.play(interruption, "barge")
        onset = caller.speech_onset("barge", interruption)
        turn = await caller.wait_event(
            lambda d: d.get("type") == "turn" and d.get("interrupted") is True, t_barge, 10
        )
    finally:
        await caller.close()

    cut = [d for d in before if d.get("type") == "turn" and d.get("interrupted")]
    assert not cut, f"the agent's own voice cut {len(cut)} replies: {cut}"
    finals = [d["text"] for d in before if d.get("type") == "final" and d.get("text")]
    assert len(finals) == len(questions) + 1, f"heard more than the caller said: {finals}"
    for r in results:
        assert r.reply and not r.interrupted, r
    assert turn is not None, "the caller talking over the echoed story did not cut in"
    assert turn.t - onset < 1.0, f"barge-in under echo took {(turn.t - onset) * 1000:.0f} ms"
