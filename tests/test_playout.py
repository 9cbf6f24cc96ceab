"""Tests for agent.media.playout.PlayoutBuffer: exact 20 ms frames, continuity, fades, marks."""

from __future__ import annotations

import numpy as np
import pytest

from agent.media.playout import FADE_SAMPLES, PlayoutBuffer, PulledFrame

N = 960  # 20 ms at 48 kHz
HALF_FADE = FADE_SAMPLES // 2  # start-up and underrun fades (2.5 ms)
FULL = 32767


def const(n: int, value: int = FULL) -> np.ndarray:
    return np.full(n, value, np.int16)


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-30000, 30000, n).astype(np.int16)


def pull_frames(buf: PlayoutBuffer, count: int) -> list[PulledFrame]:
    frames = [buf.pull() for _ in range(count)]
    for f in frames:
        assert f.pcm.dtype == np.int16
        assert f.pcm.shape == (N,)
    return frames


def drain(buf: PlayoutBuffer) -> np.ndarray:
    """Pull until idle (plus one silent frame) and concatenate."""
    frames = []
    while not buf.idle:
        frames.append(buf.pull())
    frames.append(buf.pull())
    return np.concatenate([f.pcm for f in frames])


def max_jump(x: np.ndarray) -> int:
    return int(np.max(np.abs(np.diff(x.astype(np.int32)))))


def test_idle_frames_are_silence() -> None:
    buf = PlayoutBuffer()
    for f in pull_frames(buf, 3):
        assert not f.pcm.any()
        assert f.audio_samples == 0
        assert f.started == []
    assert buf.idle
    assert buf.underruns == 0


@pytest.mark.parametrize("signal", ["ramp", "noise"])
@pytest.mark.parametrize(
    "chunks", [[10_007], [960] * 10 + [407], [1, 500, 3000, 6506], [333] * 30 + [17]]
)
def test_sample_continuity(signal: str, chunks: list[int]) -> None:
    total = sum(chunks)
    x = (np.arange(total) % 20000 - 10000).astype(np.int16) if signal == "ramp" else noise(total)
    buf = PlayoutBuffer()
    pos = 0
    for i, n in enumerate(chunks):
        buf.push(x[pos : pos + n], mark=i)
        pos += n
    buf.end_stream()
    assert buf.buffered_samples == total
    out = drain(buf)
    assert out.size % N == 0 and out.size >= total
    # Exactly the input, except the start-up fade-in and the fade-out where it runs dry.
    np.testing.assert_array_equal(
        out[HALF_FADE : total - HALF_FADE], x[HALF_FADE : total - HALF_FADE]
    )
    assert not out[total:].any()
    for i, n in enumerate(chunks):
        assert buf.played_samples(i) == n


def test_fade_in_from_silence() -> None:
    buf = PlayoutBuffer()
    buf.push(const(2 * N), "a")
    first = buf.pull().pcm.astype(np.int32)
    assert abs(first[0]) < 500
    head = first[:HALF_FADE]
    assert np.all(np.diff(head) >= 0) and head[-1] < FULL
    assert max_jump(first[: HALF_FADE + 1]) < 2 * FULL // HALF_FADE
    assert np.all(first[HALF_FADE:] == FULL)
    # Already playing: the next frame does not fade in again.
    assert np.all(buf.pull().pcm == FULL)


def test_end_of_stream_mid_frame_fades_the_tail() -> None:
    buf = PlayoutBuffer()
    buf.push(const(2 * N + 500, 30000), "a")
    buf.end_stream()
    f1, f2, f3, f4 = pull_frames(buf, 4)
    assert (f1.audio_samples, f2.audio_samples, f3.audio_samples, f4.audio_samples) == (
        N,
        N,
        500,
        0,
    )
    assert np.all(f2.pcm == 30000)
    tail = f3.pcm.astype(np.int32)
    # Continuous across the f2 → f3 boundary, then fading to zero before the silence.
    assert abs(tail[0] - 30000) == 0
    assert np.all(np.diff(tail[500 - HALF_FADE : 500]) <= 0)
    assert abs(tail[499]) < 500
    assert max_jump(np.concatenate([f2.pcm, f3.pcm, f4.pcm])) <= 2 * 30000 // HALF_FADE
    assert not tail[500:].any()
    assert buf.underruns == 0, "the end of a reply is not an underrun"
    # Silence while idle is not an underrun; resuming fades in again.
    pull_frames(buf, 2)
    assert buf.underruns == 0
    buf.push(const(N, 30000), "b")
    resumed = buf.pull().pcm
    assert abs(int(resumed[0])) < 500
    assert buf.underruns == 0


def test_tts_underrun_mid_reply_is_concealed_then_crossfaded_back() -> None:
    t = np.arange(3 * N + 500)
    voice = (12000 * np.sin(2 * np.pi * 200 * t / 48000)).astype(np.int16)
    buf = PlayoutBuffer()
    buf.push(voice[: 2 * N + 500], "a")  # the TTS is late with the rest of the reply
    f1, f2, f3, f4, f5, f6, f7 = pull_frames(buf, 7)
    assert f3.audio_samples == 500 and f4.audio_samples == 0
    played = np.concatenate([f.pcm for f in (f1, f2, f3, f4, f5, f6, f7)]).astype(np.int32)
    # No gap: the tone goes on smoothly past the dry point (a 200 Hz sine moves < 850/sample)...
    assert np.abs(played[2 * N + 500 : 3 * N]).max() > 6000
    assert max_jump(played[N : 3 * N]) < 1000
    # ...and fades to silence within ~60 ms of concealment (f3's tail + f4..f6).
    assert np.abs(f6.pcm[-N // 2 :].astype(np.int32)).max() < 100
    assert not f7.pcm.any()
    assert buf.underruns >= 2 and buf.concealed_frames >= 2
    # The late audio comes back cross-faded, without a click.
    buf.push(voice[2 * N + 500 :], "b")
    back = buf.pull().pcm.astype(np.int32)
    assert abs(back[0]) < 2000
    assert max_jump(back) < 1000


def test_running_dry_on_a_frame_boundary_is_not_an_underrun() -> None:
    buf = PlayoutBuffer()
    buf.push(noise(2 * N), "a")
    buf.end_stream()
    pull_frames(buf, 4)
    assert buf.underruns == 0


def test_clear_fades_out_within_one_frame() -> None:
    buf = PlayoutBuffer()
    buf.push(const(10 * N), "a")
    before = pull_frames(buf, 2)
    dropped = buf.clear()
    # The fade-out head (5 ms) is still played; the rest is dropped.
    assert dropped == 8 * N - FADE_SAMPLES
    assert buf.buffered_samples == FADE_SAMPLES
    cut, after = pull_frames(buf, 2)
    assert cut.audio_samples == FADE_SAMPLES <= 48_000 * 5 // 1000
    fade = cut.pcm[:FADE_SAMPLES].astype(np.int32)
    assert fade[0] > FULL - 500  # continues from the full-scale sample before the cut
    assert np.all(np.diff(fade) <= 0)
    assert not cut.pcm[FADE_SAMPLES:].any()
    # No click: the largest step across the cut is a small fraction of full scale.
    joined = np.concatenate([before[-1].pcm, cut.pcm])
    assert max_jump(joined) <= 2 * FULL // HALF_FADE
    assert not after.pcm.any()
    assert buf.idle
    # What was heard: two full frames plus the faded head.
    assert buf.played_samples("a") == 2 * N + FADE_SAMPLES


def test_clear_when_idle_or_nearly_empty() -> None:
    buf = PlayoutBuffer()
    assert buf.clear() == 0
    assert buf.idle
    assert not buf.pull().pcm.any()
    buf.push(const(100), "a")
    assert buf.clear() == 0  # all 100 samples are the fade head
    f = buf.pull()
    assert f.audio_samples == 100
    assert buf.played_samples("a") == 100
    assert buf.idle


def test_audio_after_clear_starts_with_a_fade_in() -> None:
    buf = PlayoutBuffer()
    buf.push(const(5 * N), "a")
    pull_frames(buf, 2)
    buf.clear()
    pull_frames(buf, 2)
    buf.push(const(2 * N), "b")
    f = buf.pull()
    assert f.started == ["b"]
    assert abs(int(f.pcm[0])) < 500
    assert buf.played_samples("b") == N


def test_clear_is_not_an_underrun() -> None:
    buf = PlayoutBuffer()
    buf.push(const(10 * N), "a")
    pull_frames(buf, 2)
    buf.clear()
    pull_frames(buf, 2)
    assert buf.underruns == 0


def test_played_samples_and_started_per_mark() -> None:
    buf = PlayoutBuffer()
    buf.push(noise(500, 1), "a")
    buf.push(noise(1000, 2), "b")
    buf.push(noise(2000, 3), "c")
    f1, f2, f3, f4 = pull_frames(buf, 4)
    # Frame 1: a[0:500] + b[0:460]; frame 2: b[460:] + c[0:420]; then the rest of c.
    assert f1.started == ["a", "b"]
    assert f2.started == ["c"]
    assert f3.started == []
    assert f4.started == []
    assert [f.audio_samples for f in (f1, f2, f3, f4)] == [N, N, N, 3500 - 3 * N]
    assert buf.played_samples("a") == 500
    assert buf.played_samples("b") == 1000
    assert buf.played_samples("c") == 2000
    assert buf.played_samples("never") == 0
    buf.forget("b")
    assert buf.played_samples("b") == 0
    assert buf.played_samples("c") == 2000


def test_played_samples_counts_frame_by_frame() -> None:
    buf = PlayoutBuffer()
    buf.push(noise(3000), "a")
    counts = []
    for _ in range(5):
        buf.pull()
        counts.append(buf.played_samples("a"))
    assert counts == [960, 1920, 2880, 3000, 3000]


def test_mark_pushed_while_idle_starts_in_the_next_frame() -> None:
    buf = PlayoutBuffer()
    pull_frames(buf, 2)
    buf.push(noise(100), 7)
    assert buf.pull().started == [7]
    assert buf.pull().started == []


def test_mark_in_several_segments_starts_once() -> None:
    # turns.py enqueues every TTS chunk of a unit under the unit's mark.
    buf = PlayoutBuffer()
    buf.push(noise(700, 1), "unit")
    buf.push(noise(700, 2), "unit")
    buf.push(noise(700, 3), "unit")
    buf.push(noise(700, 4), "next")
    started = [f.started for f in pull_frames(buf, 3)]
    assert started == [["unit"], [], ["next"]]
    assert buf.played_samples("unit") == 2100


def test_started_lists_marks_in_play_order() -> None:
    marks = [9, 3, 7, 1, 5]  # not sorted, so a set or sort would show
    buf = PlayoutBuffer()
    for m in marks:
        buf.push(noise(100, m), m)
    assert buf.pull().started == marks


@pytest.mark.parametrize(
    "pcm",
    [
        np.zeros(10, np.float32),
        np.zeros(10, np.int32),
        np.zeros(10, np.uint16),
        np.zeros((2, 10), np.int16),
        np.zeros((10, 1), np.int16),
    ],
    ids=["float32", "int32", "uint16", "2-D", "column"],
)
def test_push_validation(pcm: np.ndarray) -> None:
    buf = PlayoutBuffer()
    with pytest.raises(ValueError):
        buf.push(pcm, "a")
    assert buf.idle


def test_push_empty_is_a_no_op() -> None:
    buf = PlayoutBuffer()
    buf.push(np.zeros(0, np.int16), "a")
    assert buf.idle
    assert buf.pull().started == []


def test_pushed_array_is_not_modified() -> None:
    x = const(2 * N)
    buf = PlayoutBuffer()
    buf.push(x, "a")
    buf.pull()
    buf.clear()
    buf.pull()
    assert np.all(x == FULL)
