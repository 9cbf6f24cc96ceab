"""Typed configuration of the agent pipeline, built once at the edge (CLI/env) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.conversation.breaker import BreakerConfig
from agent.conversation.endpointer import EndpointerConfig
from agent.conversation.listener import ListenerConfig
from agent.conversation.speech_detector import SpeechDetectorConfig
from agent.conversation.turns import TurnConfig
from agent.engines.pocketsphinx_asr import AsrPoolConfig
from agent.engines.tts_pool import TtsPoolConfig
from agent.engines.whisper_pool import WhisperConfig
from agent.media.opus import OpusSendConfig
from agent.media.rtp_jitter import JitterConfig

ASR_MODES = ("hybrid", "pocketsphinx")


@dataclass(frozen=True)
class AgentConfig:
    speech: SpeechDetectorConfig = field(default_factory=SpeechDetectorConfig)
    endpointer: EndpointerConfig = field(default_factory=EndpointerConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    outbound_max_ahead_ms: int = 300
    asr: str = "hybrid"  # hybrid: pocketsphinx partials + whisper final | pocketsphinx
    asr_pool: AsrPoolConfig = field(default_factory=AsrPoolConfig)  # pocketsphinx processes
    whisper: WhisperConfig = field(default_factory=WhisperConfig)
    llm_engine: str = "local"  # local | openai
    llm_fallback: str | None = None  # "local" or an OpenAI-compatible base URL (…/v1)
    llm_fallback_model: str | None = None  # model at the fallback URL (default: the primary's)
    llm_breaker: BreakerConfig = field(default_factory=BreakerConfig)
    tts: TtsPoolConfig = field(default_factory=TtsPoolConfig)
    system_prompt: str | None = None
    agent_spec: str | None = None  # --agent: file.py[:name] or package.module[:name]
    receive_path: str = "ringback"  # ringback: own jitter buffer + Opus PLC/FEC | aiortc
    jitter: JitterConfig = field(default_factory=JitterConfig)
    opus_send: OpusSendConfig = field(default_factory=OpusSendConfig)
    greeting: str = "chime"  # at the start of a call: chime | none | a text the agent says
    log_transcripts: bool = False  # what the user said, at INFO (else DEBUG only)

    def __post_init__(self) -> None:
        if self.asr not in ASR_MODES:
            raise ValueError(f"ASR must be one of {', '.join(ASR_MODES)}")
        if self.outbound_max_ahead_ms < 20:
            raise ValueError("outbound_max_ahead_ms must be >= 20")
        if self.receive_path not in ("ringback", "aiortc"):
            raise ValueError("receive path must be 'ringback' or 'aiortc'")
        if self.tts.workers < 1:
            raise ValueError("need at least one TTS worker")
