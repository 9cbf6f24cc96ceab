"""aiortc remote audio track → 20 ms frames of 16 kHz mono int16, one per playout slot.

Two receive paths:

- **ringback's** (Opus, PCMU, PCMA, when agent.media.patches has installed
  it): the track yields each RTP packet as `EncodedAudio`. A reader task pushes them into the adaptive
  jitter buffer (agent/media/rtp_jitter.py); the playout loop pops one slot every 20 ms on the
  injected clock and decodes it: a real frame, a frame recovered from the next packet's Opus
  in-band FEC, or a concealed one (libopus PLC; PCM concealment for G.711). Every slot is
  delivered, so the VAD and the endpointer see continuous time.
- **aiortc's** (other codecs, or the patch not installed): decoded frames as aiortc delivers
  them, downmixed and resampled.

Either way the track is always drained (aiortc's per-track queue is unbounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.audio import ASR_RATE_HZ, Decimator, Pcm16, dbfs, to_mono, upsample_linear
from agent.clock import Clock
from agent.media.concealment import Concealer, alaw_decode, ulaw_decode
from agent.media.opus import OpusDecoder
from agent.media.rtp_jitter import AdaptiveJitterBuffer, JitterConfig, RtpIn, Slot, SlotKind
from agent.metrics import percentile

log = logging.getLogger(__name__)

FRAME_SAMPLES_16K = ASR_RATE_HZ // 50  # 20 ms
SLOT_S = 0.020
QUIET_DBFS = -45.0  # below this a frame may be dropped or stretched to adapt the delay
STATS_EVERY_SLOTS = 100  # 2 s
# Playout runs on a virtual slot clock: a consumer that is late (a busy CPU, a slow ASR call)
# catches up by taking the due slots back to back, so no audio is dropped for its sake.
# Only this far behind does it skip ahead (and the buffer drops the backlog itself).
MAX_BEHIND_S = 1.0


@dataclass(frozen=True)
class EncodedAudio:
    """One received RTP audio packet, as the patched receiver hands it to the track."""

    codec: str  # "opus" | "PCMU" | "PCMA"
    clock_rate_hz: int
    seq: int
    timestamp: int  # the RTP timestamp as sent
    ssrc: int
    payload: bytes
    arrival_s: float  # time.monotonic() when the packet reached the receiver


@dataclass(frozen=True)
class PlayoutFrame:
    pcm: Pcm16  # mono, one 20 ms slot (or one aiortc frame) at rate_hz
    rate_hz: int
    t: float  # clock time of the playout slot (or the arrival, on aiortc's path)


@dataclass(frozen=True)
class InboundFrame:
    pcm16: Pcm16  # 320 samples, 16 kHz mono
    t: float  # clock time of the frame's playout slot (or its arrival, on aiortc's path)


@dataclass(frozen=True)
class LinkStats:
    """Receive-side quality of one call, as sent in `link` events."""

    path: str
    codec: str
    packets_received: int
    packets_lost: int
    packets_late: int
    packets_reordered: int
    packets_duplicated: int
    frames_delivered: int
    frames_fec_recovered: int
    frames_concealed: int
    playout_delay_ms: float | None
    playout_delay_ms_p50: float | None
    playout_delay_ms_p99: float | None
    target_delay_ms: float
    delay_drops: int
    delay_inserts: int

    def as_event(self) -> dict[str, object]:
        return {"type": "link", **asdict(self)}


class To16kMono:
    """Stateful converter for one stream; rate fixed by the first frame."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        if sample_rate_hz % ASR_RATE_HZ == 0:
            self._decimator: Decimator | None = Decimator(sample_rate_hz // ASR_RATE_HZ)
            self._up = 1
        elif ASR_RATE_HZ % sample_rate_hz == 0:
            self._decimator = None
            self._up = ASR_RATE_HZ // sample_rate_hz
        else:
            raise ValueError(f"unsupported inbound sample rate {sample_rate_hz} Hz")
        self._pending = np.zeros(0, np.int16)

    def push(self, interleaved: Pcm16, channels: int) -> list[Pcm16]:
        mono = to_mono(interleaved, channels)
        pcm = self._decimator.process(mono) if self._decimator else upsample_linear(mono, self._up)
        self._pending = np.concatenate([self._pending, pcm])
        n = self._pending.size // FRAME_SAMPLES_16K
        out = [self._pending[i * FRAME_SAMPLES_16K : (i + 1) * FRAME_SAMPLES_16K] for i in range(n)]
        self._pending = self._pending[n * FRAME_SAMPLES_16K :]
        return out


class SlotDecoder:
    """Jitter-buffer slots → mono PCM at the codec's rate, with FEC and concealment."""

    def __init__(self, codec: str, clock_rate_hz: int) -> None:
        self.codec = codec
        self.rate_hz = 48_000 if codec == "opus" else clock_rate_hz
        self.frame_samples = self.rate_hz // 50
        self._opus = OpusDecoder(channels=1) if codec == "opus" else None
        self._concealer = None if self._opus else Concealer(self.rate_hz)
        self._g711 = {"PCMU": ulaw_decode, "PCMA": alaw_decode}.get(codec)
        self._concealing = False
        self.delivered = 0
        self.fec_recovered = 0
        self.concealed = 0

    def decode(self, slot: Slot) -> Pcm16:
        self.delivered += 1
        if slot.kind == SlotKind.PACKET:
            assert slot.packet is not None
            return self._real(slot.packet.payload)
        nxt = slot.next_packet
        if slot.kind == SlotKind.LOST and nxt and self._opus and self._opus.fec_usable(nxt.payload):
            self.fec_recovered += 1
            return self._opus.recover(nxt.payload, self.frame_samples)
        self.concealed += 1
        if self._opus:
            return self._opus.conceal(self.frame_samples)
        assert self._concealer is not None
        self._concealing = True
        return self._concealer.conceal(self.frame_samples)

    def _real(self, payload: bytes) -> Pcm16:
        if self._opus:
            return self._opus.decode(payload)
        assert self._g711 is not None and self._concealer is not None
        pcm = self._g711(payload)
        if self._concealing:
            self._concealing = False
            return self._concealer.resume(pcm)
        self._concealer.observe(pcm)
        return pcm

    def close(self) -> None:
        if self._opus:
            self._opus.close()


async def inbound_frames(
    track: MediaStreamTrack,
    clock: Clock,
    jitter: JitterConfig | None = None,
    on_stats: Callable[[LinkStats], None] | None = None,
) -> AsyncGenerator[InboundFrame, None]:
    """Yield 16 kHz mono 20 ms frames until the track ends."""
    converter: To16kMono | None = None
    async with contextlib.aclosing(playout_frames(track, clock, jitter, on_stats)) as frames:
        async for frame in frames:
            if converter is None or converter.sample_rate_hz != frame.rate_hz:
                converter = To16kMono(frame.rate_hz)
            for pcm in converter.push(frame.pcm, 1):
                yield InboundFrame(pcm, frame.t)


async def playout_frames(
    track: MediaStreamTrack,
    clock: Clock,
    jitter: JitterConfig | None = None,
    on_stats: Callable[[LinkStats], None] | None = None,
) -> AsyncGenerator[PlayoutFrame, None]:
    """Yield mono PCM at the codec's rate, one frame per playout slot, until the track ends."""
    first = await _recv(track)
    if first is None:
        return
    if isinstance(first, EncodedAudio):
        path = _own_path(track, first, clock, jitter, on_stats)
    else:
        path = _aiortc_path(track, first, clock)
    async with contextlib.aclosing(path) as frames:
        async for frame in frames:
            yield frame


async def _recv(track: MediaStreamTrack) -> object | None:
    try:
        return await track.recv()
    except MediaStreamError:
        return None


async def _aiortc_path(
    track: MediaStreamTrack, first: object, clock: Clock
) -> AsyncGenerator[PlayoutFrame, None]:
    frame: object | None = first
    while frame is not None:
        t = clock.now()
        if not isinstance(frame, av.AudioFrame):
            raise TypeError(f"expected audio frames, got {type(frame).__name__}")
        samples = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
        yield PlayoutFrame(to_mono(samples, len(frame.layout.channels)), frame.sample_rate, t)
        frame = await _recv(track)


async def _own_path(
    track: MediaStreamTrack,
    first: EncodedAudio,
    clock: Clock,
    jitter: JitterConfig | None,
    on_stats: Callable[[LinkStats], None] | None,
) -> AsyncGenerator[PlayoutFrame, None]:
    config = jitter or JitterConfig()
    if config.clock_rate_hz != first.clock_rate_hz:
        config = JitterConfig(**{**asdict(config), "clock_rate_hz": first.clock_rate_hz})
    buffer = AdaptiveJitterBuffer(config)
    decoder = SlotDecoder(first.codec, first.clock_rate_hz)
    ended = asyncio.Event()

    def push(packet: EncodedAudio) -> None:
        rtp = RtpIn(packet.seq, packet.timestamp, packet.ssrc, packet.payload)
        buffer.push(rtp, packet.arrival_s)

    async def read() -> None:
        push(first)
        while (item := await _recv(track)) is not None:
            if isinstance(item, EncodedAudio):
                push(item)
        ended.set()

    def stats() -> LinkStats:
        s = buffer.stats
        waits = list(s.wait_ms)
        return LinkStats(
            path="ringback",
            codec=decoder.codec,
            packets_received=s.received,
            packets_lost=s.lost,
            packets_late=s.late,
            packets_reordered=s.reordered,
            packets_duplicated=s.duplicates,
            frames_delivered=decoder.delivered,
            frames_fec_recovered=decoder.fec_recovered,
            frames_concealed=decoder.concealed,
            playout_delay_ms=_round(waits[-1] if waits else None),
            playout_delay_ms_p50=_round(percentile(waits, 50)),
            playout_delay_ms_p99=_round(percentile(waits, 99)),
            target_delay_ms=round(buffer.target_delay_ms, 1),
            delay_drops=s.dropped,
            delay_inserts=s.inserted,
        )

    reader = asyncio.get_running_loop().create_task(read(), name="inbound-reader")
    quiet = True
    slots = 0
    t_next = clock.now()
    try:
        while not ended.is_set():
            if reader.done():
                reader.result()  # re-raise what killed the reader
            now = clock.now()
            if t_next > now:
                await clock.sleep(t_next - now)
            elif now - t_next > MAX_BEHIND_S:
                t_next = now
            t_slot, t_next = t_next, t_next + SLOT_S
            slot = buffer.pop(t_slot, quiet=quiet)
            if slot is None:
                continue  # playout has not started
            pcm = decoder.decode(slot)
            quiet = dbfs(pcm) < QUIET_DBFS
            yield PlayoutFrame(pcm, decoder.rate_hz, t_slot)
            slots += 1
            if on_stats is not None and slots % STATS_EVERY_SLOTS == 0:
                on_stats(stats())
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        if on_stats is not None:
            on_stats(stats())
        decoder.close()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
