"""Tests for agent.metrics: per-turn stage times relative to the end of speech, percentiles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.metrics import (
    DEFAULT_BUDGETS_MS,
    STAGES,
    VALUE_FIELDS,
    TurnMetrics,
    percentile,
    summarize,
)


def sample_turn() -> TurnMetrics:
    m = TurnMetrics(turn=3, speculative=True)
    m.mark("speech_start", 98.0)
    m.mark("speech_end", 100.0)
    m.mark("endpoint", 100.35)
    m.mark("asr_complete", 100.5)
    m.mark("llm_first_token", 100.2)  # speculative: before the endpoint
    m.mark("tts_first_chunk", 100.81234)
    m.mark("first_audio_out", 101.7)
    m.mark("end", 104.0)
    return m


def test_as_dict_is_relative_to_speech_end() -> None:
    d = sample_turn().as_dict()
    assert d["turn"] == 3
    assert d["speculative"] is True
    assert d["speech_end_ms"] == 0.0
    assert d["speech_start_ms"] == -2000.0
    assert d["speech_ms"] == 2000.0
    assert d["endpoint_ms"] == d["eou_delay_ms"] == 350.0
    assert d["asr_complete_ms"] == 500.0
    assert d["llm_first_token_ms"] == 200.0  # smaller than eou_delay_ms: the overlap
    assert d["tts_first_chunk_ms"] == 812.3  # rounded to 0.1 ms
    assert d["time_to_first_audio_ms"] == d["first_audio_out_ms"] == 1700.0
    assert d["total_ms"] == d["end_ms"] == 4000.0
    # Stages that never happened are None, not 0.
    assert d["llm_complete_ms"] is None
    assert d["tts_complete_ms"] is None
    assert d["asr_partial_ms"] is None


def test_as_dict_keys() -> None:
    d = sample_turn().as_dict()
    timestamps = [f.name for f in dataclasses.fields(TurnMetrics) if f.name not in VALUE_FIELDS]
    expected = {*VALUE_FIELDS, "speech_ms"} | {f"{n}_ms" for n in timestamps} | set(STAGES)
    assert set(d) == expected
    assert d["final_passes"] == 0 and d["completeness"] is None, "values are not turned into ms"
    for stage, attr in STAGES.items():
        assert d[stage] == d[f"{attr}_ms"]


def test_as_dict_without_speech_end() -> None:
    m = TurnMetrics(turn=1)
    m.mark("speech_start", 5.0)
    m.mark("endpoint", 6.0)
    d = m.as_dict()
    assert "speech_ms" not in d
    assert all(v is None for k, v in d.items() if k not in VALUE_FIELDS)


def test_mark_first_wins_unless_overwrite() -> None:
    m = TurnMetrics(turn=1)
    m.mark("endpoint", 1.0)
    m.mark("endpoint", 2.0)
    assert m.endpoint == 1.0
    m.mark("endpoint", 3.0, overwrite=True)
    assert m.endpoint == 3.0


@pytest.mark.parametrize(
    ("budgets", "expected"),
    [
        ({"eou_delay_ms": 300}, [("eou_delay_ms", 350.0, 300)]),
        ({"eou_delay_ms": 350}, []),  # equal to the budget is not over
        ({"eou_delay_ms": 349.9}, [("eou_delay_ms", 350.0, 349.9)]),
        ({"llm_complete_ms": 1}, []),  # never happened: not an overrun
        ({"no_such_stage": 1}, []),
        (
            {"llm_first_token_ms": 100, "asr_complete_ms": 1000, "total_ms": 3000},
            [("llm_first_token_ms", 200.0, 100), ("total_ms", 4000.0, 3000)],
        ),
        (DEFAULT_BUDGETS_MS, [("time_to_first_audio_ms", 1700.0, 1600)]),
        ({}, []),
    ],
    ids=["over", "equal", "just over", "missing stage", "unknown", "several", "defaults", "none"],
)
def test_overruns(budgets: dict[str, float], expected: list[tuple[str, float, float]]) -> None:
    assert sample_turn().overruns(budgets) == expected


def test_overruns_ignores_negative_and_flags_all_defaults() -> None:
    m = TurnMetrics(turn=1, speech_end=10.0)
    for attr in (
        "endpoint",
        "asr_complete",
        "llm_first_token",
        "tts_first_chunk",
        "first_audio_out",
    ):
        m.mark(attr, 20.0)  # 10 s late
    assert [stage for stage, _, _ in m.overruns(DEFAULT_BUDGETS_MS)] == list(DEFAULT_BUDGETS_MS)
    early = TurnMetrics(turn=2, speech_end=10.0, llm_first_token=9.0)
    assert early.overruns({"llm_first_token_ms": 0}) == []


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001])
@pytest.mark.parametrize("p", [0, 1, 10, 25, 33.3, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(n: int, p: float) -> None:
    values = np.random.default_rng(n).lognormal(6, 1, n)
    expected = float(np.percentile(values, p, method="linear"))
    assert percentile(values.tolist(), p) == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_percentile_edge_cases() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile(iter([10.0, 20.0, 30.0, 40.0]), 90) == pytest.approx(37.0)  # any iterable


def test_summarize() -> None:
    values = [float(v) for v in range(1, 101)]
    s = summarize(iter(values), "ttfa")
    assert set(s) == {"ttfa_p50", "ttfa_p90", "ttfa_p99"}
    for p in (50, 90, 99):
        assert s[f"ttfa_p{p}"] == pytest.approx(float(np.percentile(values, p)))
    assert summarize([], "x") == {"x_p50": None, "x_p90": None, "x_p99": None}
