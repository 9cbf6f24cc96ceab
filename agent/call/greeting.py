"""The "ready — start talking" moment: a short chime (or a spoken greeting) at the start of a
call, then a `ready` event once it has been handed to the encoder.

Callers that speak on their own (the harness, benchmarks) wait for `ready`, so the greeting
never overlaps their speech nor counts in their voice-to-voice times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.conversation.reply import AudioSink
from agent.engines.interfaces import TTS, EngineError

log = logging.getLogger(__name__)

CHIME = "chime"
NONE = "none"
MARK = ("greeting",)
GREETING_TIMEOUT_S = 10.0  # a TTS that hangs must not keep the caller from talking
# Two soft rising notes (E5 → A5), 110 ms each, −14 dBFS, with 15 ms fades: a "you're on" cue
# that is too short and quiet to sound like the agent speaking.
NOTES_HZ = (659.25, 880.0)
NOTE_S = 0.11
LEVEL = 10 ** (-14 / 20)
FADE_S = 0.015


def chime_pcm() -> Pcm16:
    """The chime as 48 kHz mono int16."""
    n = int(NOTE_S * OUT_RATE_HZ)
    t = np.arange(n) / OUT_RATE_HZ
    fade = int(FADE_S * OUT_RATE_HZ)
    envelope = np.ones(n)
    envelope[:fade] = np.linspace(0.0, 1.0, fade)
    envelope[-fade:] = np.linspace(1.0, 0.0, fade)
    notes = [np.sin(2 * np.pi * f * t) * envelope for f in NOTES_HZ]
    wave = np.concatenate(notes) * LEVEL * 32767
    return wave.astype(np.int16)


async def play_greeting(
    greeting: str, sink: AudioSink, tts: TTS, emit: Callable[[dict[str, Any]], None]
) -> None:
    """Play the greeting (`chime`, `none`, or a text to speak), then emit `ready`."""
    try:
        async with asyncio.timeout(GREETING_TIMEOUT_S):
            if greeting == CHIME:
                await sink.enqueue(chime_pcm(), MARK)
            elif greeting != NONE and greeting.strip():
                await speak(greeting, sink, tts)
            sink.end_stream()
            await sink.wait_drained()
            sink.forget(MARK)
    except (TimeoutError, EngineError) as exc:
        log.warning("greeting not played: %s", exc or type(exc).__name__)
    emit({"type": "ready"})


async def speak(text: str, sink: AudioSink, tts: TTS) -> None:
    """Queue `text`, synthesized, on the sink (tagged with the greeting's mark)."""
    if tts.sample_rate_hz != OUT_RATE_HZ:
        raise EngineError(f"TTS rate {tts.sample_rate_hz} Hz, expected {OUT_RATE_HZ}")
    async with contextlib.aclosing(tts.synthesize(text)) as audio:
        async for pcm in audio:
            await sink.enqueue(pcm, MARK)
