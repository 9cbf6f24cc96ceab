"""agent.media.concealment: G.711 expansion tables and the pitch-repetition Concealer."""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import Pcm16
from agent.media.concealment import ALAW_TABLE, ULAW_TABLE, Concealer, alaw_decode, ulaw_decode

# -- G.711 ------------------------------------------------------------------------------------


def test_ulaw_known_values() -> None:
    assert ulaw_decode(b"\xff\x7f\x00\x80").tolist() == [0, 0, -32124, 32124]
    assert ulaw_decode(b"\xfe\x7e\xf0").tolist() == [8, -8, 120]
    assert ulaw_decode(b"").size == 0 and ulaw_decode(b"\x00").dtype == np.int16


def test_alaw_known_values() -> None:
    assert alaw_decode(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]
    assert alaw_decode(b"\xd4\x54").tolist() == [24, -24]


def test_g711_tables_are_symmetric_and_monotonic() -> None:
    u, a = ULAW_TABLE.astype(np.int32), ALAW_TABLE.astype(np.int32)
    codes = np.arange(256)
    assert np.array_equal(u, -u[codes ^ 0x80])  # sign bit
    assert np.array_equal(a, -a[codes ^ 0x80])
    # µ-law codes are magnitude-inverted: 0x80 (largest) … 0xFF (zero)
    assert np.all(np.diff(u[0x80:]) < 0)
    # A-law with the even bits un-inverted is monotonic in magnitude
    assert np.all(np.diff(a[np.arange(0x80, 0x100) ^ 0x55]) > 0)


def test_g711_matches_audioop_when_present() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # stdlib until Python 3.13
    every = bytes(range(256))
    assert np.array_equal(ulaw_decode(every), np.frombuffer(audioop.ulaw2lin(every, 2), np.int16))
    assert np.array_equal(alaw_decode(every), np.frombuffer(audioop.alaw2lin(every, 2), np.int16))


# -- Concealer --------------------------------------------------------------------------------


def tone(sr: int, hz: float, seconds: float = 0.5, amp: float = 8000.0) -> Pcm16:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def rms(x: npt.NDArray[np.generic]) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def snr_db(ref: Pcm16, test: Pcm16) -> float:
    r, t = ref.astype(np.float64), test.astype(np.float64)
    return float(10 * np.log10(np.sum(r**2) / max(np.sum((r - t) ** 2), 1e-9)))


def max_step(x: npt.NDArray[np.integer]) -> int:
    return int(np.max(np.abs(np.diff(x.astype(np.int32)))))


def feed(c: Concealer, x: Pcm16, frames: int, size: int) -> None:
    for i in range(frames):
        c.observe(x[i * size : (i + 1) * size])


@pytest.mark.parametrize("sr", [8000, 16000, 48000])
def test_continues_a_200hz_tone(sr: int) -> None:
    fs = sr // 50
    x = tone(sr, 200.0)
    c = Concealer(sr)
    feed(c, x, 10, fs)
    out = c.conceal(fs)
    assert c.pitch_samples == sr // 200
    assert snr_db(x[10 * fs : 11 * fs], out) > 30.0
    # the seam into the concealment is as smooth as the tone itself
    assert max_step(np.concatenate([x[: 10 * fs], out])) <= max_step(x) + 2


def test_continues_a_non_integer_period_voice() -> None:
    sr, fs = 8000, 160
    t = np.arange(sr // 2) / sr
    harmonics = sum(3000 / k * np.sin(2 * np.pi * 130 * k * t + k) for k in range(1, 8))
    x = np.asarray(harmonics).astype(np.int16)  # period 61.5 samples
    c = Concealer(sr)
    feed(c, x, 10, fs)
    out = c.conceal(fs)
    assert c.pitch_samples in (61, 62)
    assert snr_db(x[10 * fs : 11 * fs], out) > 10.0
    assert abs(int(out[0]) - int(x[10 * fs - 1])) <= max_step(x)


def test_seam_is_continuous_when_the_signal_is_not_periodic() -> None:
    # a 200 Hz tone riding on a ramp: one period back the signal was 320 lower, so a plain
    # repeat of the last period would jump by that much at the seam
    sr, fs = 8000, 160
    n = np.arange(sr // 4)
    x = (4000 * np.sin(2 * np.pi * 200 * n / sr) + 8.0 * n - 8000).astype(np.int16)
    c = Concealer(sr)
    feed(c, x, 10, fs)
    out = c.conceal(fs)
    assert c.pitch_samples == 40
    # continuous in value and slope: the curvature across the seam is the tone's own
    seam = np.concatenate([x[10 * fs - 8 : 10 * fs], out[:8]]).astype(np.int32)
    curvature = int(np.max(np.abs(np.diff(x[: 10 * fs].astype(np.int32), 2))))
    assert int(np.max(np.abs(np.diff(seam, 2)))) <= curvature + 20


def test_attenuates_over_consecutive_frames_to_silence() -> None:
    sr, fs = 8000, 160
    x = tone(sr, 200.0)
    c = Concealer(sr)
    feed(c, x, 10, fs)
    levels = [rms(c.conceal(fs)) for _ in range(6)]
    full = rms(x)
    assert levels[0] == pytest.approx(full, rel=0.05)  # first frame at full level
    assert 0.5 * full < levels[1] < 0.9 * full  # then falling ~6 dB per 20 ms
    assert levels[2] < 0.5 * levels[1]
    assert levels[3:] == [0.0, 0.0, 0.0]  # silent from 60 ms on
    assert c.concealed_frames == 6


def test_concealment_is_seamless_across_calls_and_frame_sizes() -> None:
    sr = 16000
    x = tone(sr, 200.0)
    a, b = Concealer(sr), Concealer(sr)
    feed(a, x, 10, 320)
    feed(b, x, 10, 320)
    whole = a.conceal(640)
    parts = np.concatenate([b.conceal(320), b.conceal(160), b.conceal(160)])
    assert np.array_equal(whole, parts)
    assert max_step(np.concatenate([x[: 10 * 320], parts])) <= max_step(x) + 2


def test_aperiodic_audio_repeats_the_last_10ms() -> None:
    sr, fs = 8000, 160
    x = np.random.default_rng(3).normal(0, 3000, sr).astype(np.int16)
    c = Concealer(sr)
    feed(c, x, 10, fs)
    out = c.conceal(fs)
    assert c.pitch_samples == 80
    assert rms(out) == pytest.approx(rms(x), rel=0.3)  # level kept, not silence
    # the seam starts from the last real sample's value
    assert abs(int(out[0]) - int(x[10 * fs - 1])) < 4 * 3000


def test_nothing_observed_conceals_silence() -> None:
    c = Concealer(48000)
    assert not c.conceal(960).any()
    assert c.resume(np.full(960, 1000, np.int16))[0] < 1000  # even then, faded in


def test_resume_crossfades_into_real_audio() -> None:
    sr, fs = 8000, 160
    x = tone(sr, 200.0, amp=8000.0)
    y = tone(sr, 200.0, amp=8000.0) // 2 + 3000  # a different "real" continuation
    c = Concealer(sr)
    feed(c, x, 10, fs)
    lost = c.conceal(fs)
    back = c.resume(y[11 * fs : 12 * fs])
    n = sr * 25 // 10000  # 2.5 ms
    assert np.array_equal(back[n:], y[11 * fs + n : 12 * fs])  # untouched after the fade
    joined = np.concatenate([lost, back]).astype(np.int32)
    # without the fade, the jump at the seam would be ~3000
    assert abs(int(y[11 * fs]) - int(lost[-1])) > 2500
    assert max_step(joined) <= max_step(x) + 3000 // n + 2
    assert not c.concealing and c.concealed_frames == 0


def test_resume_after_mute_fades_in_from_silence() -> None:
    sr, fs = 8000, 160
    x = tone(sr, 200.0)
    c = Concealer(sr)
    feed(c, x, 10, fs)
    for _ in range(4):
        c.conceal(fs)
    frame = np.full(fs, 8000, np.int16)
    back = c.resume(frame).astype(np.int32)
    n = 20
    assert np.all(np.diff(back[: n + 1]) > 0) and back[0] < 8000 // n + 1
    assert np.all(back[n:] == 8000)


def test_resume_without_loss_is_identity_and_observe_ends_concealment() -> None:
    sr, fs = 8000, 160
    x = tone(sr, 200.0)
    c = Concealer(sr)
    frame = x[:fs]
    assert c.resume(frame) is frame
    c.conceal(fs)
    assert c.concealing
    c.observe(x[fs : 2 * fs])  # plain observe: no fade, but the concealment is over
    assert not c.concealing
    assert c.total_concealed_frames == 1
