"""Codec-independent loss concealment on PCM (G.711 loss, TTS underrun) and G.711 decoding.
Pure numpy, no I/O.

`Concealer` is pitch-repetition PLC in the spirit of ITU-T G.711 Appendix I, without its
3.75 ms output delay: the seam into the synthetic signal is smoothed by a fading offset on the
synthetic side instead of by rewriting audio that was already played.

    c = Concealer(8000)
    for frame in stream:                  # one call per frame, good or lost
        if frame is None:
            out = c.conceal(160)          # lost: repeat the last pitch period, fading out
        else:
            out = c.resume(frame)         # good: crossfaded in if a loss came just before
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.audio import Pcm16

F64 = npt.NDArray[np.float64]

# -- G.711 (ITU-T G.711 expansion, as in the reference g711.c) ------------------------------------


def _ulaw_table() -> Pcm16:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    table: Pcm16 = np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)
    return table


def _alaw_table() -> Pcm16:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    table: Pcm16 = np.where(a & 0x80, t, -t).astype(np.int16)
    return table


ULAW_TABLE = _ulaw_table()
ALAW_TABLE = _alaw_table()


def ulaw_decode(payload: bytes) -> Pcm16:
    """G.711 µ-law (PCMU) bytes → int16 samples, one per byte."""
    out: Pcm16 = ULAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]
    return out


def alaw_decode(payload: bytes) -> Pcm16:
    """G.711 A-law (PCMA) bytes → int16 samples, one per byte."""
    out: Pcm16 = ALAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]
    return out


# -- concealment --------------------------------------------------------------------------------


def _to_pcm16(x: F64) -> Pcm16:
    out: Pcm16 = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return out


class Concealer:
    """Fills gaps in one mono PCM stream by repeating its last pitch period.

    - `observe(frame)` records good audio (history of ~40 ms) and ends any concealment.
    - `conceal(n)` returns n samples of replacement audio. On the first lost frame the pitch
      period is estimated by normalised autocorrelation of the first difference over 2.5–16 ms
      lags (weakly periodic
      audio falls back to repeating the last 10 ms); one period, its end blended into the
      period before it so the loop has no seam, is then repeated, continuing across calls.
      At the start an offset (last real sample − the one before the loop) fades out over ¼
      period, so the seam is continuous in value and slope and exact for periodic audio.
      Level: full for `hold_ms`, then falling `decay_db_per_10ms`, reaching silence at
      `mute_after_ms` (a linear taper over its last 10 ms).
    - `resume(frame)` is `observe` plus, right after a concealment, a `resume_ms` cross-fade
      from the still-running synthetic signal into the real frame, so the return has no click.
    """

    MIN_PITCH_MS = 2.5
    MAX_PITCH_MS = 16.0
    FALLBACK_MS = 10.0
    CORR_WINDOW_MS = 16.0
    HISTORY_MS = 40.0
    VOICED_CORR = 0.5  # below this normalised correlation the audio is treated as aperiodic
    OCTAVE_SLACK = 0.9  # take the shortest-lag peak within this fraction of the best one

    def __init__(
        self,
        sample_rate_hz: int,
        hold_ms: float = 20.0,
        decay_db_per_10ms: float = 3.0,
        mute_after_ms: float = 60.0,
        resume_ms: float = 2.5,
    ) -> None:
        if sample_rate_hz <= 0:
            raise ValueError("sample_rate_hz must be positive")
        self.sample_rate_hz = sample_rate_hz
        ms = sample_rate_hz / 1000.0
        self._min_lag = max(2, round(self.MIN_PITCH_MS * ms))
        self._max_lag = max(self._min_lag + 1, round(self.MAX_PITCH_MS * ms))
        self._fallback = max(self._min_lag, round(self.FALLBACK_MS * ms))
        self._window = max(self._min_lag, round(self.CORR_WINDOW_MS * ms))
        # need: window + max lag for the correlation, and 2 periods for the looped period
        hist = max(
            round(self.HISTORY_MS * ms), self._window + self._max_lag + 1, 2 * self._max_lag + 1
        )
        self._history = np.zeros(hist, np.float64)
        self._hold = round(hold_ms * ms)
        self._decay_per_sample = float(10.0 ** (-decay_db_per_10ms / 20.0 / (10.0 * ms)))
        self._mute = round(mute_after_ms * ms)
        self._taper = min(round(10.0 * ms), max(self._mute - self._hold, 1))
        self._resume_len = max(1, round(resume_ms * ms))
        self._period: F64 = np.zeros(0)
        self._phase = 0  # next index into _period
        self._lost = 0  # samples concealed since the last good audio
        self._seam_len = 0  # first-frame offset fade (samples)
        self._seam_offset = 0.0
        self.pitch_samples = 0  # period used by the current / last concealment
        self.concealed_frames = 0  # consecutive conceal() calls
        self.total_concealed_frames = 0

    @property
    def concealing(self) -> bool:
        return self._lost > 0

    # -- good audio ---------------------------------------------------------------------------

    def observe(self, frame: Pcm16) -> None:
        """Remember good audio; ends a concealment (without a cross-fade: see `resume`)."""
        self._push(frame.astype(np.float64))
        self._lost = 0
        self.concealed_frames = 0

    def _push(self, x: F64) -> None:
        h = self._history
        if x.size >= h.size:
            self._history = x[-h.size :].copy()
        else:
            self._history = np.concatenate([h[x.size :], x])

    def resume(self, frame: Pcm16) -> Pcm16:
        """A good frame, cross-faded in if it ends a concealment; returns what to play."""
        if not self.concealing or frame.size == 0:
            self.observe(frame)
            return frame
        n = min(self._resume_len, frame.size)
        synth = self._synthesize(n)  # the concealment as it would have continued
        w = (np.arange(1, n + 1) / (n + 1)).astype(np.float64)
        real = frame.astype(np.float64)
        real[:n] = w * real[:n] + (1.0 - w) * synth
        out = _to_pcm16(real)
        self.observe(out)
        return out

    # -- lost audio ---------------------------------------------------------------------------

    def conceal(self, n: int) -> Pcm16:
        """`n` samples to play in place of lost audio."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if not self.concealing:
            self._start()
        self.concealed_frames += 1
        self.total_concealed_frames += 1
        out = _to_pcm16(self._synthesize(n))
        return out

    def _start(self) -> None:
        """First lost frame: pick the period and build the loop and the seam."""
        h = self._history
        p = self.pitch_samples = self._estimate_pitch()
        period = h[-p:].copy()
        # Blend the loop's last quarter into the period before it, so period[-1] flows into
        # period[0] the way h[-p-1] flowed into h[-p].
        q = max(1, p // 4)
        w = np.arange(1, q + 1) / q
        period[-q:] = (1.0 - w) * h[-q:] + w * h[-p - q : -p]
        # Value continuity into the loop without delaying output: the loop starts at h[-p], which
        # followed h[-p-1]; offset it by h[-1] - h[-p-1] (zero for a periodic signal), fading
        # that offset out over the first quarter period.
        self._seam_len = q
        self._seam_offset = float(h[-1] - h[-p - 1])
        self._period = period
        self._phase = 0

    def _estimate_pitch(self) -> int:
        # on the first difference: drift and DC (a slow trend under the voice) would otherwise
        # bias the correlation towards arbitrary lags
        h = np.diff(self._history)
        win, lo, hi = self._window, self._min_lag, self._max_lag
        target = h[-win:]
        span = h[-(win + hi) :]
        e_target = float(np.dot(target, target))
        if e_target <= 0.0:
            return self._fallback
        # corr[k] = <span[k:k+win], target>, lag = hi - k
        corr = np.correlate(span, target, mode="valid")[::-1]  # index = lag
        sq = np.concatenate([[0.0], np.cumsum(span**2)])
        lags = np.arange(lo, hi + 1)
        starts = hi - lags
        energy = sq[starts + win] - sq[starts]
        norm = corr[lags] / np.sqrt(np.maximum(energy * e_target, 1e-9))
        best = float(norm.max())
        if best < self.VOICED_CORR:
            return self._fallback
        # the shortest local peak nearly as good as the best one (not 2× or 3× the period)
        inner = norm[1:-1]
        peaks = (
            np.flatnonzero(
                (inner >= norm[:-2]) & (inner >= norm[2:]) & (inner >= self.OCTAVE_SLACK * best)
            )
            + 1
        )
        return int(lags[peaks[0]] if peaks.size else lags[np.argmax(norm)])

    def _synthesize(self, n: int) -> F64:
        """Next n samples of the faded, looped period (advances the concealment clock)."""
        out = np.zeros(n, np.float64)
        if n == 0:
            return out
        p = self._period.size
        if p:
            idx = (self._phase + np.arange(n)) % p
            out = self._period[idx]
            self._phase = int((self._phase + n) % p)
        t = self._lost + np.arange(n)
        if self._lost < self._seam_len:
            out = out + self._seam_offset * np.clip((self._seam_len - t) / self._seam_len, 0.0, 1.0)
        out = out * self._gain(t)
        self._lost += n
        return out

    def _gain(self, t: npt.NDArray[np.int64]) -> F64:
        after_hold = np.maximum(t - self._hold, 0).astype(np.float64)
        g = self._decay_per_sample**after_hold
        taper = np.clip((self._mute - t) / self._taper, 0.0, 1.0)
        gain: F64 = g * taper
        return gain
