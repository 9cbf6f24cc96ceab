"""The headroom core (signaling/headroom.py) on a fake clock: signals over and under their
limits, the projection for one more call, hysteresis, start-up, and the log's rate limit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from signaling.headroom import Headroom, HeadroomConfig, Signal

CONFIG = HeadroomConfig()  # the defaults: 30 ms lag p99, 250 ms waits p90, 90 % CPU
T0 = 1000.0
WARM = T0 + CONFIG.warmup_s  # observations from here count


def fill(h: Headroom, now: float, lag_s: float = 0.005, tts_s: float = 0.05,
         whisper_s: float = 0.05, cpu: float = 0.3) -> None:  # fmt: skip
    """One second of every signal at the given level."""
    h.observe_loop_lag(now, [lag_s] * 20)
    h.observe_wait(now, "tts", tts_s)
    h.observe_wait(now, "whisper", whisper_s)
    h.observe_cpu(now, cpu)


def steady(h: Headroom, start: float, seconds: int, **levels: float) -> float:
    for i in range(seconds):
        fill(h, start + i, **levels)
    return start + seconds - 1


@pytest.mark.parametrize(
    ("levels", "calls", "admit", "reason"),
    [
        ({}, 4, True, ""),
        ({"lag_s": 0.029}, 4, True, ""),
        ({"lag_s": 0.031}, 4, False, "event-loop lag p99 31 ms > 30 ms"),
        ({"tts_s": 0.3}, 4, False, "TTS first-audio wait p90 300 ms > 250 ms"),
        ({"whisper_s": 0.26}, 4, False, "whisper queue wait p90 260 ms > 250 ms"),
        ({"whisper_s": 0.24}, 4, True, ""),
        # CPU is projected for one more call: 0.7 busy with 4 calls is 0.875 with 5 (admit);
        # with 3 calls it is 0.933 with 4 (refuse).
        ({"cpu": 0.7}, 4, True, ""),
        ({"cpu": 0.7}, 3, False, "CPU 93 % of the cores with one more call > 90 %"),
        # With fewer calls than min_calls (1): the first call is never refused.
        ({"lag_s": 0.5, "cpu": 0.99}, 0, True, ""),
    ],
)
def test_signals_over_and_under_their_limits(
    levels: dict[str, float], calls: int, admit: bool, reason: str
) -> None:
    h = Headroom(CONFIG, started_at=T0)
    now = steady(h, WARM, 10, **levels)
    decision = h.decide(now, calls)
    assert (decision.admit, decision.reason) == (admit, reason)
    assert (decision.retry_after_s >= CONFIG.retry_min_s) is not admit


def test_the_inputs_read_as_one_log_line() -> None:
    h = Headroom(CONFIG, started_at=T0)
    now = steady(h, WARM, 10, lag_s=0.012, cpu=0.3)
    h.observe_wait(now, "tts", 0.1)  # tts and whisper: the 0.05 s of steady() and this
    assert h.decide(now, 2).summary() == (
        "loop lag p99 12 ms, TTS wait p90 50 ms, whisper wait p90 50 ms, "
        "CPU with one more call 45 %"
    )


def test_a_fresh_server_admits_and_start_up_noise_is_not_kept() -> None:
    h = Headroom(CONFIG, started_at=T0)
    assert h.decide(T0, 3).admit, "no signals at all"
    # Engines warming up: awful numbers, all within warmup_s of the start.
    steady(h, T0, int(CONFIG.warmup_s), lag_s=0.4, tts_s=2.0, whisper_s=2.0, cpu=1.0)
    decision = h.decide(WARM, 3)
    assert decision.admit
    assert set(decision.values.values()) == {None}, "nothing trusted yet"
    # Too few samples to count: one slow first whisper pass and a few lag samples.
    h.observe_wait(WARM + 1, "whisper", 3.0)
    h.observe_loop_lag(WARM + 1, [0.5] * 5)
    assert h.decide(WARM + 1, 1).admit


def test_hysteresis_refusing_lasts_until_every_signal_is_well_under() -> None:
    h = Headroom(CONFIG, started_at=T0)
    now = steady(h, WARM, 10, lag_s=0.040)
    assert not h.decide(now, 6).admit
    refused_at = now
    # Just under the limit again: still refusing (0.8 of the limit is needed).
    now = steady(h, now + 1, 11, lag_s=0.027)
    assert h.decide(now, 6).reason == "event-loop lag p99 40 ms > 30 ms"
    assert not h.decide(now, 6).admit, "27 ms is under 30 but not under 24: no flapping"
    # Well under: admitting again.
    now = steady(h, now + 1, 11, lag_s=0.020)
    assert h.decide(now, 6).admit
    assert now - refused_at >= CONFIG.hold_s


def test_hysteresis_holds_at_least_hold_s_and_retry_after_counts_down() -> None:
    config = replace(CONFIG, window_s=5.0, hold_s=8.0, retry_min_s=1.0)
    h = Headroom(config, started_at=T0)
    now = steady(h, WARM, 5, whisper_s=0.5)
    first = h.decide(now, 2)
    assert not first.admit and first.retry_after_s == pytest.approx(8.0)
    now = steady(h, now + 1, 5)  # the window holds only good samples now
    later = h.decide(now, 2)
    assert not later.admit, "hold_s has not passed"
    assert later.retry_after_s == pytest.approx(3.0)
    now = steady(h, now + 1, 3)
    assert h.decide(now, 2).admit


def test_an_old_bad_spell_leaves_the_window() -> None:
    h = Headroom(CONFIG, started_at=T0)
    now = steady(h, WARM, 10, tts_s=0.6)
    assert not h.decide(now, 5).admit
    # No new turns at all for a while (the TTS waits come one per turn): the spell ages out
    # and the signal, with too few samples, stops counting.
    now += CONFIG.window_s + 1
    h.observe_loop_lag(now, [0.005] * 20)
    decision = h.decide(now, 5)
    assert decision.admit and decision.values[Signal.TTS_WAIT] is None


def test_calls_ending_below_min_calls_reopen_at_once() -> None:
    config = replace(CONFIG, min_calls=2)
    h = Headroom(config, started_at=T0)
    now = steady(h, WARM, 10, cpu=0.95)
    assert not h.decide(now, 3).admit
    assert h.decide(now, 1).admit, "one call left: the next one is admitted"


def test_disabled_always_admits_but_still_measures() -> None:
    h = Headroom(replace(CONFIG, enabled=False), started_at=T0)
    now = steady(h, WARM, 10, lag_s=0.2)
    decision = h.decide(now, 8)
    assert decision.admit and decision.values[Signal.LOOP_LAG] == pytest.approx(0.2)


def test_refusals_are_logged_once_per_period() -> None:
    h = Headroom(CONFIG, started_at=T0)
    assert h.refusals_to_log(T0) == 0
    for _ in range(3):
        h.refuse()
    assert h.refusals_to_log(T0) == 3
    h.refuse()
    assert h.refusals_to_log(T0 + 1) == 0, "logged a second ago"
    h.refuse()
    assert h.refusals_to_log(T0 + 5) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"loop_lag_p99_s": 0.0},
        {"cpu_busy_max": -1.0},
        {"resume_below": 1.0},
        {"min_calls": -1},
        {"window_s": 0.0},
    ],
)
def test_config_validates(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(CONFIG, **bad)
