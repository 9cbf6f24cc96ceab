"""Server-wide counters and recent per-turn stage times, in Prometheus text format."""

from __future__ import annotations

import collections
from collections.abc import Collection, Mapping

from agent.metrics import STAGES, percentile

HEARING = ("asr_queue_wait_ms", "asr_pass_ms", "eou_silence_ms")


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
            stage: collections.deque(maxlen=window) for stage in (*STAGES, *HEARING)
        }
        self.final_passes = 0
        self.final_passes_wasted = 0

    def record_turn(self, metrics: Mapping[str, object], interrupted: bool, over: int) -> None:
        self.turns[interrupted] += 1
        self.over_budget += over
        self.final_passes += _count(metrics.get("final_passes"))
        self.final_passes_wasted += _count(metrics.get("final_passes_wasted"))
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
        for stage in STAGES:
            lines += _summary("ringback_turn_stage_ms", "stage", stage, self._stages[stage])
        lines += [
            "# HELP ringback_hearing_ms The accurate ASR pass (queue wait, compute) and the "
            "silence that ended each turn.",
            "# TYPE ringback_hearing_ms summary",
        ]
        for name in HEARING:
            lines += _summary("ringback_hearing_ms", "name", name, self._stages[name])
        lines += [
            "# HELP ringback_final_passes_total Accurate ASR passes, by whether their words "
            "were used (wasted: the user went on speaking).",
            "# TYPE ringback_final_passes_total counter",
            f'ringback_final_passes_total{{wasted="false"}} '
            f"{self.final_passes - self.final_passes_wasted}",
            f'ringback_final_passes_total{{wasted="true"}} {self.final_passes_wasted}',
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


def _summary(metric: str, label: str, key: str, values: Collection[float]) -> list[str]:
    """A Prometheus summary's lines for one label value: p50/p90/p99 and the count."""
    lines = []
    for q in (50, 90, 99):
        value = percentile(values, q)
        shown = "NaN" if value is None else f"{value:.1f}"
        lines.append(f'{metric}{{{label}="{key}",quantile="{q / 100}"}} {shown}')
    lines.append(f'{metric}_count{{{label}="{key}"}} {len(values)}')
    return lines


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0
