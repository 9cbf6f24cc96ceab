"""Is this inbound frame the agent's own voice coming back? A reference-based echo check (pure).

A caller on a speakerphone without echo cancellation sends the agent's voice back to it, a
little later and quieter. The agent knows exactly what it sent, so it need not guess from the
sound alone: `EchoGuard` keeps the recently sent audio (`sent`, at 16 kHz, on the clock of the
outbound track) and, for each inbound 16 kHz frame, looks for it in that reference at every lag
from 0 to `max_lag_ms` (the whole round trip: the caller's jitter buffer, its loudspeaker-to-mic
delay, the way back and our jitter buffer). The measure is the normalized cross-correlation of
the last `window_ms` of inbound audio against each lagged stretch of the reference: a frame the
reference explains (correlation >= `min_correlation`: at most 1 − c² of its energy is left once
the best-scaled echo is taken out) is echo, not the user. When the user talks over the agent,
their voice is not in the reference: the correlation drops with the share of their energy
(a user 6 dB louder than the echo leaves ~0.45), so a barge-in is still heard.

Two codecs (Opus there and back) and the caller's playout change the waveform; offline, on
piper speech through both, echo alone correlates at 0.8-0.99 and the user over a −6 dB echo at
< 0.5, but in a live call (concealed and stretched frames, a loaded CPU) echo frames often
correlate at only 0.4-0.6. So, once the echo's level is known (`echo_gain`, from strong
matches at the known lag), a frame no louder than the echo the reference predicts plus
`echo_margin_db` is echo too: the user talking adds their whole voice on top.

The echo path's delay is stable: a frame is echo only at a lag the path has shown
(`locked_lag`: set by one match >= `lock_correlation`, or two frames in a row matching at the
same lag), and once it is known the search keeps to the lags around it. A real echo keeps
matching there; the user's voiced speech, which over thousands of lags can resemble some
stretch of the agent's by chance, does not. Until the path is known every loud frame is
compared (the greeting's echo teaches it), but only a voiced one can be judged echo.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.audio import ASR_RATE_HZ, OUT_RATE_HZ, Decimator, Pcm16

log = logging.getLogger(__name__)

FRAME_SAMPLES = ASR_RATE_HZ // 50  # 20 ms at 16 kHz
# Below this (dBFS) the agent sent nothing that could come back audibly; a quiet inbound frame
# is no one talking.
QUIET_DBFS = -50.0


@dataclass(frozen=True)
class EchoConfig:
    max_lag_ms: int = 700  # the longest round trip an echo may take
    window_ms: int = 40  # inbound audio compared at once (the newest frame and the one before)
    min_correlation: float = 0.6
    lock_correlation: float = 0.85  # a match this strong fixes the echo path's lag
    lock_tolerance_ms: float = 4.0  # once fixed, only lags this close count
    # Once the echo's level is known: a frame at most this much louder than the echo the
    # reference predicts is echo even where the codecs blurred the waveform too much to
    # correlate (the user talking adds their whole voice on top).
    echo_margin_db: float = 4.5

    def __post_init__(self) -> None:
        if self.max_lag_ms < 20 or self.window_ms < 20 or self.window_ms % 20:
            raise ValueError("need max_lag_ms >= 20 and window_ms a multiple of 20")
        if not 0 < self.min_correlation < 1:
            raise ValueError("min_correlation must be within (0, 1)")


@dataclass(frozen=True)
class EchoVerdict:
    echo: bool
    correlation: float  # the best over the lags searched (0 when nothing was compared)
    lag_ms: float | None  # where the reference matched best


class EchoGuard:
    """One call's echo check. `sent` every outbound frame, `check` every inbound frame."""

    def __init__(self, config: EchoConfig | None = None) -> None:
        self.config = config or EchoConfig()
        cfg = self.config
        self._window = cfg.window_ms * ASR_RATE_HZ // 1000
        self._max_lag = cfg.max_lag_ms * ASR_RATE_HZ // 1000
        keep = self._max_lag + self._window + 2 * FRAME_SAMPLES
        self._ref = np.zeros(keep, np.float32)  # the newest `keep` samples sent, oldest first
        self._ref_end_t: float | None = None  # clock time just after the newest sample sent
        self._decimator = Decimator(OUT_RATE_HZ // ASR_RATE_HZ)
        self._window_frames = cfg.window_ms // 20
        self._inbound: collections.deque[Pcm16] = collections.deque(maxlen=self._window_frames)
        self._tolerance = round(cfg.lock_tolerance_ms * ASR_RATE_HZ / 1000)
        self.locked_lag: int | None = None  # samples; the echo path's round trip, once known
        self._last_lag: int | None = None  # the previous compared frame's match, if a good one
        self.echo_gain: float | None = None  # echo power / sent power, from strong matches
        self.echo_frames = 0
        self.checked_frames = 0

    def sent(self, t: float, pcm48: Pcm16) -> None:
        """The outbound track sent `pcm48` (48 kHz mono) starting at clock time `t`."""
        pcm = self._decimator.process(pcm48).astype(np.float32)
        if self._ref_end_t is not None:
            # Slots the track skipped (it fell behind) sent nothing: keep the timeline true.
            gap = round((t - self._ref_end_t) * ASR_RATE_HZ)
            if gap > FRAME_SAMPLES // 2:
                pcm = np.concatenate([np.zeros(min(gap, self._ref.size), np.float32), pcm])
        n = min(pcm.size, self._ref.size)
        self._ref = np.roll(self._ref, -n)
        self._ref[-n:] = pcm[-n:]
        self._ref_end_t = t + pcm48.size / OUT_RATE_HZ

    def check(self, t: float, frame: Pcm16, voiced: bool = True) -> EchoVerdict:
        """Is the inbound 16 kHz frame captured at clock time `t` (its start) echo? Every
        frame is given; only a `voiced` one is compared (the others cost nothing)."""
        self._inbound.append(frame)
        # Until the echo path is known, every frame may teach it (the greeting's echo, say),
        # but only a voiced one can be judged echo.
        learning = self.locked_lag is None or self.echo_gain is None
        full = len(self._inbound) == self._window_frames
        if not (voiced or learning) or self._ref_end_t is None or not full:
            return EchoVerdict(False, 0.0, None)
        x = np.concatenate(list(self._inbound)).astype(np.float32)
        x_energy = float(np.dot(x, x))
        if x_energy <= _energy_floor(x.size):
            return EchoVerdict(False, 0.0, None)
        # The reference stretch whose lag-0 alignment ends where this frame ends.
        end_t = t + FRAME_SAMPLES / ASR_RATE_HZ
        ahead = round((self._ref_end_t - end_t) * ASR_RATE_HZ)  # sent after this frame's end
        stop = self._ref.size - max(0, ahead)
        start = stop - self._max_lag - x.size
        if stop <= x.size or start < 0:
            start = max(0, start)
            if stop - start < x.size:
                return EchoVerdict(False, 0.0, None)
        ref = self._ref[start:stop]
        if float(np.max(np.abs(ref))) <= _peak_floor():
            return EchoVerdict(False, 0.0, None)
        if voiced:
            self.checked_frames += 1
        ncc, ref_energy = _normalized_xcorr(x, ref, x_energy)
        top = ref.size - x.size  # index of lag 0; index i is lag top - i
        best = int(np.argmax(ncc))
        found = top - best
        # Two frames in a row matching at the same lag, or one strong match: that is the
        # echo path (the user's voice resembles the agent's, if at all, at random lags).
        steady = (
            self._last_lag is not None
            and abs(found - self._last_lag) <= self._tolerance
            and ncc[best] >= self.config.min_correlation
        )
        self._last_lag = found if ncc[best] >= self.config.min_correlation else None
        confirmed = self.locked_lag is not None and abs(found - self.locked_lag) <= self._tolerance
        if ncc[best] >= self.config.lock_correlation or steady:
            self.locked_lag = found
        # The echo's level, only from strong matches where the path already was: one chance
        # match of the user's voice must not make everything they say look like echo.
        if confirmed and ncc[best] >= self.config.lock_correlation and ref_energy[best] > 0:
            gain = x_energy * float(ncc[best]) ** 2 / float(ref_energy[best])
            self.echo_gain = gain if self.echo_gain is None else 0.8 * self.echo_gain + 0.2 * gain
        if self.locked_lag is not None:
            # Over thousands of lags, the user's voiced speech can resemble some stretch of
            # the agent's by chance; at the echo path's own lag it does not.
            lo = max(0, top - self.locked_lag - self._tolerance)
            hi = min(ncc.size, top - self.locked_lag + self._tolerance + 1)
            if lo < hi:
                best = lo + int(np.argmax(ncc[lo:hi]))
        corr = float(ncc[best])
        lag_samples = top - best
        locked = self.locked_lag is not None
        echo = locked and corr >= self.config.min_correlation
        if locked and not echo and self.echo_gain is not None:
            predicted = self.echo_gain * float(ref_energy[best])
            echo = x_energy <= predicted * 10 ** (self.config.echo_margin_db / 10)
        echo = echo and voiced
        log.debug("echo check: corr %.2f at %.0f ms, echo %s", corr, lag_samples / 16, echo)
        if echo:
            self.echo_frames += 1
        return EchoVerdict(echo, corr, lag_samples * 1000 / ASR_RATE_HZ)


def _energy_floor(n: int) -> float:
    rms = 32768 * 10 ** (QUIET_DBFS / 20)
    return n * rms * rms


def _peak_floor() -> float:
    return 32768 * 10 ** (QUIET_DBFS / 20)


def _normalized_xcorr(
    x: npt.NDArray[np.float32], ref: npt.NDArray[np.float32], x_energy: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """NCC of `x` against every same-length stretch of `ref` (valid positions, in order), and
    each stretch's energy."""
    n, m = x.size, ref.size
    size = 1 << math.ceil(math.log2(n + m))
    spec = np.fft.rfft(ref, size) * np.conj(np.fft.rfft(x, size))
    num = np.fft.irfft(spec, size)[: m - n + 1]
    sq = np.concatenate([[0.0], np.cumsum(ref.astype(np.float64) ** 2)])
    ref_energy = sq[n:] - sq[: m - n + 1]
    # A near-silent stretch of reference explains nothing, however well it correlates.
    denom = np.sqrt(np.maximum(ref_energy, _energy_floor(n)) * x_energy)
    out: npt.NDArray[np.float64] = num / denom
    return out, ref_energy
