"""Admission from measured headroom: would one more call push the calls already admitted over
their latency target? Pure (no I/O, no logging), timed by the caller's clock.

Past its capacity the server used to slow every call down (at 8-10 calls on 2 vCPUs, v2v
p99 2-6 s) instead of refusing the one call too many. `max_sessions` is a fixed guess of the
capacity; this core measures it. Over the last `window_s` it keeps:

- the event loop's lag, every 50 ms sample (agent/call/loop_lag.py): its p99. The loop carries
  every call's audio; when it wakes late, packets miss their playout slot for everyone;
- the wait for a reply's first audio from the shared TTS workers, and the wait for a shared
  whisper worker before the accurate pass, one per turn (agent/call/stats.py): their p90.
  They are how long a caller's reply stands in a queue behind other calls' work;
- how busy the server's process tree keeps the CPUs, as a fraction of its cores, sampled
  about once a second (signaling/cpu_busy.py), projected for one more call:
  busy × (calls + 1) / calls.

Each signal over its limit is a *pressure* (1.0: at the limit). Refusing starts when any
pressure reaches 1; it stops only when every pressure is at most `resume_below` and refusing
has lasted `hold_s` — no flapping around a limit. While refusing, a new offer gets 503 +
Retry-After (the rest of `hold_s`, at least `retry_min_s`); calls already admitted, and the
resume of one, are never refused.

Start-up noise (engines warming up, the first decoder loads, the first whisper pass) must not
refuse the first calls: observations in the first `warmup_s` are dropped, a signal with fewer
than its minimum samples in the window does not count (a fresh server admits), and with fewer
than `min_calls` calls in progress every offer is admitted.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from agent.metrics import percentile


class Signal(StrEnum):
    LOOP_LAG = "loop_lag_p99_seconds"
    TTS_WAIT = "tts_first_audio_wait_p90_seconds"
    WHISPER_WAIT = "whisper_wait_p90_seconds"
    CPU = "cpu_busy_ratio_projected"


# What each signal summarizes its window with, and the samples it needs to count at all.
_QUANTILE = {Signal.LOOP_LAG: 99.0, Signal.TTS_WAIT: 90.0, Signal.WHISPER_WAIT: 90.0}
_SHORT = {
    Signal.LOOP_LAG: "loop lag p99",
    Signal.TTS_WAIT: "TTS wait p90",
    Signal.WHISPER_WAIT: "whisper wait p90",
    Signal.CPU: "CPU with one more call",
}
_MIN_SAMPLES = {Signal.LOOP_LAG: 20, Signal.TTS_WAIT: 5, Signal.WHISPER_WAIT: 5, Signal.CPU: 3}


@dataclass(frozen=True)
class HeadroomConfig:
    """Limits of the admitted calls' latency budget (a v2v p99 near 1 s on the capacity
    benchmark); the figures behind them are in docs/measurements.md, "Capacity"."""

    enabled: bool = True
    loop_lag_p99_s: float = 0.030
    tts_wait_p90_s: float = 0.250
    whisper_wait_p90_s: float = 0.250
    cpu_busy_max: float = 0.90  # of the cores the server may use
    window_s: float = 10.0
    resume_below: float = 0.8  # refusing stops once every pressure is at most this
    hold_s: float = 3.0  # and refusing has lasted this long
    retry_min_s: float = 2.0
    warmup_s: float = 10.0
    min_calls: int = 1

    def __post_init__(self) -> None:
        limits = (self.loop_lag_p99_s, self.tts_wait_p90_s, self.whisper_wait_p90_s)
        if min(*limits, self.cpu_busy_max, self.window_s) <= 0:
            raise ValueError("headroom limits and window must be > 0")
        if not 0 < self.resume_below < 1:
            raise ValueError("headroom resume_below must be between 0 and 1")
        if min(self.hold_s, self.retry_min_s, self.warmup_s) < 0 or self.min_calls < 0:
            raise ValueError("headroom hold_s, retry_min_s, warmup_s, min_calls must be >= 0")

    def limit(self, signal: Signal) -> float:
        return {
            Signal.LOOP_LAG: self.loop_lag_p99_s,
            Signal.TTS_WAIT: self.tts_wait_p90_s,
            Signal.WHISPER_WAIT: self.whisper_wait_p90_s,
            Signal.CPU: self.cpu_busy_max,
        }[signal]


@dataclass(frozen=True)
class Decision:
    admit: bool
    retry_after_s: float  # 0 when admitting
    reason: str  # the signal that refuses (or last refused), "" when none
    values: Mapping[Signal, float | None] = field(default_factory=dict)  # None: not enough yet
    calls: int = 0

    def pressure(self, signal: Signal, config: HeadroomConfig) -> float:
        value = self.values.get(signal)
        return 0.0 if value is None else value / config.limit(signal)

    def summary(self) -> str:
        """The inputs for a log line, e.g. "loop lag p99 12 ms, TTS wait p90 -, ..."."""
        parts = []
        for signal, name in _SHORT.items():
            value = self.values.get(signal)
            if value is None:
                parts.append(f"{name} -")
            elif signal is Signal.CPU:
                parts.append(f"{name} {100 * value:.0f} %")
            else:
                parts.append(f"{name} {1000 * value:.0f} ms")
        return ", ".join(parts)


class Headroom:
    def __init__(self, config: HeadroomConfig, started_at: float) -> None:
        self.config = config
        self._trusted_from = started_at + config.warmup_s
        self._samples: dict[Signal, collections.deque[tuple[float, float]]] = {
            s: collections.deque() for s in Signal
        }
        self._refusing_since: float | None = None
        self.reason = ""
        self.refused = 0  # offers refused for lack of headroom
        self._logged = 0
        self._logged_at = -math.inf
        self.last = Decision(True, 0.0, "")

    # Observations -------------------------------------------------------------------------

    def observe_loop_lag(self, now: float, samples_s: Iterable[float]) -> None:
        for lag in samples_s:
            self._observe(Signal.LOOP_LAG, now, lag)

    def observe_wait(self, now: float, engine: str, wait_s: float) -> None:
        """A shared engine's queue wait: `tts` (a reply's first audio) or `whisper`."""
        signal = {"tts": Signal.TTS_WAIT, "whisper": Signal.WHISPER_WAIT}.get(engine)
        if signal is not None:
            self._observe(signal, now, wait_s)

    def observe_cpu(self, now: float, busy_ratio: float) -> None:
        """How busy the server's process tree kept its cores (1.0: all of them)."""
        self._observe(Signal.CPU, now, busy_ratio)

    def _observe(self, signal: Signal, now: float, value: float) -> None:
        if now < self._trusted_from or not math.isfinite(value):
            return
        samples = self._samples[signal]
        samples.append((now, max(0.0, value)))
        self._expire(samples, now)

    def _expire(self, samples: collections.deque[tuple[float, float]], now: float) -> None:
        while samples and samples[0][0] <= now - self.config.window_s:
            samples.popleft()

    # Decision -----------------------------------------------------------------------------

    def values(self, now: float, calls: int) -> dict[Signal, float | None]:
        """Each signal over the window (None while it has too few samples to count)."""
        out: dict[Signal, float | None] = {}
        for signal, samples in self._samples.items():
            self._expire(samples, now)
            if len(samples) < _MIN_SAMPLES[signal]:
                out[signal] = None
            elif signal is Signal.CPU:
                busy = sum(v for _, v in samples) / len(samples)
                out[signal] = busy * (calls + 1) / calls if calls else busy
            else:
                out[signal] = percentile((v for _, v in samples), _QUANTILE[signal])
        return out

    def decide(self, now: float, calls: int) -> Decision:
        """Whether one more call may start now (`calls`: calls in progress). Updates the
        refusing state, so call it for every offer and about once a second besides."""
        config = self.config
        values = self.values(now, calls)
        pressures = {s: (0.0 if v is None else v / config.limit(s)) for s, v in values.items()}
        worst = max(pressures, key=lambda s: pressures[s])
        if not config.enabled or calls < config.min_calls:
            self._refusing_since = None
        elif self._refusing_since is None:
            if pressures[worst] >= 1.0:
                self._refusing_since = now
                self.reason = _describe(worst, values[worst], config)
        elif (
            max(pressures.values()) <= config.resume_below
            and now - self._refusing_since >= config.hold_s
        ):
            self._refusing_since = None
        elif pressures[worst] >= 1.0:
            self.reason = _describe(worst, values[worst], config)
        if self._refusing_since is None:
            self.last = Decision(True, 0.0, "", values, calls)
        else:
            retry = max(config.retry_min_s, self._refusing_since + config.hold_s - now)
            self.last = Decision(False, retry, self.reason, values, calls)
        return self.last

    def refuse(self) -> None:
        """Count an offer refused for lack of headroom."""
        self.refused += 1

    def refusals_to_log(self, now: float, every_s: float = 5.0) -> int:
        """Refusals since the last log line, if that line is `every_s` old (else 0): one line
        for a burst of refused offers."""
        unlogged = self.refused - self._logged
        if unlogged <= 0 or now - self._logged_at < every_s:
            return 0
        self._logged, self._logged_at = self.refused, now
        return unlogged

    @property
    def refusing(self) -> bool:
        return self._refusing_since is not None


def _describe(signal: Signal, value: float | None, config: HeadroomConfig) -> str:
    limit = config.limit(signal)
    if signal is Signal.CPU:
        return (
            f"CPU {100 * (value or 0):.0f} % of the cores with one more call > {100 * limit:.0f} %"
        )
    names = {
        Signal.LOOP_LAG: "event-loop lag p99",
        Signal.TTS_WAIT: "TTS first-audio wait p90",
        Signal.WHISPER_WAIT: "whisper queue wait p90",
    }
    return f"{names[signal]} {1000 * (value or 0):.0f} ms > {1000 * limit:.0f} ms"
