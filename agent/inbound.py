"""aiortc remote audio track → 20 ms frames of 16 kHz mono int16, with their arrival time.

The track is always drained (aiortc's per-track queue is unbounded). 48 kHz input (Opus) is
downmixed and decimated by 3; 8 kHz G.711 is upsampled by 2; other rates are rejected.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.audio import ASR_RATE_HZ, Decimator, Pcm16, to_mono, upsample_linear
from agent.clock import Clock

log = logging.getLogger(__name__)

FRAME_SAMPLES_16K = ASR_RATE_HZ // 50  # 20 ms


@dataclass(frozen=True)
class InboundFrame:
    pcm16: Pcm16  # 320 samples, 16 kHz mono
    t: float  # clock time the frame was received


class To16kMono:
    """Stateful converter for one stream; rate fixed by the first frame."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        if sample_rate_hz % ASR_RATE_HZ == 0:
            self._decimator: Decimator | None = Decimator(sample_rate_hz // ASR_RATE_HZ)
            self._up = 1
        elif ASR_RATE_HZ % sample_rate_hz == 0:
            self._decimator = None
            self._up = ASR_RATE_HZ // sample_rate_hz
        else:
            raise ValueError(f"unsupported inbound sample rate {sample_rate_hz} Hz")
        self._pending = np.zeros(0, np.int16)

    def push(self, interleaved: Pcm16, channels: int) -> list[Pcm16]:
        mono = to_mono(interleaved, channels)
        pcm = self._decimator.process(mono) if self._decimator else upsample_linear(mono, self._up)
        self._pending = np.concatenate([self._pending, pcm])
        n = self._pending.size // FRAME_SAMPLES_16K
        out = [self._pending[i * FRAME_SAMPLES_16K : (i + 1) * FRAME_SAMPLES_16K] for i in range(n)]
        self._pending = self._pending[n * FRAME_SAMPLES_16K :]
        return out


async def inbound_frames(
    track: MediaStreamTrack, clock: Clock
) -> AsyncGenerator[InboundFrame, None]:
    """Yield 16 kHz mono 20 ms frames until the track ends."""
    converter: To16kMono | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        t = clock.now()
        if not isinstance(frame, av.AudioFrame):
            raise TypeError(f"expected audio frames, got {type(frame).__name__}")
        if converter is None or converter.sample_rate_hz != frame.sample_rate:
            converter = To16kMono(frame.sample_rate)
        channels = len(frame.layout.channels)
        samples = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
        for pcm in converter.push(samples, channels):
            yield InboundFrame(pcm, t)
