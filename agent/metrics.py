"""Per-turn timing: monotonic timestamps per stage, exported as ms after the end of speech.

All stage times are measured from `speech_end` (end of the user's last voiced frame as the
server received it), so the numbers add up the way a listener experiences them. A reply that
was started speculatively can show `llm_first_token_ms` smaller than `eou_delay_ms`: that is
the overlap speculation buys.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)

# Stage → the TurnMetrics timestamp that ends it. Budgets use these names.
STAGES: dict[str, str] = {
    "eou_delay_ms": "endpoint",
    "asr_complete_ms": "asr_complete",
    "llm_first_token_ms": "llm_first_token",
    "llm_complete_ms": "llm_complete",
    "tts_first_chunk_ms": "tts_first_chunk",
    "tts_complete_ms": "tts_complete",
    "time_to_first_audio_ms": "first_audio_out",
    "total_ms": "end",
}

DEFAULT_BUDGETS_MS: dict[str, float] = {
    "eou_delay_ms": 600,
    "asr_complete_ms": 800,
    "llm_first_token_ms": 1200,
    "tts_first_chunk_ms": 1500,
    "time_to_first_audio_ms": 1600,
}


@dataclass
class TurnMetrics:
    turn: int
    audio_chunk_received: float | None = None
    speech_start: float | None = None
    speech_end: float | None = None
    endpoint: float | None = None
    asr_started: float | None = None
    asr_partial: float | None = None
    asr_complete: float | None = None
    llm_started: float | None = None
    llm_first_token: float | None = None
    llm_complete: float | None = None
    tts_started: float | None = None
    tts_first_chunk: float | None = None
    tts_complete: float | None = None
    first_audio_out: float | None = None
    end: float | None = None
    speculative: bool = False

    def mark(self, name: str, t: float, overwrite: bool = False) -> None:
        """Record a stage time (the first one wins unless overwrite)."""
        if overwrite or getattr(self, name) is None:
            setattr(self, name, t)

    def _rel_ms(self, t: float | None) -> float | None:
        if t is None or self.speech_end is None:
            return None
        return round((t - self.speech_end) * 1000, 1)

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """Stage offsets in ms after the end of speech (the seed names keep their meaning)."""
        out: dict[str, float | int | bool | None] = {
            "turn": self.turn,
            "speculative": self.speculative,
        }
        for f in fields(self):
            if f.name in ("turn", "speculative"):
                continue
            out[f"{f.name}_ms"] = self._rel_ms(getattr(self, f.name))
        for stage, attr in STAGES.items():
            out[stage] = self._rel_ms(getattr(self, attr))
        if self.speech_start is not None and self.speech_end is not None:
            out["speech_ms"] = round((self.speech_end - self.speech_start) * 1000, 1)
        return out

    def overruns(self, budgets_ms: Mapping[str, float]) -> list[tuple[str, float, float]]:
        """(stage, measured ms, budget ms) for every stage over its budget."""
        d = self.as_dict()
        over = []
        for stage, budget in budgets_ms.items():
            value = d.get(stage)
            if isinstance(value, float) and value > budget:
                over.append((stage, value, budget))
        return over


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank-with-interpolation percentile (numpy's 'linear'); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(values: Iterable[float], prefix: str) -> dict[str, float | None]:
    xs = list(values)
    return {f"{prefix}_p{p}": percentile(xs, p) for p in (50, 90, 99)}


class ServerStats:
    """Server-wide counters and recent per-turn stage times, in Prometheus text format.

    Quantiles are over the last `window` turns (a sliding summary), so /metrics shows how the
    server is doing now, not since it started.
    """

    def __init__(self, window: int = 500) -> None:
        self.turns: dict[bool, int] = {False: 0, True: 0}  # interrupted → count
        self.over_budget = 0
        self.link_frames: dict[str, int] = {"delivered": 0, "fec_recovered": 0, "concealed": 0}
        self.link_packets: dict[str, int] = {"received": 0, "lost": 0, "late": 0}
        self._stages: dict[str, collections.deque[float]] = {
            stage: collections.deque(maxlen=window) for stage in STAGES
        }

    def record_turn(self, metrics: Mapping[str, object], interrupted: bool, over: int) -> None:
        self.turns[interrupted] += 1
        self.over_budget += over
        for stage, values in self._stages.items():
            value = metrics.get(stage)
            if isinstance(value, float):
                values.append(value)

    def record_link(self, link: Mapping[str, object]) -> None:
        """A finished call's receive totals (its last `link` report)."""
        for key in self.link_frames:
            self.link_frames[key] += _count(link.get(f"frames_{key}"))
        for key in self.link_packets:
            self.link_packets[key] += _count(link.get(f"packets_{key}"))

    def prometheus(self, active: int, started: int) -> str:
        lines = [
            "# HELP ringback_sessions_active Calls in progress.",
            "# TYPE ringback_sessions_active gauge",
            f"ringback_sessions_active {active}",
            "# HELP ringback_calls_total Calls answered since start.",
            "# TYPE ringback_calls_total counter",
            f"ringback_calls_total {started}",
            "# HELP ringback_turns_total Agent replies, by whether the user barged in.",
            "# TYPE ringback_turns_total counter",
            *(
                f'ringback_turns_total{{interrupted="{str(k).lower()}"}} {v}'
                for k, v in self.turns.items()
            ),
            "# HELP ringback_turns_over_budget_total Stage budget overruns.",
            "# TYPE ringback_turns_over_budget_total counter",
            f"ringback_turns_over_budget_total {self.over_budget}",
            "# HELP ringback_turn_stage_ms Stage time after the end of the user's speech.",
            "# TYPE ringback_turn_stage_ms summary",
        ]
        for stage, values in self._stages.items():
            for q in (50, 90, 99):
                value = percentile(values, q)
                shown = "NaN" if value is None else f"{value:.1f}"
                lines.append(
                    f'ringback_turn_stage_ms{{stage="{stage}",quantile="{q / 100}"}} {shown}'
                )
            lines.append(f'ringback_turn_stage_ms_count{{stage="{stage}"}} {len(values)}')
        lines += [
            "# HELP ringback_link_frames_total Received 20 ms frames of finished calls, by origin.",
            "# TYPE ringback_link_frames_total counter",
            *(f'ringback_link_frames_total{{kind="{k}"}} {v}' for k, v in self.link_frames.items()),
            "# HELP ringback_link_packets_total Received RTP packets of finished calls.",
            "# TYPE ringback_link_packets_total counter",
            *(
                f'ringback_link_packets_total{{kind="{k}"}} {v}'
                for k, v in self.link_packets.items()
            ),
        ]
        return "\n".join(lines) + "\n"


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0
