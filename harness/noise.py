"""Seeded background noise for the evaluation set, and mixing it under speech at a given SNR.

Pure numpy, 48 kHz mono int16 (`agent.audio.Pcm16`) in and out. Every generator takes a
`numpy.random.Generator`, so a seed reproduces the noise sample for sample. Levels are set by
`mix()`, which measures the speech on its active frames only (the 20 ms frames louder than
`ACTIVE_DBFS` and within `ACTIVE_RANGE_DB` of the loudest one, a simple take on ITU-T P.56),
so leading silence and pauses do not make the speech look quieter than a listener hears it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.audio import OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16

F64 = npt.NDArray[np.float64]

ACTIVE_DBFS = -50.0  # a frame quieter than this is never speech
ACTIVE_RANGE_DB = 35.0  # ... nor one this far below the loudest frame
NOISE_DBFS = -20.0  # RMS of every generator's output before mix() sets the level
HEADROOM = 32_000  # the peak mix() allows before scaling speech and noise down together


def _to_pcm16(x: F64, rms_dbfs: float = NOISE_DBFS) -> Pcm16:
    """Scale to an RMS of `rms_dbfs` and convert (clipping only beyond ~4.4 crest factor)."""
    rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    if rms > 0:
        x = x * (32768.0 * 10 ** (rms_dbfs / 20) / rms)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def _shaped(rng: np.random.Generator, n: int, exponent: float) -> F64:
    """Gaussian noise whose power falls as 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / OUT_RATE_HZ)
    f[0] = f[1] if n > 1 else 1.0
    shaped: F64 = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return shaped


def white(rng: np.random.Generator, n: int) -> Pcm16:
    return _to_pcm16(rng.standard_normal(n))


def pink(rng: np.random.Generator, n: int) -> Pcm16:
    """Pink (1/f) noise: equal power per octave, like rain, traffic or a busy room's hiss."""
    x = _shaped(rng, n, 1.0)
    # Below 20 Hz a recording chain passes nothing; keeping it only wastes the level.
    return _to_pcm16(_highpass(x, 20.0))


def hum(rng: np.random.Generator, n: int, mains_hz: float | None = None) -> Pcm16:
    """A fan or appliance: mains hum (50 or 60 Hz) with decaying harmonics, over broadband
    rumble (brown noise from ~30 Hz, its level wandering slowly like a fan's airflow)."""
    mains = mains_hz if mains_hz is not None else float(rng.choice([50.0, 60.0]))
    t = np.arange(n) / OUT_RATE_HZ
    tone = np.zeros(n)
    for k in range(1, 8):
        amplitude = rng.uniform(0.5, 1.0) / k**1.2
        tone += amplitude * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi))
    rumble = _highpass(_shaped(rng, n, 2.0), 30.0)
    rumble /= max(float(np.sqrt(np.mean(rumble**2))), 1e-12)
    airflow = 1.0 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6.3))
    tone /= max(float(np.sqrt(np.mean(tone**2))), 1e-12)
    return _to_pcm16(tone + 0.8 * rumble * airflow)


def babble(rng: np.random.Generator, n: int, talkers: Sequence[Pcm16]) -> Pcm16:
    """Several voices at once: each talker looped to length `n`, started at a random offset
    and brought to the same active level, then summed."""
    if not talkers:
        raise ValueError("babble needs at least one talker")
    total = np.zeros(n)
    for pcm in talkers:
        x = pcm.astype(np.float64)
        power = active_power(pcm)
        if power <= 0:
            continue
        x = np.tile(x, -(-n // x.size) + 1)
        start = int(rng.integers(0, pcm.size))
        total += x[start : start + n] / np.sqrt(power)
    return _to_pcm16(total)


def _highpass(x: F64, cutoff_hz: float) -> F64:
    """Remove everything below `cutoff_hz` (a brick wall in the frequency domain)."""
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(x.size, 1 / OUT_RATE_HZ) < cutoff_hz] = 0
    out: F64 = np.fft.irfft(spectrum, x.size)
    return out


def active_frames(pcm: Pcm16) -> npt.NDArray[np.bool_]:
    """Which whole 20 ms frames carry speech (see the module docstring)."""
    n = pcm.size // OUT_FRAME_SAMPLES
    frames = pcm[: n * OUT_FRAME_SAMPLES].astype(np.float64).reshape(n, OUT_FRAME_SAMPLES)
    power = np.mean(frames**2, axis=1)
    if not n or power.max() <= 0:
        return np.zeros(n, bool)
    level_db = 10 * np.log10(np.maximum(power, 1e-12) / 32768.0**2)
    active: npt.NDArray[np.bool_] = (level_db > ACTIVE_DBFS) & (
        level_db > level_db.max() - ACTIVE_RANGE_DB
    )
    return active


def active_power(pcm: Pcm16) -> float:
    """Mean square of the active frames (0 when there are none)."""
    active = active_frames(pcm)
    if not active.any():
        return 0.0
    n = active.size
    frames = pcm[: n * OUT_FRAME_SAMPLES].astype(np.float64).reshape(n, OUT_FRAME_SAMPLES)
    return float(np.mean(frames[active] ** 2))


def mix(speech: Pcm16, noise: Pcm16, snr_db: float) -> Pcm16:
    """`speech` with `noise` under it at `snr_db` (speech active power / noise mean power).

    The noise must be at least as long as the speech; the result has the speech's length. If
    the sum would clip, speech and noise are scaled down together, so the SNR stays exact.
    """
    s, v = mix_parts(speech, noise, snr_db)
    return np.rint(s + v).astype(np.int16)


def mix_parts(speech: Pcm16, noise: Pcm16, snr_db: float) -> tuple[F64, F64]:
    """The speech and the noise as `mix()` adds them (after its level and clipping scaling)."""
    if noise.size < speech.size:
        raise ValueError(f"noise ({noise.size} samples) shorter than speech ({speech.size})")
    s = speech.astype(np.float64)
    v = noise[: speech.size].astype(np.float64)
    speech_power = active_power(speech)
    noise_power = float(np.mean(v**2)) if v.size else 0.0
    if speech_power <= 0 or noise_power <= 0:
        raise ValueError("mix() needs audible speech and noise")
    v *= np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10))
    peak = float(np.max(np.abs(s + v)))
    if peak > HEADROOM:
        s *= HEADROOM / peak
        v *= HEADROOM / peak
    return s, v


def snr_db(speech: Pcm16, noise: Pcm16) -> float:
    """The SNR `mix()` aims at, measured from separate speech and noise of equal length."""
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    return 10 * float(np.log10(active_power(speech) / noise_power))
