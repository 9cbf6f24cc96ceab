"""Tests for agent.audio (PCM helpers, streaming decimator) and agent.media.inbound.To16kMono."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.audio import Decimator, dbfs, frames, peak_dbfs, ramp, to_mono, upsample_linear
from agent.media.inbound import To16kMono


def sine(freq_hz: float, n: int, rate: int = 48_000, amplitude: float = 16000.0) -> np.ndarray:
    t = np.arange(n) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype(np.int16)


def decimate_in_chunks(x: np.ndarray, sizes: list[int], factor: int = 3) -> np.ndarray:
    d = Decimator(factor)
    out, i, k = [], 0, 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        out.append(d.process(x[i : i + n]))
        i, k = i + n, k + 1
    return np.concatenate(out)


# --- Decimator -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [[1], [2], [3], [7, 13], [480], [960], [1000, 3], [5000, 1, 1, 2]],
    ids=str,
)
def test_decimator_streaming_equals_one_shot(sizes: list[int]) -> None:
    x = noise(10_007)
    whole = Decimator(3).process(x)
    assert whole.dtype == np.int16
    assert whole.size == math.ceil(x.size / 3)
    np.testing.assert_array_equal(decimate_in_chunks(x, sizes), whole)


@pytest.mark.parametrize("sizes", [[0, 4], [10, 0, 990]], ids=str)
def test_decimator_empty_chunk_is_harmless(sizes: list[int]) -> None:
    x = noise(1_000)
    np.testing.assert_array_equal(decimate_in_chunks(x, sizes), Decimator(3).process(x))


@pytest.mark.parametrize("seed", range(5))
def test_decimator_random_chunking(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = noise(6_000, seed)
    sizes = [int(s) for s in rng.integers(1, 400, 100)]
    np.testing.assert_array_equal(decimate_in_chunks(x, sizes), Decimator(3).process(x))


@pytest.mark.parametrize("freq_hz", [200, 1000, 3000])
def test_decimator_passband_keeps_the_level(freq_hz: int) -> None:
    x = sine(freq_hz, 48_000)
    y = Decimator(3).process(x)
    settled = slice(100, None)  # skip the filter's start-up
    assert abs(dbfs(y[settled]) - dbfs(x)) < 0.5


@pytest.mark.parametrize("freq_hz", [12_000, 10_000, 20_000])
def test_decimator_rejects_what_would_alias(freq_hz: int) -> None:
    x = sine(freq_hz, 48_000)
    y = Decimator(3).process(x)
    assert dbfs(y[100:]) < dbfs(x) - 40


def test_decimator_delay_is_half_the_filter() -> None:
    x = np.zeros(300, np.int16)
    x[0] = 30000
    y = Decimator(3, taps=63).process(x).astype(np.int32)
    # Impulse response peak at (63 - 1) / 2 = 31 input samples, i.e. output index ~10.
    assert int(np.argmax(y)) == round(31 / 3)


def test_decimator_factor_one_and_invalid() -> None:
    x = noise(100)
    np.testing.assert_array_equal(Decimator(1).process(x), x)
    with pytest.raises(ValueError):
        Decimator(0)


def test_decimator_clips_instead_of_wrapping() -> None:
    x = np.tile(np.array([32767, 32767, -32768, -32768], np.int16), 500)
    y = Decimator(3).process(x).astype(np.int32)
    # A near-full-scale square wave overshoots after filtering; it must saturate, not wrap.
    assert y.max() <= 32767 and y.min() >= -32768
    big = np.full(3000, 32767, np.int16)
    assert Decimator(3).process(big)[50:].min() > 32000


# --- small helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interleaved", "channels", "expected"),
    [
        ([1, 2, 3], 1, [1, 2, 3]),
        ([100, 200, -3, -4], 2, [150, -4]),  # floor division: -3.5 → -4
        ([32767, 32767, -32768, -32768], 2, [32767, -32768]),  # no int16 overflow
        ([3, 6, 9, -3, -6, -9], 3, [6, -6]),
    ],
)
def test_to_mono(interleaved: list[int], channels: int, expected: list[int]) -> None:
    out = to_mono(np.array(interleaved, np.int16), channels)
    assert out.dtype == np.int16
    assert out.tolist() == expected


@pytest.mark.parametrize(
    ("pcm", "expected"),
    [
        (np.zeros(100, np.int16), -math.inf),
        (np.zeros(0, np.int16), -math.inf),
        (sine(1000, 4800, amplitude=32767), -3.0103),
        (sine(1000, 4800, amplitude=16384), -9.0309),
        (np.full(100, 16384, np.int16), -6.0206),
        (np.full(100, -32768, np.int16), 0.0),
    ],
    ids=["zeros", "empty", "full-scale sine", "half-scale sine", "half-scale dc", "full dc"],
)
def test_dbfs(pcm: np.ndarray, expected: float) -> None:
    assert dbfs(pcm) == pytest.approx(expected, abs=0.01)


def test_peak_dbfs() -> None:
    assert peak_dbfs(np.zeros(10, np.int16)) == -math.inf
    assert peak_dbfs(np.array([0, -32768], np.int16)) == pytest.approx(0.0)
    assert peak_dbfs(np.array([100, 16384, -5], np.int16)) == pytest.approx(-6.0206, abs=0.01)


@pytest.mark.parametrize(
    ("pcm", "rising", "expected"),
    [
        ([1000] * 4, True, [0, 250, 500, 750]),
        ([1000] * 5, False, [1000, 750, 500, 250, 0]),
        ([-1000] * 4, True, [0, -250, -500, -750]),
        ([], True, []),
    ],
)
def test_ramp(pcm: list[int], rising: bool, expected: list[int]) -> None:
    out = ramp(np.array(pcm, np.int16), rising)
    assert out.dtype == np.int16
    assert out.tolist() == expected


def test_upsample_linear_and_frames() -> None:
    assert upsample_linear(np.array([0, 100, 200], np.int16), 2).tolist() == [
        0,
        50,
        100,
        150,
        200,
        200,
    ]
    x = np.arange(10, dtype=np.int16)
    assert [f.tolist() for f in frames(x, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert frames(x[:3], 4) == []


# --- To16kMono -----------------------------------------------------------------------------


def test_48k_stereo_to_16k_mono_frames() -> None:
    conv = To16kMono(48_000)
    left = sine(1000, 960 * 10)
    stereo = np.stack([left, left], axis=1).reshape(-1)  # interleaved L R L R ...
    out: list[np.ndarray] = []
    for i in range(10):
        frames_now = conv.push(stereo[i * 1920 : (i + 1) * 1920], channels=2)
        assert len(frames_now) == 1  # 20 ms in → one 320-sample frame out
        out += frames_now
    for f in out:
        assert f.dtype == np.int16 and f.shape == (320,)
    # Same samples as decimating the mono signal in one go.
    np.testing.assert_array_equal(np.concatenate(out), Decimator(3).process(left))
    assert abs(dbfs(np.concatenate(out)[100:]) - dbfs(left)) < 0.5


def test_48k_partial_frames_accumulate() -> None:
    conv = To16kMono(48_000)
    x = noise(480 * 5)  # 10 ms pushes of mono
    counts = [len(conv.push(x[i * 480 : (i + 1) * 480], channels=1)) for i in range(5)]
    assert counts == [0, 1, 0, 1, 0]


def test_8k_mono_upsampled_to_16k_frames() -> None:
    conv = To16kMono(8_000)
    x = sine(500, 160 * 4, rate=8_000)
    out: list[np.ndarray] = []
    for i in range(4):
        frames_now = conv.push(x[i * 160 : (i + 1) * 160], channels=1)
        assert [f.shape for f in frames_now] == [(320,)]
        out += frames_now
    y = np.concatenate(out)
    # Even output samples are the input samples; the level is unchanged.
    np.testing.assert_array_equal(y[::2], x)
    assert abs(dbfs(y) - dbfs(x)) < 0.5


def test_16k_mono_passes_through() -> None:
    conv = To16kMono(16_000)
    x = noise(320 * 2)
    out = conv.push(x, channels=1)
    assert len(out) == 2
    np.testing.assert_array_equal(np.concatenate(out), x)


@pytest.mark.parametrize("rate", [44_100, 22_050, 12_000, 11_025])
def test_unsupported_rates(rate: int) -> None:
    with pytest.raises(ValueError):
        To16kMono(rate)
