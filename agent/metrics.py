"""Per-turn timing: monotonic timestamps per stage, exported as ms after the end of speech.

All stage times are measured from `speech_end` (end of the user's last voiced frame as the
server received it), so the numbers add up the way a listener experiences them. A reply that
was started speculatively can show `llm_first_token_ms` smaller than `eou_delay_ms`: that is
the overlap speculation buys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import numpy as np

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


VALUE_FIELDS = (
    "turn",
    "speculative",
    "final_passes",
    "final_passes_wasted",
    "asr_queue_wait_ms",
    "asr_pass_ms",
    "eou_silence_ms",
    "completeness",
)


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
    # Values, not timestamps (exported as they are):
    final_passes: int = 0  # accurate ASR passes started for this utterance
    final_passes_wasted: int = 0  # ... discarded because the user went on speaking
    asr_queue_wait_ms: float | None = None  # the adopted pass's wait for the shared pool
    asr_pass_ms: float | None = None  # ... and its compute time
    eou_silence_ms: float | None = None  # the silence that ended the turn
    completeness: str | None = None  # how complete the words sounded (completeness.py)

    def mark(self, name: str, t: float, overwrite: bool = False) -> None:
        """Record a stage time (the first one wins unless overwrite)."""
        if overwrite or getattr(self, name) is None:
            setattr(self, name, t)

    def _rel_ms(self, t: float | None) -> float | None:
        if t is None or self.speech_end is None:
            return None
        return round((t - self.speech_end) * 1000, 1)

    def as_dict(self) -> dict[str, float | int | bool | str | None]:
        """Stage offsets in ms after the end of speech (the seed names keep their meaning)."""
        out: dict[str, float | int | bool | str | None] = {
            name: getattr(self, name) for name in VALUE_FIELDS
        }
        for f in fields(self):
            if f.name not in VALUE_FIELDS:
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
    """Linearly interpolated percentile (numpy's default); None when there are no values."""
    xs = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(xs, p)) if xs.size else None


def summarize(values: Iterable[float], prefix: str) -> dict[str, float | None]:
    xs = list(values)
    return {f"{prefix}_p{p}": percentile(xs, p) for p in (50, 90, 99)}
