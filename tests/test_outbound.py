"""Tests for agent.media.outbound.OutboundAudioTrack, paced on a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from agent.clock import FakeClock
from agent.media.outbound import RESYNC_LATE_S, OutboundAudioTrack
from agent.media.playout import FADE_SAMPLES

N = 960
T0 = 1000.0  # FakeClock's default start


@dataclass
class Consumer:
    """Plays the role of aiortc's sender: calls recv() in a loop and logs (time, frame)."""

    clock: FakeClock
    track: OutboundAudioTrack
    frames: list[tuple[float, av.AudioFrame]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            frame = await self.track.recv()
            assert isinstance(frame, av.AudioFrame)  # no encoder started: PCM frames
            self.frames.append((self.clock.now(), frame))

    @property
    def times(self) -> list[float]:
        return [t - T0 for t, _ in self.frames]

    def pcm(self, i: int) -> np.ndarray:
        return self.frames[i][1].to_ndarray().reshape(-1)


@contextlib.asynccontextmanager
async def running(clock: FakeClock, track: OutboundAudioTrack) -> AsyncIterator[Consumer]:
    consumer = Consumer(clock, track)
    task = asyncio.get_running_loop().create_task(consumer.run())
    try:
        await clock.advance(0)  # let it take frame 0
        yield consumer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        track.stop()


def tone(n: int, value: int = 20000) -> np.ndarray:
    return np.full(n, value, np.int16)


async def test_frames_are_paced_20ms_apart() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock)
    async with running(clock, track) as c:
        assert len(c.frames) == 1  # the first frame goes out at once
        await clock.advance(0.019)
        assert len(c.frames) == 1
        await clock.advance(0.002)  # t = 21 ms
        assert len(c.frames) == 2
        await clock.advance(0.100)  # t = 121 ms: frames due at 0, 20, ..., 120 ms
        assert len(c.frames) == 7
        await clock.advance(1.0)  # t = 1.121 s
        assert len(c.frames) == 57
        assert c.times == pytest.approx([0.02 * i for i in range(57)])
        assert track.frames_sent == 57


async def test_frame_format_and_timestamps() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock)
    async with running(clock, track) as c:
        await clock.advance(0.09)
        assert len(c.frames) == 5
        for i, (_, frame) in enumerate(c.frames):
            assert frame.pts == i * N
            assert frame.time_base == fractions.Fraction(1, 48000)
            assert frame.sample_rate == 48000
            assert frame.format.name == "s16"
            assert frame.layout.name == "mono"
            assert frame.samples == N
            assert c.pcm(i).shape == (N,)
            assert not c.pcm(i).any()  # idle: silence
        assert track.audio_frames_sent == 0


async def test_queued_audio_is_played() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock)
    async with running(clock, track) as c:
        await track.enqueue(tone(2 * N), "a")
        track.end_stream()
        assert track.buffered_ms == pytest.approx(40.0)
        await clock.advance(0.07)  # frames at 20, 40, 60 ms
        assert len(c.frames) == 4
        assert not c.pcm(0).any()
        assert np.all(c.pcm(1)[FADE_SAMPLES:] == 20000)  # after the fade-in
        assert np.all(c.pcm(2) == 20000)
        assert not c.pcm(3).any()
        assert track.audio_frames_sent == 2
        assert track.played_samples("a") == 2 * N
        assert track.buffered_ms == 0


async def test_enqueue_backpressure() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock, max_ahead_ms=100)  # 4800 samples
    # Below the limit: accepted at once, even a chunk larger than the limit.
    await asyncio.wait_for(track.enqueue(tone(10 * N), "a"), 1)
    blocked = asyncio.get_running_loop().create_task(track.enqueue(tone(N), "b"))
    await clock.advance(0)
    assert not blocked.done()
    assert track.buffered_ms == pytest.approx(200.0)

    async with running(clock, track) as c:
        # 1 frame pulled at t=0; 4 more by 70 ms: 9600 - 4*960 = 5760 > 4800 still.
        await clock.advance(0.07)
        assert len(c.frames) == 4
        assert not blocked.done()
        # The 5th pulled frame leaves exactly 4800 samples (100 ms): enqueue resumes.
        await clock.advance(0.02)
        assert len(c.frames) == 5
        assert blocked.done()
        await blocked
        assert track.buffered_ms == pytest.approx(120.0)


async def test_enqueue_waiting_on_a_stopped_track_raises() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock, max_ahead_ms=20)
    await track.enqueue(tone(2 * N), "a")
    blocked = asyncio.get_running_loop().create_task(track.enqueue(tone(N), "b"))
    await clock.advance(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(blocked, 1)
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_clear_stops_audio_within_one_frame() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock, max_ahead_ms=2000)
    async with running(clock, track) as c:
        await track.enqueue(tone(50 * N), "a")
        await clock.advance(0.05)  # frames at 20, 40 ms carry audio
        assert len(c.frames) == 3
        dropped = track.clear()
        assert dropped == 48 * N - FADE_SAMPLES
        await clock.advance(0.04)
        cut, after = c.pcm(3), c.pcm(4)
        assert np.count_nonzero(cut) <= FADE_SAMPLES
        assert int(cut[0]) > 19000  # no jump from the previous full-level frame
        assert not after.any()
        assert track.buffered_ms == 0
        assert track.played_samples("a") == 2 * N + FADE_SAMPLES


async def test_on_mark_started_gets_the_clock_time() -> None:
    clock = FakeClock()
    seen: list[tuple[Hashable, float]] = []
    track = OutboundAudioTrack(clock, on_mark_started=lambda m, t: seen.append((m, t - T0)))
    async with running(clock, track):
        await clock.advance(0.05)  # frames at 0, 20, 40 ms went out silent
        await track.enqueue(tone(2 * N), ("r", 0))
        await track.enqueue(tone(N), ("r", 1))
        assert seen == []
        await clock.advance(0.2)
    # ("r", 0) fills the frames at 60 and 80 ms, ("r", 1) the frame at 100 ms.
    assert [m for m, _ in seen] == [("r", 0), ("r", 1)]
    assert [t for _, t in seen] == pytest.approx([0.06, 0.10])


async def test_wait_drained() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock)
    await asyncio.wait_for(track.wait_drained(), 1)  # idle: returns at once
    await track.enqueue(tone(2 * N + 580), "a")  # three frames' worth
    track.end_stream()
    waiter = asyncio.get_running_loop().create_task(track.wait_drained())
    async with running(clock, track) as c:
        await clock.advance(0.03)  # frames at 0 and 20 ms
        assert len(c.frames) == 2
        assert not waiter.done()
        await clock.advance(0.02)  # the frame at 40 ms takes the last 580 samples
        assert len(c.frames) == 3
        assert waiter.done()
        await waiter
        assert c.pcm(2)[:500].all()
        assert not c.pcm(2)[580:].any()


@pytest.mark.parametrize(
    ("late_s", "burst"),
    [
        (0.07, 3),  # frames due at 20, 40, 60 ms are all past: catch up back to back
        (RESYNC_LATE_S + 0.4, 1),  # too late: play one frame now and restart the schedule
    ],
    ids=["small lag catches up", "large lag resyncs"],
)
async def test_late_consumer(late_s: float, burst: int) -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock)
    first = await track.recv()  # frame 0 at t0
    assert first.pts == 0
    await clock.advance(late_s)  # the sender was busy and did not call recv()
    async with running(clock, track) as c:
        assert len(c.frames) == burst
        assert c.times == pytest.approx([late_s] * burst)
        # The next frame is exactly one frame period after the last one due.
        due = 0.02 * (burst + 1) if burst > 1 else late_s + 0.02
        await clock.advance(due - late_s - 0.001)
        assert len(c.frames) == burst
        await clock.advance(0.002)
        assert len(c.frames) == burst + 1
        assert c.times[-1] == pytest.approx(due)
        pts = [f.pts for _, f in c.frames]
        if burst > 1:
            # Caught up back to back: pts count frames.
            assert pts == [N * i for i in range(1, burst + 2)]
        else:
            # Resynced: the skipped slots are skipped in pts too, so pts follow the clock
            # (the first frame plays the slot due at late_s, the next one 20 ms later).
            assert pts == [N * round(late_s / 0.02), N * (round(late_s / 0.02) + 1)]
