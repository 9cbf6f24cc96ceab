"""Typed configuration of the agent pipeline, built once at the edge (CLI/env) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.conversation.endpointer import EndpointerConfig
from agent.conversation.listener import ListenerConfig
from agent.conversation.turns import TurnConfig
from agent.engines.tts_pool import TtsPoolConfig
from agent.media.opus import OpusSendConfig
from agent.media.rtp_jitter import JitterConfig


@dataclass(frozen=True)
class AgentConfig:
    vad_aggressiveness: int = 2
    endpointer: EndpointerConfig = field(default_factory=EndpointerConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
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
        if self.outbound_max_ahead_ms < 20:
            raise ValueError("outbound_max_ahead_ms must be >= 20")
        if self.receive_path not in ("ringback", "aiortc"):
            raise ValueError("receive path must be 'ringback' or 'aiortc'")
        if self.tts.workers < 1:
            raise ValueError("need at least one TTS worker")
