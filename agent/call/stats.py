"""Server-wide metrics through prometheus-client, in one registry per server (app).

Histograms (seconds) of each turn's stages, the playout delay and the engines' queue waits;
counters of calls, turns, barge-ins, speculation, received frames, engine errors, LLM breaker
transitions and TTS worker restarts; gauges of active sessions, worker load, event-loop lag
and LLM breaker state; and, as before, p50/p90/p99 of every stage
over the last `window` turns (`ringback_turn_stage_ms`, `ringback_hearing_ms`) so /metrics
also shows how the server is doing now without a Prometheus server.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.metrics import STAGES, percentile

HEARING = ("asr_queue_wait_ms", "asr_pass_ms", "eou_silence_ms")

# Turn stage (ms after the end of speech, agent.metrics) → histogram name and help.
STAGE_HISTOGRAMS: dict[str, tuple[str, str]] = {
    "time_to_first_audio_ms": (
        "ringback_voice_to_voice_server_seconds",
        "End of the user's speech (as received) to the first reply frame sent.",
    ),
    "eou_delay_ms": (
        "ringback_endpoint_delay_seconds",
        "End of the user's speech to the end-of-turn decision.",
    ),
    "asr_complete_ms": (
        "ringback_asr_final_seconds",
        "End of the user's speech to the final transcript.",
    ),
    "llm_first_token_ms": (
        "ringback_llm_first_token_seconds",
        "End of the user's speech to the LLM's first token (0 when speculation had it sooner).",
    ),
    "tts_first_chunk_ms": (
        "ringback_tts_first_audio_seconds",
        "End of the user's speech to the first synthesized audio (0 when sooner).",
    ),
}
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0)
SHORT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)
FRAME_KINDS = ("delivered", "fec_recovered", "concealed")
PACKET_KINDS = ("received", "lost", "late")


class Breaker(Protocol):
    """What /metrics reads of an engine's circuit breaker (agent/conversation/breaker.py)."""

    @property
    def state(self) -> str: ...

    @property
    def transitions(self) -> Mapping[str, int]: ...


class ServerStats:
    """One server's metrics. `bind` connects the live values (sessions, calls started)."""

    def __init__(self, window: int = 500, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._active: Callable[[], int] = lambda: 0
        self._started: Callable[[], int] = lambda: 0
        self._capacity = 1
        self._breakers: Callable[[], Mapping[str, Breaker]] = dict
        self._tts_restarts: Callable[[], Mapping[str, int]] = dict
        self._on_queue_wait: Callable[[str, float], None] = lambda engine, wait_s: None
        self.turns = Counter(
            "ringback_turns",
            "Agent replies, by whether the user barged in.",
            ["interrupted"],
            registry=r,
        )
        self.barge_ins = Counter("ringback_barge_ins", "Replies the user interrupted.", registry=r)
        self.over_budget = Counter(
            "ringback_turns_over_budget", "Stage budget overruns.", registry=r
        )
        self.speculation = Counter(
            "ringback_speculation",
            "Replies started during the pause: adopted (answered) or discarded (accurate "
            "passes whose words were not the ones answered).",
            ["outcome"],
            registry=r,
        )
        self.final_passes = Counter(
            "ringback_final_passes",
            "Accurate ASR passes, by whether their words were used (wasted: the user went on).",
            ["wasted"],
            registry=r,
        )
        self.link_frames = Counter(
            "ringback_link_frames",
            "Received 20 ms frames of finished calls, by origin (FEC-recovered, concealed).",
            ["kind"],
            registry=r,
        )
        self.link_packets = Counter(
            "ringback_link_packets",
            "Received RTP packets of finished calls.",
            ["kind"],
            registry=r,
        )
        self.engine_errors = Counter(
            "ringback_engine_errors", "Engine failures reported to callers.", registry=r
        )
        self.stage_seconds = {
            stage: Histogram(name, doc, buckets=LATENCY_BUCKETS, registry=r)
            for stage, (name, doc) in STAGE_HISTOGRAMS.items()
        }
        self.playout_delay = Histogram(
            "ringback_playout_delay_seconds",
            "Receive-side buffering, sampled at every link report (every 2 s per call).",
            buckets=(0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25),
            registry=r,
        )
        self.queue_wait = Histogram(
            "ringback_engine_queue_wait_seconds",
            "Wait for a shared engine: whisper (queued before the accurate pass starts), tts "
            "(a reply's first sentence: request to first audio, queue and synthesis), by the "
            "class of the work (agent/engines/priority.py).",
            ["engine", "class"],
            buckets=SHORT_BUCKETS,
            registry=r,
        )
        self.admission_refused = Counter(
            "ringback_admission_refused",
            "Offers refused before any work, by reason: rate (429), capacity, headroom "
            "(no room for one more call in the measured latency budget), draining (503).",
            ["reason"],
            registry=r,
        )
        for k in ("rate", "capacity", "headroom", "draining"):
            self.admission_refused.labels(k)
        self.loop_lag = Gauge(
            "ringback_event_loop_lag_seconds",
            "How late the event loop woke a timer, worst over the last second.",
            registry=r,
        )
        self.loop_lag_hist = Histogram(
            "ringback_event_loop_lag_hist_seconds",
            "How late the event loop woke a timer (every sample).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        for k in ("false", "true"):
            self.turns.labels(k)
            self.final_passes.labels(k)
        for k in ("adopted", "discarded"):
            self.speculation.labels(k)
        for k in FRAME_KINDS:
            self.link_frames.labels(k)
        for k in PACKET_KINDS:
            self.link_packets.labels(k)
        self.queue_wait.labels("whisper", "turn_final")
        for k in ("first_audio", "speculative"):
            self.queue_wait.labels("tts", k)
        self._recent: dict[str, collections.deque[float]] = {
            stage: collections.deque(maxlen=window) for stage in (*STAGES, *HEARING)
        }
        r.register(_Live(self))

    def bind(self, active: Callable[[], int], started: Callable[[], int], capacity: int) -> None:
        """Where the live values come from: calls in progress, calls answered, max calls."""
        self._active, self._started, self._capacity = active, started, max(1, capacity)

    def bind_engines(
        self,
        breakers: Callable[[], Mapping[str, Breaker]],
        tts_restarts: Callable[[], Mapping[str, int]],
    ) -> None:
        """Where the engines' health comes from: LLM breakers by role, TTS worker restarts."""
        self._breakers, self._tts_restarts = breakers, tts_restarts

    def watch_queue_waits(self, observe: Callable[[str, float], None]) -> None:
        """Also hand every engine queue wait (engine, seconds) to `observe` (admission)."""
        self._on_queue_wait = observe

    @property
    def active(self) -> int:
        return self._active()

    @property
    def load(self) -> float:
        """Calls in progress over the maximum (1.0: full)."""
        return self._active() / self._capacity

    def record_event(self, event: Mapping[str, object]) -> None:
        """A session event on its way to the caller (`turn`, `error`; others are ignored)."""
        if event.get("type") == "turn":
            metrics = event.get("metrics")
            over = event.get("over_budget")
            self.record_turn(
                metrics if isinstance(metrics, Mapping) else {},
                event.get("interrupted") is True,
                len(over) if isinstance(over, list) else 0,
            )
        elif event.get("type") == "error":
            self.engine_errors.inc()

    def record_turn(self, metrics: Mapping[str, object], interrupted: bool, over: int) -> None:
        self.turns.labels(str(interrupted).lower()).inc()
        if interrupted:
            self.barge_ins.inc()
        self.over_budget.inc(over)
        passes = _count(metrics.get("final_passes"))
        wasted = _count(metrics.get("final_passes_wasted"))
        self.final_passes.labels("false").inc(max(0, passes - wasted))
        self.final_passes.labels("true").inc(wasted)
        adopted = 1 if metrics.get("speculative") is True else 0
        self.speculation.labels("adopted").inc(adopted)
        self.speculation.labels("discarded").inc(max(0, passes - adopted))
        for stage, values in self._recent.items():
            value = metrics.get(stage)
            if isinstance(value, float):
                values.append(value)
        for stage, hist in self.stage_seconds.items():
            value = metrics.get(stage)
            if isinstance(value, float):
                hist.observe(max(0.0, value) / 1000)
        wait = metrics.get("asr_queue_wait_ms")
        if isinstance(wait, float):
            # The pass the turn adopted: the one it waited for at its end (TURN_FINAL).
            self.queue_wait.labels("whisper", "turn_final").observe(max(0.0, wait) / 1000)
            self._on_queue_wait("whisper", max(0.0, wait) / 1000)
        asked, first = metrics.get("tts_started_ms"), metrics.get("tts_first_chunk_ms")
        if isinstance(asked, float) and isinstance(first, float):  # the reply's first sentence
            tts_class = metrics.get("tts_first_class")
            tts_class = tts_class if isinstance(tts_class, str) else "first_audio"
            self.queue_wait.labels("tts", tts_class).observe(max(0.0, first - asked) / 1000)
            if tts_class == "first_audio":  # a caller waited for it (not made in the pause)
                self._on_queue_wait("tts", max(0.0, first - asked) / 1000)

    def record_link_report(self, link: Mapping[str, object]) -> None:
        """A periodic `link` report of a call in progress."""
        delay = link.get("playout_delay_ms")
        if isinstance(delay, int | float):
            self.playout_delay.observe(max(0.0, float(delay)) / 1000)

    def record_link(self, link: Mapping[str, object]) -> None:
        """A finished call's receive totals (its last `link` report)."""
        for key in FRAME_KINDS:
            self.link_frames.labels(key).inc(_count(link.get(f"frames_{key}")))
        for key in PACKET_KINDS:
            self.link_packets.labels(key).inc(_count(link.get(f"packets_{key}")))

    def record_loop_lag(self, worst_s: float, samples: Iterable[float]) -> None:
        self.loop_lag.set(worst_s)
        for lag in samples:
            self.loop_lag_hist.observe(lag)

    def exposition(self) -> bytes:
        """The Prometheus text format (version 0.0.4) of everything above."""
        return generate_latest(self.registry)

    def recent(self, stage: str) -> list[float]:
        """The last `window` values of a stage (ms), oldest first."""
        return list(self._recent[stage])


class _Live(Collector):
    """Values read at scrape time: sessions, calls answered, load, and the windowed quantiles."""

    def __init__(self, stats: ServerStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        s = self._stats
        active = Metric("ringback_sessions_active", "Calls in progress.", "gauge")
        active.add_sample("ringback_sessions_active", {}, s.active)
        load = Metric("ringback_worker_load", "Calls in progress over the maximum.", "gauge")
        load.add_sample("ringback_worker_load", {}, s.load)
        calls = CounterMetricFamily("ringback_calls", "Calls answered since start.")
        calls.add_metric([], s._started())
        stage = Metric(
            "ringback_turn_stage_ms",
            "Stage time after the end of the user's speech, over the recent turns.",
            "summary",
        )
        for name in STAGES:
            _quantiles(stage, "stage", name, s.recent(name))
        hearing = Metric(
            "ringback_hearing_ms",
            "The accurate ASR pass (queue wait, compute) and the silence that ended each "
            "turn, over the recent turns.",
            "summary",
        )
        for name in HEARING:
            _quantiles(hearing, "name", name, s.recent(name))
        state = Metric(
            "ringback_llm_breaker_state", "LLM circuit breaker state by role (1: current).", "gauge"
        )
        moves = CounterMetricFamily(
            "ringback_llm_breaker_transitions", "LLM circuit breaker state changes.",
            labels=["role", "state"],
        )  # fmt: skip
        for role, breaker in s._breakers().items():
            for name, count in breaker.transitions.items():
                state.add_sample(state.name, {"role": role, "state": name},
                                 1.0 if str(breaker.state) == name else 0.0)  # fmt: skip
                moves.add_metric([role, name], count)
        restarts = CounterMetricFamily(
            "ringback_tts_worker_restarts", "TTS worker processes restarted, by reason.",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in s._tts_restarts().items():
            restarts.add_metric([reason], count)
        return [active, load, calls, stage, hearing, state, moves, restarts]


def _quantiles(metric: Metric, label: str, key: str, values: list[float]) -> None:
    for q in (0.5, 0.9, 0.99):
        value = percentile(values, q * 100)
        shown = float("nan") if value is None else round(value, 1)
        metric.add_sample(metric.name, {label: key, "quantile": str(q)}, shown)
    metric.add_sample(metric.name + "_count", {label: key}, len(values))
    metric.add_sample(metric.name + "_sum", {label: key}, round(sum(values), 1))


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
