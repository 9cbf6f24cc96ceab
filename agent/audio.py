"""PCM types, rates and helpers: downmix, resampling, levels and fades. No I/O.

A leaf module (no project imports): engines, the media path and the harness all use it.
Two resamplers, each for its job: `Decimator` (numpy, exact 20 ms frames, no threads) on the
receive path's hot 48 → 16 kHz step, and `Resampler` (libswresample through PyAV) for any
other rate and layout (TTS output, WAV files).
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

Pcm16 = npt.NDArray[np.int16]

OUT_RATE_HZ = 48_000
FRAME_MS = 20
OUT_FRAME_SAMPLES = OUT_RATE_HZ * FRAME_MS // 1000  # 960
ASR_RATE_HZ = 16_000
SILENCE_DBFS = -40.0


def to_mono(interleaved: Pcm16, channels: int) -> Pcm16:
    """Average interleaved channels into one (int16 in, int16 out)."""
    if channels == 1:
        return interleaved
    frames = interleaved.reshape(-1, channels).astype(np.int32)
    mono: Pcm16 = (frames.sum(axis=1) // channels).astype(np.int16)
    return mono


def dbfs(pcm: Pcm16) -> float:
    """RMS level in dB relative to full scale; -inf for digital silence."""
    if pcm.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    return 20.0 * float(np.log10(rms / 32768.0)) if rms > 0 else float("-inf")


def peak_dbfs(pcm: Pcm16) -> float:
    if pcm.size == 0:
        return float("-inf")
    peak = int(np.max(np.abs(pcm.astype(np.int32))))
    return 20.0 * float(np.log10(peak / 32768.0)) if peak > 0 else float("-inf")


def ramp(pcm: Pcm16, rising: bool) -> Pcm16:
    """Linear fade over the whole array (rising = fade-in)."""
    n = pcm.size
    if n == 0:
        return pcm
    gain = np.linspace(0.0, 1.0, n, endpoint=False) if rising else np.linspace(1.0, 0.0, n)
    return (pcm.astype(np.float32) * gain).astype(np.int16)


def _lowpass_taps(cutoff: float, taps: int) -> npt.NDArray[np.float32]:
    """Windowed-sinc low-pass; cutoff as a fraction of the input sample rate."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    taps_f32: npt.NDArray[np.float32] = (h / h.sum()).astype(np.float32)
    return taps_f32


class Decimator:
    """Streaming integer-factor decimator (e.g. 48 kHz → 16 kHz with factor 3).

    Keeps filter history and phase between calls, so any chunk size works and the output
    is identical to decimating the whole signal at once. Group delay: (taps-1)/2 input samples
    (~0.65 ms at 48 kHz with the defaults).
    """

    def __init__(self, factor: int, taps: int = 63) -> None:
        if factor < 1:
            raise ValueError("factor must be >= 1")
        self.factor = factor
        self._h = _lowpass_taps(0.45 / factor, taps) if factor > 1 else np.ones(1, np.float32)
        self._hist = np.zeros(len(self._h) - 1, np.float32)
        self._phase = 0

    def process(self, pcm: Pcm16) -> Pcm16:
        if self.factor == 1 or pcm.size == 0:
            return pcm
        x = np.concatenate([self._hist, pcm.astype(np.float32)])
        y = np.convolve(x, self._h, mode="valid")
        self._hist = x[len(x) - (len(self._h) - 1) :]
        out = y[self._phase :: self.factor]
        self._phase = (self._phase - len(y)) % self.factor
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class Resampler:
    """Streaming resampler to mono int16 at `out_rate_hz` from any rate and channel layout."""

    def __init__(self, out_rate_hz: int = OUT_RATE_HZ) -> None:
        self._r = av.AudioResampler(format="s16", layout="mono", rate=out_rate_hz)
        self._pts = 0

    def push_frame(self, frame: av.AudioFrame | None) -> Pcm16:
        """A decoded PyAV frame (None flushes what the filter still holds)."""
        parts = [f.to_ndarray().reshape(-1) for f in self._r.resample(frame)]
        return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)

    def push(self, pcm: Pcm16, rate_hz: int) -> Pcm16:
        """Mono int16 at `rate_hz`, any chunk size; the rate must not change within a stream."""
        if pcm.size == 0:
            return np.zeros(0, np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate_hz
        frame.pts = self._pts
        self._pts += pcm.size
        return self.push_frame(frame)

    def flush(self) -> Pcm16:
        return self.push_frame(None)


def upsample_linear(pcm: Pcm16, factor: int) -> Pcm16:
    """Cheap integer upsampling for narrowband codecs (8 kHz G.711 → 16 kHz)."""
    if factor == 1 or pcm.size == 0:
        return pcm
    x = np.arange(pcm.size * factor) / factor
    return np.interp(x, np.arange(pcm.size), pcm.astype(np.float32)).astype(np.int16)


def frames(pcm: Pcm16, size: int) -> list[Pcm16]:
    """Slice into whole frames of `size` samples (a trailing remainder is dropped)."""
    return [pcm[i : i + size] for i in range(0, pcm.size - size + 1, size)]
