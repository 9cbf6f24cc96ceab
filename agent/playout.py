"""Outbound playout buffer (pure): queued reply audio → exact 20 ms frames, without clicks.

- Audio is queued as segments, each tagged with a `mark` (which reply unit it belongs to), so
  the caller can ask how much of each unit was really played (barge-in keeps only heard text).
- A frame is always returned: audio, or silence when idle.
- Starts fade in, and an underrun (the buffer runs dry mid-frame) fades the last real samples
  out, so neither clicks.
- `clear()` stops playback within one frame: the next frame fades out the audio that was
  about to play, then silence.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from agent.audio import OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16, ramp

FADE_SAMPLES = OUT_RATE_HZ * 5 // 1000  # 5 ms


@dataclass
class _Segment:
    pcm: Pcm16
    mark: Hashable
    offset: int = 0

    @property
    def remaining(self) -> int:
        return self.pcm.size - self.offset


@dataclass
class PulledFrame:
    pcm: Pcm16
    audio_samples: int  # how many samples came from queued audio (rest is silence)
    started: list[Hashable] = field(default_factory=list)  # marks whose first sample is here


class PlayoutBuffer:
    def __init__(self, frame_samples: int = OUT_FRAME_SAMPLES) -> None:
        self.frame_samples = frame_samples
        self._segments: collections.deque[_Segment] = collections.deque()
        self._buffered = 0
        self._played: dict[Hashable, int] = {}
        self._was_playing = False
        self.underruns = 0

    @property
    def buffered_samples(self) -> int:
        return self._buffered

    @property
    def idle(self) -> bool:
        return self._buffered == 0

    def push(self, pcm: Pcm16, mark: Hashable) -> None:
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError("push expects 1-D int16 PCM")
        if pcm.size == 0:
            return
        self._segments.append(_Segment(pcm, mark))
        self._buffered += pcm.size

    def played_samples(self, mark: Hashable) -> int:
        return self._played.get(mark, 0)

    def forget(self, mark: Hashable) -> None:
        self._played.pop(mark, None)

    def clear(self) -> int:
        """Drop queued audio; the next frame fades out what was about to play.

        Returns the number of samples dropped.
        """
        head = self._take(min(FADE_SAMPLES, self._buffered), count=True)[0]
        dropped = self._buffered
        self._segments.clear()
        self._buffered = 0
        if head.size:
            self._segments.append(_Segment(ramp(head, rising=False), _FADE_MARK))
            self._buffered = head.size
        self._was_playing = False  # the fade ends on purpose: not an underrun
        return dropped

    def pull(self) -> PulledFrame:
        n = self.frame_samples
        heard_before = set(self._played)
        audio, touched = self._take(min(n, self._buffered), count=True)
        started = [m for m in touched if m not in heard_before and m is not _FADE_MARK]
        k = audio.size
        if k and not self._was_playing and _FADE_MARK not in touched:
            fade = min(FADE_SAMPLES // 2, k)
            audio[:fade] = ramp(audio[:fade], rising=True)
        if 0 < k < n and _FADE_MARK not in touched:
            fade = min(FADE_SAMPLES // 2, k)
            audio[k - fade :] = ramp(audio[k - fade :], rising=False)
            self.underruns += 1
        self._was_playing = k == n
        out = np.zeros(n, np.int16)
        out[:k] = audio
        return PulledFrame(out, k, started)

    def _take(self, n: int, count: bool) -> tuple[Pcm16, list[Hashable]]:
        parts: list[Pcm16] = []
        touched: list[Hashable] = []
        while n > 0 and self._segments:
            seg = self._segments[0]
            take = min(n, seg.remaining)
            parts.append(seg.pcm[seg.offset : seg.offset + take])
            if count and seg.mark is not _FADE_MARK:
                self._played[seg.mark] = self._played.get(seg.mark, 0) + take
            if seg.mark not in touched:
                touched.append(seg.mark)
            seg.offset += take
            self._buffered -= take
            n -= take
            if seg.remaining == 0:
                self._segments.popleft()
        audio = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return audio.astype(np.int16, copy=True), touched


_FADE_MARK: Hashable = object()
