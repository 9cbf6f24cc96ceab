"""`python -m bench.capacity --quick`: a real ramp of real callers writes well-formed JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_quick_bench

STEP_KEYS = {"calls", "v2v_ms_p50", "v2v_ms_p99", "loop_lag_ms_p99", "late_frames"}


@pytest.mark.e2e
def test_quick_capacity_ramp_writes_its_json_and_curve(tmp_path: Path) -> None:
    data, printed = run_quick_bench("capacity", tmp_path, timeout_s=420)
    assert set(data) >= {"max_calls", "workers", "per_call", "steps"}
    assert data["workers"] == 1
    assert set(data["per_call"]) == {"cpu_ms_per_s", "rss_mb", "pss_mb"}
    # The whole tree's memory: the server and every engine worker process.
    assert 0 < data["idle"]["pss_mb"] <= data["idle"]["rss_mb"]
    steps = data["steps"]
    assert [s["calls"] for s in steps] in ([1], [1, 2])  # the ramp stops at the first step over
    for step in steps:
        assert set(step) >= STEP_KEYS
        assert isinstance(step["late_frames"], int) and step["late_frames"] >= 0
        assert step["cpu_ms_per_s"] > 0 and step["rss_mb"] > 50
        assert step["arrival"] == "burst" and step["refused"] == 0
    first = steps[0]
    # One caller on an idle-ish server is answered, well inside the 30 s the caller waits.
    assert first["answered"] == first["turns"] == 1
    assert 0 < first["v2v_ms_p50"] <= first["v2v_ms_p99"] < 10_000
    assert first["loop_lag_ms_p99"] is not None and first["loop_lag_ms_p99"] >= 0
    # The reply's first audio waited for a TTS worker, and the wait was measured.
    assert any(key.startswith("tts") for key in first["engine_wait_ms"])
    # max_calls is the last step before the first one over a limit.
    assert all(not s["over"] for s in steps[:-1])
    passed = steps if not steps[-1]["over"] else steps[:-1]
    assert data["max_calls"] == (passed[-1]["calls"] if passed else 0)
    if data["max_calls"]:
        assert data["per_call"]["cpu_ms_per_s"] is not None
    assert "max sustained calls" in printed
    # Transport only (the echo peer), side by side: the audio comes back, much sooner than a
    # spoken reply and for far less CPU per call.
    echo = data["echo"]
    assert [s["calls"] for s in echo["steps"]] in ([1], [1, 2])
    e1 = echo["steps"][0]
    assert e1["answered"] == 1 and 0 < e1["v2v_ms_p50"] < 2000
    assert e1["v2v_ms_p50"] < first["v2v_ms_p50"]
    assert e1["rss_mb"] < first["rss_mb"]
    png = tmp_path / "capacity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_top_counts_leaf_frames(tmp_path: Path) -> None:
    from bench.capacity import profile_top

    raw = tmp_path / "profile.txt"
    raw.write_text(
        "main (a.py:1);run (b.py:2);decode (c.py:3) 30\n"
        "main (a.py:1);run (b.py:2) 10\n"
        "main (a.py:1);other (d.py:4);decode (c.py:3) 20\n"
        "garbage line\n"
    )
    assert profile_top(raw) == [("decode (c.py:3)", 83.3), ("run (b.py:2)", 16.7)]


def test_histogram_quantile_of_what_happened_between_two_scrapes() -> None:
    from bench.capacity import histogram_quantile

    def page(counts: list[float]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        bounds = ["0.01", "0.05", "+Inf"]
        return {("lag_bucket", (("le", le),)): c for le, c in zip(bounds, counts, strict=True)}

    before = page([100, 100, 100])  # earlier steps: all fast
    after = page([100 + 90, 100 + 99, 100 + 100])  # this step: 90 fast, 9 slower, 1 slowest
    assert histogram_quantile(before, after, "lag", 0.5) == 0.01
    assert histogram_quantile(before, after, "lag", 0.99) == 0.05
    assert histogram_quantile(before, after, "lag", 1.0) == float("inf")
    assert histogram_quantile(after, after, "lag", 0.99) is None  # nothing observed


def test_slow_turns_summarizes_the_servers_breakdown_lines() -> None:
    from bench.capacity import slow_turns

    log = (
        "12:00:01 WARNING agent.conversation.turns [s1] slow turn 2: 1500 ms from end of speech"
        " to first audio (over 1000 ms): eou_delay_ms=300 tts_wait_ms=900 tts_class=first_audio\n"
        "12:00:02 INFO signaling.app [s2] answered\n"
        "12:00:03 WARNING agent.conversation.turns [s3] slow turn 1: 1100 ms from end of speech"
        " to first audio (over 1000 ms): eou_delay_ms=500 tts_wait_ms=100\n"
        "12:00:04 WARNING agent.engines.pocketsphinx_asr ASR worker pid=7 hung: replacing it\n"
    )
    out = slow_turns(log)
    assert out["count"] == 2
    assert out["stages_ms"]["tts_wait_ms"] == {"p50": 500.0, "max": 900.0}
    assert out["stages_ms"]["eou_delay_ms"]["max"] == 500.0
    assert out["workers_replaced"] == 1
    assert "tts_class" not in out["stages_ms"]  # not a time
