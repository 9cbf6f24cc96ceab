"""Typed configuration of the agent pipeline, built once at the edge (CLI/env) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.patches import OpusSendConfig
from agent.rtp_jitter import JitterConfig
from agent.tts import TtsPoolConfig
from agent.turns import TurnConfig
from agent.vad import EndpointerConfig


@dataclass(frozen=True)
class AgentConfig:
    vad_aggressiveness: int = 2
    endpointer: EndpointerConfig = field(default_factory=EndpointerConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)
    preroll_ms: int = 300  # audio before the detected onset that the ASR still gets
    partial_interval_ms: int = 200
    outbound_max_ahead_ms: int = 300
    asr_engine: str = "pocketsphinx"
    llm_engine: str = "local"  # local | openai
    tts: TtsPoolConfig = field(default_factory=TtsPoolConfig)
    system_prompt: str | None = None
    receive_path: str = "ringback"  # ringback: own jitter buffer + Opus PLC/FEC | aiortc
    jitter: JitterConfig = field(default_factory=JitterConfig)
    opus_send: OpusSendConfig = field(default_factory=OpusSendConfig)

    def __post_init__(self) -> None:
        if self.vad_aggressiveness not in (0, 1, 2, 3):
            raise ValueError("VAD aggressiveness must be 0..3")
        if self.preroll_ms < 0 or self.partial_interval_ms <= 0 or self.outbound_max_ahead_ms < 20:
            raise ValueError("preroll_ms >= 0, partial_interval_ms > 0, outbound_max_ahead_ms >= 20")
        if self.receive_path not in ("ringback", "aiortc"):
            raise ValueError("receive path must be 'ringback' or 'aiortc'")
        if self.tts.workers < 1:
            raise ValueError("need at least one TTS worker")
