"""Per-turn timing: monotonic timestamps per stage, exported as ms after the end of speech.

All stage times are measured from `speech_end` (end of the user's last voiced frame as the
server received it), so the numbers add up the way a listener experiences them. A reply that
was started speculatively can show `llm_first_token_ms` smaller than `eou_delay_ms`: that is
the overlap speculation buys.

`breakdown()` puts a turn's stage times on one log line (a slow turn logs it once).
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


# The order a slow turn's breakdown lists the stages in: the path to the first audio first.
BREAKDOWN_STAGES = (
    "eou_delay_ms",
    "asr_complete_ms",
    "llm_first_token_ms",
    "tts_first_chunk_ms",
    "time_to_first_audio_ms",
    "llm_complete_ms",
    "tts_complete_ms",
    "total_ms",
)
# Waits inside a turn, (name, from mark, to mark): the LLM's and the TTS's own time to
# respond, then how long the first audio waited to be played (held until the turn was
# committed, behind other audio).
WAITS = (
    ("llm_wait_ms", "llm_started", "llm_first_token"),
    ("tts_wait_ms", "tts_started", "tts_first_chunk"),
    ("playout_wait_ms", "tts_first_chunk", "first_audio_out"),
)

VALUE_FIELDS = (
    "turn",
    "speculative",
    "final_passes",
    "final_passes_wasted",
    "asr_queue_wait_ms",
    "asr_pass_ms",
    "eou_silence_ms",
    "completeness",
    "tool_ms",
    "tts_first_class",
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
    tool_started: float | None = None  # the first tool call of the reply began
    tool_complete: float | None = None  # the last one ended
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
    tool_ms: float | None = None  # time spent running tools in this reply (all rounds)
    # The TTS class of the reply's first unit when its first audio came (priority.py):
    # first_audio (waited on the critical path) or speculative (made in the pause).
    tts_first_class: str | None = None

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

    def voice_to_voice_ms(self) -> float | None:
        """End of speech → first reply audio sent: the server's share of voice-to-voice."""
        return self._rel_ms(self.first_audio_out)

    def breakdown(self) -> str:
        """The stage times on one line, `name=ms` (stages not reached are left out): stage
        ends after the end of speech; then the waits inside the turn, the ASR pool's wait and
        pass, the end-of-turn silence. No words: transcripts stay out of INFO logs."""
        rel = {stage: self._rel_ms(getattr(self, STAGES[stage])) for stage in BREAKDOWN_STAGES}
        stages = [f"{stage}={ms:.0f}" for stage, ms in rel.items() if ms is not None]
        extra = []
        for name, start, end in WAITS:
            t0, t1 = getattr(self, start), getattr(self, end)
            if t0 is not None and t1 is not None:
                extra.append(f"{name}={(t1 - t0) * 1000:.0f}")
        for name in ("asr_queue_wait_ms", "asr_pass_ms", "eou_silence_ms", "tool_ms"):
            value = getattr(self, name)
            if value is not None:
                extra.append(f"{name}={value:.0f}")
        if self.completeness is not None:
            extra.append(f"completeness={self.completeness}")
        if self.tts_first_class is not None:
            extra.append(f"tts_class={self.tts_first_class}")
        extra.append(f"speculative={'yes' if self.speculative else 'no'}")
        return " ".join(stages) + "; " + " ".join(extra)

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
