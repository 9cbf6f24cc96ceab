"""A speakerphone without echo cancellation: what the caller hears leaks back into its mic.

`EchoPath` is pure (no I/O, no clock of its own): the caller tells it what it played and
when (`heard`), and asks for what its microphone picks up of that at a later instant
(`leak`): the same audio `delay_ms` later, `gain_db` quieter. `EchoBuffer` is the caller's
mic playout buffer with that leak mixed into every frame it sends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.clock import Clock
from agent.media.playout import PlayoutBuffer, PulledFrame


@dataclass(frozen=True)
class EchoConfig:
    gain_db: float = -15.0  # the leak's level relative to what the caller heard
    delay_ms: float = 60.0  # from the loudspeaker to the microphone

    def __post_init__(self) -> None:
        if self.gain_db > 0 or self.delay_ms < 0:
            raise ValueError("need gain_db <= 0 and delay_ms >= 0")

    @classmethod
    def parse(cls, text: str) -> EchoConfig:
        """ "-6:60" → gain −6 dB, 60 ms late."""
        gain, _, delay = text.partition(":")
        return cls(float(gain), float(delay or 60))


class EchoPath:
    """Audio played at time t reaches the microphone at t + delay, scaled by the gain."""

    def __init__(self, config: EchoConfig, rate_hz: int = OUT_RATE_HZ, history_s: float = 2.0):
        self.config = config
        self.rate_hz = rate_hz
        self._gain = 10 ** (config.gain_db / 20)
        self._delay = round(config.delay_ms * rate_hz / 1000)
        self._ring = np.zeros(round(history_s * rate_hz), np.float32)
        self._end: int | None = None  # absolute sample index just after the newest heard

    def heard(self, t: float, pcm: Pcm16) -> None:
        """The caller's loudspeaker played `pcm` from time `t` on."""
        start = round(t * self.rate_hz)
        size = self._ring.size
        if self._end is not None and start > self._end:  # nothing played in between
            gap = min(start - self._end, size)
            self._write(start - gap, np.zeros(gap, np.float32))
        self._write(start, pcm.astype(np.float32) * self._gain)
        self._end = max(self._end or 0, start + pcm.size)

    def leak(self, t: float, n: int) -> Pcm16:
        """The n samples the microphone picks up from time `t` on."""
        out = np.zeros(n, np.float32)
        if self._end is None:
            return out.astype(np.int16)
        start = round(t * self.rate_hz) - self._delay
        lo = max(start, self._end - self._ring.size)
        hi = min(start + n, self._end)
        if hi > lo:
            idx = np.arange(lo, hi) % self._ring.size
            out[lo - start : hi - start] = self._ring[idx]
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    def _write(self, start: int, samples: npt.NDArray[np.float32]) -> None:
        extra = max(0, samples.size - self._ring.size)  # only the newest fit
        idx = np.arange(start + extra, start + samples.size) % self._ring.size
        self._ring[idx] = samples[extra:]


class EchoBuffer(PlayoutBuffer):
    """The mic's playout buffer, with the echo of what the caller hears added to each frame."""

    def __init__(self, path: EchoPath, clock: Clock) -> None:
        super().__init__()
        self.path = path
        self._clock = clock

    def pull(self) -> PulledFrame:
        frame = super().pull()
        leak = self.path.leak(self._clock.now(), frame.pcm.size)
        mixed = frame.pcm.astype(np.int32) + leak
        frame.pcm = np.clip(mixed, -32768, 32767).astype(np.int16)
        return frame
