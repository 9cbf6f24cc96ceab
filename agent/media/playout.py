"""Outbound playout buffer (pure): queued reply audio → exact 20 ms frames, without clicks.

- Audio is queued as segments, each tagged with a `mark` (which reply unit it belongs to), so
  the caller can ask how much of each unit was really played (barge-in keeps only heard text).
- A frame is always returned: audio, or silence when idle.
- Starts fade in and ends fade out, so neither clicks. While a reply is still streaming
  (between the first `push` and `end_stream()`), a dry buffer is a TTS underrun: the sound is
  continued by pitch-period concealment (fading to silence within 60 ms) and the real audio
  is cross-faded back in when it arrives.
- `clear()` stops playback within one frame: the next frame fades out the audio that was
  about to play, then silence.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from agent.audio import OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16, ramp
from agent.media.concealment import Concealer

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
        self._open = False  # a reply is streaming into the buffer
        self._concealer = Concealer(OUT_RATE_HZ)
        self.underruns = 0  # the buffer ran dry while a reply was still streaming
        self.concealed_frames = 0

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
        self._open = True

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
        self._open = False
        self._concealer.observe(np.zeros(0, np.int16))  # a barge-in is never concealed
        return dropped

    def pull(self) -> PulledFrame:
        n = self.frame_samples
        heard_before = set(self._played)
        audio, touched = self._take(min(n, self._buffered), count=True)
        started = [m for m in touched if m not in heard_before and m is not _FADE_MARK]
        k = audio.size
        fading = _FADE_MARK in touched
        out = np.zeros(n, np.int16)
        if k and self._concealer.concealing:
            audio = self._concealer.resume(audio)  # cross-fade out of the concealment
        elif k and not self._was_playing and not fading:
            fade = min(FADE_SAMPLES // 2, k)
            audio[:fade] = ramp(audio[:fade], rising=True)
        elif k:
            self._concealer.observe(audio)
        if k < n and self._open and (k or self._was_playing or self._concealer.concealing):
            # The reply is still streaming but its audio is late: continue the sound
            # (pitch-period repetition, fading to silence) instead of a hard gap.
            out[k:] = self._concealer.conceal(n - k)
            self.concealed_frames += 1
            self.underruns += 1
        elif 0 < k < n and not fading:
            fade = min(FADE_SAMPLES // 2, k)
            audio[k - fade :] = ramp(audio[k - fade :], rising=False)
        self._was_playing = k == n
        out[:k] = audio
        return PulledFrame(out, k, started)

    def end_stream(self) -> None:
        """No more audio is coming for now: a dry buffer is the end, not an underrun."""
        self._open = False

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
