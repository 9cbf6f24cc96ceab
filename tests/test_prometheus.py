"""/metrics through prometheus-client (parsed with its own text parser), /sessions, loop lag."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.call.loop_lag import LoopLagMonitor
from agent.call.stats import ServerStats
from harness.peer import Caller
from tests.conftest import SENTENCES, Server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
WHISPER = {"class": "turn_final"}  # the class label of engine queue waits
FIRST = {"class": "first_audio"}


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page: (name, sorted labels) → value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_two_servers_in_one_process_have_their_own_registries() -> None:
    a, b = ServerStats(), ServerStats()
    a.record_turn({"time_to_first_audio_ms": 420.0}, False, 0)
    pa, pb = parse(a.exposition().decode()), parse(b.exposition().decode())
    assert value(pa, "ringback_turns_total", interrupted="false") == 1
    assert value(pb, "ringback_turns_total", interrupted="false") == 0
    assert value(pa, "ringback_voice_to_voice_server_seconds_count") == 1
    assert value(pb, "ringback_voice_to_voice_server_seconds_count") == 0


def test_turns_errors_and_links_move_the_right_series() -> None:
    stats = ServerStats(window=3)
    active = [2]
    stats.bind(lambda: active[0], lambda: 7, capacity=8)
    for ttfa in (400.0, 500.0, 600.0, 700.0):  # the window keeps the last three
        stats.record_event(
            {
                "type": "turn",
                "interrupted": False,
                "over_budget": [],
                "metrics": {"time_to_first_audio_ms": ttfa, "speculative": True,
                            "final_passes": 1, "eou_delay_ms": None},
            }
        )  # fmt: skip
    stats.record_event(
        {
            "type": "turn",
            "interrupted": True,
            "over_budget": ["eou_delay_ms", "total_ms"],
            "metrics": {"time_to_first_audio_ms": 900.0, "final_passes": 3,
                        "final_passes_wasted": 1, "asr_queue_wait_ms": 12.0,
                        "eou_delay_ms": 250.0, "llm_first_token_ms": -40.0,
                        "eou_silence_ms": 260.0},
        }
    )  # fmt: skip
    stats.record_event({"type": "error", "message": "the reply failed"})
    stats.record_event({"type": "state", "state": "listening"})  # not counted
    stats.record_link_report({"playout_delay_ms": 31.0})
    stats.record_link({"frames_delivered": 100, "frames_concealed": 3,
                       "frames_fec_recovered": 2, "packets_lost": 2})  # fmt: skip
    stats.record_loop_lag(0.004, [0.001, 0.004])
    s = parse(stats.exposition().decode())

    assert value(s, "ringback_sessions_active") == 2
    assert value(s, "ringback_worker_load") == 0.25
    assert value(s, "ringback_calls_total") == 7
    assert value(s, "ringback_turns_total", interrupted="false") == 4
    assert value(s, "ringback_turns_total", interrupted="true") == 1
    assert value(s, "ringback_barge_ins_total") == 1
    assert value(s, "ringback_turns_over_budget_total") == 2
    assert value(s, "ringback_speculation_total", outcome="adopted") == 4
    assert value(s, "ringback_speculation_total", outcome="discarded") == 3
    assert value(s, "ringback_final_passes_total", wasted="false") == 6
    assert value(s, "ringback_final_passes_total", wasted="true") == 1
    assert value(s, "ringback_engine_errors_total") == 1
    assert value(s, "ringback_link_frames_total", kind="concealed") == 3
    assert value(s, "ringback_link_frames_total", kind="fec_recovered") == 2
    assert value(s, "ringback_link_packets_total", kind="lost") == 2
    # Histograms: 5 first-audio times, cumulative buckets.
    assert value(s, "ringback_voice_to_voice_server_seconds_count") == 5
    assert value(s, "ringback_voice_to_voice_server_seconds_bucket", le="0.5") == 2
    assert value(s, "ringback_voice_to_voice_server_seconds_sum") == pytest.approx(3.1)
    assert value(s, "ringback_endpoint_delay_seconds_count") == 1
    # A first token before the end of speech (speculation) counts as 0.
    assert value(s, "ringback_llm_first_token_seconds_bucket", le="0.05") == 1
    assert value(s, "ringback_engine_queue_wait_seconds_count", engine="whisper", **WHISPER) == 1
    assert value(s, "ringback_playout_delay_seconds_bucket", le="0.05") == 1
    assert value(s, "ringback_event_loop_lag_seconds") == 0.004
    assert value(s, "ringback_event_loop_lag_hist_seconds_count") == 2
    # The recent-turns summary is kept: last three first-audio times are 600, 700, 900.
    assert value(s, "ringback_turn_stage_ms", stage="time_to_first_audio_ms", quantile="0.5") == 700
    assert value(s, "ringback_turn_stage_ms_count", stage="time_to_first_audio_ms") == 3
    assert value(s, "ringback_hearing_ms", name="asr_queue_wait_ms", quantile="0.5") == 12
    assert value(s, "ringback_hearing_ms_count", name="asr_pass_ms") == 0
    assert math.isnan(value(s, "ringback_hearing_ms", name="asr_pass_ms", quantile="0.5"))


class StallingClock:
    """A clock on which every sleep oversleeps by `stall` (a loop blocked by other work)."""

    def __init__(self, stall: float) -> None:
        self.t = 0.0
        self.stall = stall

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds + self.stall
        await asyncio.sleep(0)

    def timeout(self, seconds: float) -> Any:
        return asyncio.timeout(None)


async def test_loop_lag_monitor_reports_the_oversleep_once_a_period() -> None:
    reports: list[tuple[float, list[float]]] = []
    two = asyncio.Event()

    def report(worst: float, samples: list[float]) -> None:
        reports.append((worst, samples))
        if len(reports) == 2:
            two.set()

    monitor = LoopLagMonitor(StallingClock(0.02), report, 0.05, 0.5)
    task = asyncio.get_running_loop().create_task(monitor.run())
    await asyncio.wait_for(two.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    worst, samples = reports[0]
    assert worst == pytest.approx(0.02)
    assert len(samples) == 8  # 0.07 s per sample: the 8th crosses 0.5 s
    assert all(s == pytest.approx(0.02) for s in samples)


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url + "/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        return parse(await resp.text())


@pytest.mark.e2e
async def test_metrics_and_sessions_move_during_a_real_call(
    server: Server, speech: dict[str, Any]
) -> None:
    said = [s for s in SENTENCES if s != "Tell me a story."][:2]
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, server.url)
        caller = Caller(server.url)
        try:
            await caller.connect()
            for text in said:
                result = await caller.say(text, speech[text])
                assert result.reply, result
            sid = caller.session_id
            assert sid is not None
            status, listing = await get_json(http, server.url + "/sessions")
            assert status == 200
            mine = [s for s in listing["sessions"] if s["session_id"] == sid]
            assert len(mine) == 1 and mine[0]["turns"] == len(said)
            status, one = await get_json(http, f"{server.url}/sessions/{sid}")
            assert status == 200 and one["state"] == "listening"
            assert one["connection"] == "connected"
            assert one["link"]["frames_delivered"] > 0
            during = await scrape(http, server.url)
        finally:
            await caller.close()
        status, _ = await get_json(http, f"{server.url}/sessions/{sid}")
        assert status == 404
        for _ in range(100):  # link totals are added when the session has wound down
            after = await scrape(http, server.url)
            frames = ("ringback_link_frames_total", (("kind", "delivered"),))
            if after[frames] > before[frames]:
                break
            await asyncio.sleep(0.1)

    def moved(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert value(during, "ringback_sessions_active") >= 1
    assert value(during, "ringback_worker_load") > 0
    assert moved("ringback_calls_total") == 1
    assert moved("ringback_turns_total", interrupted="false") == len(said)
    for hist in ("ringback_voice_to_voice_server_seconds", "ringback_endpoint_delay_seconds",
                 "ringback_asr_final_seconds", "ringback_llm_first_token_seconds",
                 "ringback_tts_first_audio_seconds"):  # fmt: skip
        assert moved(hist + "_count") == len(said), hist
    v2v = moved("ringback_voice_to_voice_server_seconds_sum") / len(said)
    assert 0 < v2v < 3.0
    assert moved("ringback_engine_queue_wait_seconds_count", engine="whisper", **WHISPER) >= 1
    assert (
        moved("ringback_engine_queue_wait_seconds_count", engine="tts", **FIRST)
        + moved(
            "ringback_engine_queue_wait_seconds_count", engine="tts", **{"class": "speculative"}
        )
        >= 1
    )
    assert moved("ringback_playout_delay_seconds_count") >= 1  # a link report every 2 s
    assert moved("ringback_link_frames_total", kind="delivered") > 100
    assert value(after, "ringback_event_loop_lag_hist_seconds_count") > 0
    assert 0 <= value(after, "ringback_event_loop_lag_seconds") < 1.0
    assert value(after, "ringback_llm_breaker_state", role="primary", state="closed") == 1
    assert moved("ringback_engine_errors_total") == 0


def test_every_series_on_the_grafana_dashboard_is_exported() -> None:
    import json
    import re

    from tests.conftest import ROOT

    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bringback_\w+", e)}
    from agent.conversation.breaker import BreakerConfig, CircuitBreaker

    stats = ServerStats()
    stats.record_turn({"time_to_first_audio_ms": 400.0}, False, 0)
    breaker = CircuitBreaker("LLM local", BreakerConfig())
    stats.bind_engines(lambda: {"primary": breaker}, lambda: {"crashed": 0})
    page = stats.exposition().decode()
    exported = {name for name, _ in parse(page)}
    # The --workers front adds its own series to the workers' pages.
    from prometheus_client import CollectorRegistry, generate_latest

    from signaling.workers import Worker, _Combined

    front = CollectorRegistry()
    front.register(_Combined([(0, page)], [Worker(0)]))
    exported |= {name for name, _ in parse(generate_latest(front).decode())}
    assert used and used <= exported, used - exported


def test_llm_breakers_and_tts_restarts_are_exported() -> None:
    from agent.clock import FakeClock
    from agent.conversation.breaker import BreakerConfig, CircuitBreaker

    primary = CircuitBreaker("LLM local", BreakerConfig(failures=2, reset_s=20), FakeClock())
    fallback = CircuitBreaker("LLM openai", BreakerConfig(failures=2, reset_s=20), FakeClock())
    for _ in range(2):
        assert primary.allow()
        primary.record_failure()
    stats = ServerStats()
    restarts = {"crashed": 1, "hung": 0}
    stats.bind_engines(lambda: {"primary": primary, "fallback": fallback}, lambda: restarts)
    s = parse(stats.exposition().decode())
    assert value(s, "ringback_llm_breaker_state", role="primary", state="open") == 1
    assert value(s, "ringback_llm_breaker_state", role="primary", state="closed") == 0
    assert value(s, "ringback_llm_breaker_state", role="fallback", state="closed") == 1
    assert value(s, "ringback_llm_breaker_transitions_total", role="primary", state="open") == 1
    assert value(s, "ringback_tts_worker_restarts_total", reason="crashed") == 1
    restarts["hung"] += 1  # read at every scrape
    s = parse(stats.exposition().decode())
    assert value(s, "ringback_tts_worker_restarts_total", reason="hung") == 1


def test_tts_queue_wait_is_labelled_with_the_first_units_class() -> None:
    stats = ServerStats()
    stats.record_turn({"tts_started_ms": 100.0, "tts_first_chunk_ms": 350.0,
                       "tts_first_class": "speculative"}, False, 0)  # fmt: skip
    stats.record_turn({"tts_started_ms": 100.0, "tts_first_chunk_ms": 200.0}, False, 0)
    s = parse(stats.exposition().decode())
    tts = "ringback_engine_queue_wait_seconds_sum"
    assert value(s, tts, engine="tts", **{"class": "speculative"}) == pytest.approx(0.25)
    assert value(s, tts, engine="tts", **FIRST) == pytest.approx(0.1)
