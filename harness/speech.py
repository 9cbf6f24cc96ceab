"""Utterances for the caller: WAV files of any common rate, or text spoken by the embedded TTS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from agent.audio import OUT_RATE_HZ, Pcm16, Resampler
from agent.engines.tts_pool import TtsPoolConfig, TtsWorkerPool

# The spoken questions of the tests and benchmarks: one list, so their numbers compare.
QUESTIONS = [
    "What time is it?",
    "Good morning.",
    "What day is it today?",
    "What can you do?",
    "What is your name?",
    "Thank you very much.",
    "What is two plus three?",
    "Can you help me?",
    "What is the weather like?",
    "Goodbye.",
]
STORY_REQUEST = "Tell me a story."  # a long reply, to interrupt


@dataclass(frozen=True)
class Utterance:
    label: str  # the text (for --say) or the file name
    pcm48k: Pcm16  # mono int16 at 48 kHz
    text: str | None = None  # the reference words, when known


def load_wav(path: Path) -> Pcm16:
    """Decode any file FFmpeg reads (WAV of any rate/width/channels) to 48 kHz mono int16."""
    resampler = Resampler(OUT_RATE_HZ)
    with av.open(str(path)) as container:
        parts = [resampler.push_frame(frame) for frame in container.decode(audio=0)]
    parts.append(resampler.flush())
    pcm = np.concatenate(parts).astype(np.int16)
    if pcm.size == 0:
        raise ValueError(f"{path}: no audio")
    return pcm


def write_wav(path: Path, pcm: Pcm16, rate_hz: int = OUT_RATE_HZ) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.astype("<i2").tobytes())


@contextlib.asynccontextmanager
async def synthesizer(
    engine: str = "piper", config: TtsPoolConfig | None = None
) -> AsyncIterator[TtsWorkerPool]:
    """A started TTS pool (one `engine` worker unless `config` says otherwise), closed after."""
    pool = TtsWorkerPool(config or TtsPoolConfig(engine=engine, workers=1))
    await pool.start()
    try:
        yield pool
    finally:
        await pool.aclose()


async def synthesize(
    pool: TtsWorkerPool,
    text: str,
    length_scale: float | None = None,
    *,
    deterministic: bool = False,
) -> Pcm16:
    """`text` spoken at 48 kHz; `length_scale` > 1 slower; `deterministic` turns piper's
    generator noise off, so the same text always gives the same samples."""
    noise = 0.0 if deterministic else None
    stream = pool.synthesize(
        text, length_scale=length_scale, noise_scale=noise, noise_w_scale=noise
    )
    parts = [pcm async for pcm in stream]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


async def prepare(
    wavs: Sequence[str], texts: Sequence[str], engine: str = "piper"
) -> list[Utterance]:
    utterances = [Utterance(Path(w).name, load_wav(Path(w))) for w in wavs]
    if texts:
        async with synthesizer(engine) as pool:
            for text in texts:
                utterances.append(Utterance(text, await synthesize(pool, text), text))
    return utterances
