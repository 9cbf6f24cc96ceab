"""The agent's send path: OutboundAudioTrack encodes its own Opus inline (agent.media.opus
SpeechEncoder) and aiortc only packs the packets (agent.media.patches)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs import CODECS
from aiortc.codecs.opus import OpusEncoder as AiortcOpusEncoder
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from agent.audio import Pcm16
from agent.clock import FakeClock, MonotonicClock
from agent.media import opus, patches
from agent.media.inbound import LinkStats, playout_frames
from agent.media.opus import OpusDecoder, OpusSendConfig, SpeechEncoder, has_fec, upmix
from agent.media.outbound import RESYNC_LATE_S, OutboundAudioTrack
from harness.impair import Impairment, impair_sender
from tests.conftest import run_quick_bench
from tests.test_opus import speech_like

N = 960
SR = 48_000
TB = fractions.Fraction(1, SR)


def frames_of(pcm: Pcm16) -> Iterator[Pcm16]:
    for i in range(pcm.size // N):
        yield pcm[i * N : (i + 1) * N]


def faded(pcm: Pcm16, fade: int = 240) -> Pcm16:
    """Like the playout buffer's output: 5 ms fade in and out."""
    out = pcm.astype(np.float64)
    out[:fade] *= np.linspace(0, 1, fade, endpoint=False)
    out[-fade:] *= np.linspace(1, 0, fade)
    return out.astype(np.int16)


def aiortc_encoder(send: OpusSendConfig) -> AiortcOpusEncoder:
    import aiortc.rtcrtpsender as sender

    codec = next(c for c in CODECS["audio"] if c.name == "opus")
    with patches.install("aiortc", send):  # the encoder keeps its settings after uninstall
        # The patch point itself (aiortc does not re-export it); it is typed to return any Encoder.
        encoder = cast(AiortcOpusEncoder, sender.get_encoder(codec))  # type: ignore[attr-defined]
    return encoder


# --- SpeechEncoder ----------------------------------------------------------------------------


def test_upmix_is_aiortcs_resampler() -> None:
    rng = np.random.default_rng(3)
    pcm = rng.integers(-32768, 32768, 10 * N).astype(np.int16)
    pcm[:4] = [-32768, 32767, -1, 1]
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=SR, frame_size=N)
    got = []
    for i, chunk in enumerate(frames_of(pcm)):
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SR
        frame.pts = i * N
        got += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    assert np.array_equal(np.concatenate(got), upmix(pcm))


@pytest.mark.parametrize(
    "send",
    [
        OpusSendConfig(),
        OpusSendConfig(bitrate_bps=16_000, packet_loss_pct=25),
        OpusSendConfig(bitrate_bps=64_000, fec=False),
    ],
    ids=["default", "16k-25pct", "64k-nofec"],
)
def test_inline_packets_are_aiortcs_byte_for_byte(send: OpusSendConfig) -> None:
    """Same libopus, settings and input as aiortc's patched encoder: the same packets."""
    rng = np.random.default_rng(2)
    t = np.arange(SR // 2) / SR
    pcm = np.concatenate(
        [
            speech_like(seconds=2.0),
            rng.normal(0, 3000, SR // 2).astype(np.int16),
            (9000 * np.sin(2 * np.pi * 3000 * t)).astype(np.int16),
            speech_like(seconds=1.0, seed=3) // 30,
        ]
    )
    reference = aiortc_encoder(send)
    inline = SpeechEncoder(send)
    expected: list[bytes] = []
    for i, chunk in enumerate(frames_of(pcm)):
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SR
        frame.pts = i * N
        frame.time_base = TB
        payloads, _ = reference.encode(frame)
        expected += payloads
    got = [inline.encode(chunk) for chunk in frames_of(pcm)]
    assert len(got) == len(expected) == 200
    assert got == expected
    assert inline.frames_encoded == 200
    with_fec = np.mean([has_fec(p) for p in got[1:100]])
    assert with_fec > 0.3 if send.fec else with_fec == 0


def _talk_and_pause() -> tuple[Pcm16, list[tuple[int, int]]]:
    """Speech, a tone, quiet speech and noise, each between pauses, as the playout buffer
    hands them over (fades, then digital zeros); returns the PCM and the sound spans in frames."""
    speech = speech_like(seconds=1.2, seed=4)
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(N * 40) / SR)).astype(np.int16)
    quiet = (speech_like(seconds=0.6, seed=5) * 0.05).astype(np.int16)
    noise = np.random.default_rng(6).normal(0, 3000, N * 15).astype(np.int16)
    gap = np.zeros(N * 60, np.int16)
    parts = [gap, faded(speech), gap, faded(tone), gap, faded(quiet), gap, faded(noise), gap]
    spans, at = [], 0
    for part in parts:
        if part.any():
            spans.append((at, at + part.size // N))
        at += part.size // N
    return np.concatenate(parts), spans


def _decode(packets: list[bytes]) -> np.ndarray:
    decoder = OpusDecoder(channels=1)
    return np.concatenate([decoder.decode(p) for p in packets]).astype(np.float64)


def _block_db(x: np.ndarray, block: int = 240) -> np.ndarray:
    blocks = x[: x.size // block * block].reshape(-1, block)
    return np.asarray(10 * np.log10(np.mean(blocks**2, axis=1) + 1.0))


def test_settled_silence_is_reused_and_decodes_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    pcm, spans = _talk_and_pause()
    chunks = list(frames_of(pcm))
    cached_encoder = SpeechEncoder(OpusSendConfig())
    cached = [cached_encoder.encode(c) for c in chunks]
    monkeypatch.setattr(opus, "SILENCE_SETTLE_PACKETS", 10**9)  # the reference: encode all
    full_encoder = SpeechEncoder(OpusSendConfig())
    full = [full_encoder.encode(c) for c in chunks]
    assert full_encoder.silent_frames_reused == 0

    silent_frames = len(chunks) - sum(b - a for a, b in spans)
    assert cached_encoder.silent_frames_reused >= silent_frames - len(spans) * 25  # ~20 to settle
    assert cached_encoder.frames_encoded + cached_encoder.silent_frames_reused == len(chunks)
    # The reused packet is exactly what the encoder keeps producing for silence: identical
    # streams until speech resumes (after that the encoders' decisions differ a little, as the
    # reusing one has not seen the extra silence; the decoded audio is compared below).
    assert cached[: spans[0][0]] == full[: spans[0][0]]

    got, ref = _decode(cached), _decode(full)
    assert got.size == ref.size == pcm.size
    # Silence decodes to (near) digital silence, including right before each onset.
    ends = [0] + [b + 3 for _, b in spans]
    starts = [a for a, _ in spans] + [len(chunks)]
    for start, end in zip(ends, starts, strict=True):
        assert np.abs(got[start * N : end * N]).max() <= 8, (start, end)
    # Around every boundary the level follows the reference (every frame encoded), 5 ms block
    # by 5 ms block, in blocks above -50 dBFS (rms 100): an onset is neither lost nor clicks,
    # and the end adds nothing (its decay tail may differ: the encoders' decisions do).
    db_got, db_ref = _block_db(got), _block_db(ref)
    per_frame = N // 240
    for a, b in spans:
        for edge in (a, b):
            window = slice((edge - 3) * per_frame, (edge + 6) * per_frame)
            loud = np.maximum(db_got[window], db_ref[window]) > 40
            diff = db_got[window] - db_ref[window]
            if edge == a:
                assert np.abs(diff[loud]).max(initial=0) < 3.0, (edge, diff)
            else:
                assert diff[loud].max(initial=0) < 3.0, (edge, diff)
            jumps_got = np.abs(np.diff(got[(edge - 3) * N : (edge + 6) * N])).max()
            jumps_ref = np.abs(np.diff(ref[(edge - 3) * N : (edge + 6) * N])).max()
            assert jumps_got <= 1.25 * jumps_ref + 50, (edge, jumps_got, jumps_ref)
    # And the speech itself is as loud as in the reference.
    for a, b in spans:
        level = 10 * math.log10(np.mean(got[a * N : b * N] ** 2))
        level_ref = 10 * math.log10(np.mean(ref[a * N : b * N] ** 2))
        assert abs(level - level_ref) < 0.5


def test_only_digital_silence_is_reused() -> None:
    encoder = SpeechEncoder(OpusSendConfig())
    for _ in range(40):
        encoder.encode(np.zeros(N, np.int16))
    reused = encoder.silent_frames_reused
    assert reused >= 20
    quiet = np.zeros(N, np.int16)
    quiet[500] = 1  # one LSB is not silence
    encoder.encode(quiet)
    assert encoder.silent_frames_reused == reused
    assert encoder.frames_encoded == 40 - reused + 1
    encoder.encode(np.zeros(N, np.int16))  # after sound, silence settles again first
    assert encoder.silent_frames_reused == reused


def test_encode_rejects_a_wrong_frame_size_and_a_closed_encoder() -> None:
    encoder = SpeechEncoder(OpusSendConfig())
    with pytest.raises(ValueError, match="960"):
        encoder.encode(np.zeros(480, np.int16))
    encoder.close()
    encoder.close()
    with pytest.raises(ValueError, match="closed"):
        encoder.encode(np.zeros(N, np.int16))


# --- OutboundAudioTrack in packet mode --------------------------------------------------------


async def _pull(track: OutboundAudioTrack, clock: FakeClock, n: int) -> list[object]:
    out: list[object] = []
    for _ in range(n):
        task = asyncio.get_running_loop().create_task(track.recv())
        await clock.advance(0.02)
        out.append(await task)
    return out


async def test_track_packets_carry_48khz_timestamps() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock)
    track.encode_opus(OpusSendConfig())
    encoder = track.encoder
    assert encoder is not None
    track.encode_opus(OpusSendConfig(bitrate_bps=64_000))  # a second call keeps the encoder
    assert track.encoder is encoder
    tone = (10000 * np.sin(2 * np.pi * 1000 * np.arange(N * 10) / SR)).astype(np.int16)
    await track.enqueue(tone, "t")
    track.end_stream()
    try:
        packets = await _pull(track, clock, 25)
        packer = AiortcOpusEncoder()
        stamps = []
        for i, packet in enumerate(packets):
            assert isinstance(packet, av.Packet)
            assert packet.pts == i * N
            assert packet.time_base == TB
            payloads, stamp = packer.pack(packet)
            assert payloads == [bytes(packet)]
            stamps.append(stamp)
        assert stamps == [i * N for i in range(25)]  # monotonic, 960 per 20 ms
        assert track.frames_sent == 25 and track.audio_frames_sent == 10

        # A stalled sender: the late slots are skipped in the timestamps too.
        await clock.advance(RESYNC_LATE_S + 0.3)
        late = await _pull(track, clock, 3)
        pts = [p.pts for p in late if isinstance(p, av.Packet) and p.pts is not None]
        assert len(pts) == 3 and pts[0] > 25 * N
        assert all(p % N == 0 for p in pts)
        assert np.all(np.diff(pts) == N)
    finally:
        track.stop()
    decoded = _decode([bytes(p) for p in packets if isinstance(p, av.Packet)])
    spectrum = np.abs(np.fft.rfft(decoded[2 * N : 10 * N]))
    assert abs(np.argmax(spectrum) * SR / (8 * N) - 1000) < 10


# --- aiortc's audio level, in numpy -----------------------------------------------------------


def test_audio_level_matches_aiortc() -> None:
    import aiortc.rtp

    with patches.install("aiortc", OpusSendConfig()) as installed:
        original = installed.original("aiortc.rtp.compute_audio_level_dbov")
        assert aiortc.rtp.compute_audio_level_dbov is patches.audio_level_dbov
    assert aiortc.rtp.compute_audio_level_dbov is original
    rng = np.random.default_rng(0)
    t = np.arange(N) / SR
    signals = [
        np.zeros(N, np.int16),
        np.full(N, 32767, np.int16),
        np.full(N, -32768, np.int16),
        (3000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16),
        rng.integers(-5, 6, N).astype(np.int16),
        rng.integers(-32768, 32768, N).astype(np.int16),
    ]
    for pcm in signals:
        for layout, data in (("mono", pcm), ("stereo", np.repeat(pcm, 2))):
            frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout=layout)
            frame.sample_rate = SR
            assert patches.audio_level_dbov(frame) == original(frame), (layout, pcm[:4])


# --- a real call over loopback ----------------------------------------------------------------


@dataclass
class Heard:
    pcm: np.ndarray  # what rx played out, 48 kHz mono (silence gaps included)
    sent: list[RtpPacket]  # the RTP packets tx sent (after any impairment)
    answer: str  # rx's answer SDP
    link: LinkStats | None  # rx's receive-side stats (its own receive path)


async def _call(
    mic: OutboundAudioTrack, codecs: list[str] | None, play: list[Pcm16], loss_pct: float = 0
) -> Heard:
    """tx (the agent's track) → rx over loopback ICE, tx's RTP optionally lost at random."""
    with patches.install("ringback", OpusSendConfig(), ["127.0.0.1"]):
        return await _call_patched(mic, codecs, play, loss_pct)


async def _call_patched(
    mic: OutboundAudioTrack, codecs: list[str] | None, play: list[Pcm16], loss_pct: float
) -> Heard:
    clock = MonotonicClock()
    tx = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    rx = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    heard: list[np.ndarray] = []
    stats: list[LinkStats] = []
    rates: set[int] = set()
    sent: list[RtpPacket] = []
    playing = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        async with contextlib.aclosing(
            playout_frames(track, clock, on_stats=stats.append)
        ) as frames:
            async for frame in frames:
                rates.add(frame.rate_hz)
                heard.append(frame.pcm)
                playing.set()

    rx.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    transceiver = tx.addTransceiver(mic, direction="sendonly")
    if codecs is not None:
        caps = RTCRtpSender.getCapabilities("audio").codecs
        transceiver.setCodecPreferences([c for c in caps if c.mimeType in codecs])
    await tx.setLocalDescription(await tx.createOffer())

    async def capture(data: bytes, send: patches.SendRtp) -> None:
        sent.append(RtpPacket.parse(data))
        await send(data)

    patches.hook_outgoing_rtp(tx, capture)
    link = impair_sender(tx, Impairment(loss_pct=loss_pct, seed=3)) if loss_pct else None
    try:
        await rx.setRemoteDescription(tx.localDescription)
        await rx.setLocalDescription(await rx.createAnswer())
        await tx.setRemoteDescription(rx.localDescription)
        async with asyncio.timeout(20):
            await playing.wait()
        await asyncio.sleep(0.2)
        for i, pcm in enumerate(play):
            await mic.enqueue(pcm, i)
        mic.end_stream()
        await asyncio.wait_for(mic.wait_drained(), 20)
        await asyncio.sleep(1.0)  # idle long enough for the silence to settle
    finally:
        mic.stop()
        if link is not None:
            await link.aclose()
        await tx.close()
        await rx.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(rates) == 1
    out = np.concatenate(heard).astype(np.float64)
    if rates != {SR}:  # PCMU: 8 kHz, back to 48 kHz for the checks
        out = np.repeat(out, SR // rates.pop())
    return Heard(out, sent, rx.localDescription.sdp, stats[-1] if stats else None)


def _tone_at(x: np.ndarray, seconds: float) -> tuple[float, float]:
    """(frequency, rms) of the loudest `seconds` of x."""
    n = int(seconds * SR)
    energy = np.convolve(x**2, np.ones(n), mode="valid")
    at = int(np.argmax(energy))
    segment = x[at : at + n]
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(n)))
    return float(np.argmax(spectrum) * SR / n), float(np.sqrt(np.mean(segment**2)))


async def test_loopback_call_hears_the_agent_through_inline_opus() -> None:
    mic = OutboundAudioTrack(MonotonicClock(), max_ahead_ms=10_000)
    t = np.arange(int(0.8 * SR)) / SR
    tone = faded((12000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16))
    speech = speech_like(seconds=2.0)
    call = await _call(mic, None, [tone, np.zeros(N * 10, np.int16), speech])
    heard, sent = call.pcm, call.sent

    encoder = mic.encoder
    assert encoder is not None, "the Opus sender did not switch the track to inline encoding"
    assert encoder.frames_encoded >= (tone.size + speech.size) // N
    assert encoder.silent_frames_reused > 0  # idle before and after
    assert "useinbandfec=1" in call.answer

    # What the far end heard: the 1 kHz tone at aiortc's level (mono upmixed at -3 dB).
    freq, rms = _tone_at(heard, 0.5)
    assert abs(freq - 1000) < 5
    expected = 12000 / math.sqrt(2) / math.sqrt(2)
    assert abs(20 * math.log10(rms / expected)) < 1.5, rms
    # ...and the speech after it, with every 20 ms slot there.
    assert heard.size >= (tone.size + speech.size) * 0.95

    # The RTP: Opus, one packet per 20 ms, timestamps 960 apart, and in-band FEC in the speech.
    opus_pt = {p.payload_type for p in sent}
    assert len(opus_pt) == 1
    ts = np.array([p.timestamp for p in sent], np.int64)
    seq = np.array([p.sequence_number for p in sent], np.int64)
    assert np.all(np.diff(seq) % 65536 == 1)
    steps = np.diff(ts) % 2**32
    assert np.all(steps % N == 0) and np.mean(steps == N) > 0.99
    voiced = [p.payload for p in sent if len(p.payload) > 40]
    assert len(voiced) >= speech.size // N
    assert np.mean([has_fec(p) for p in voiced]) > 0.3


async def test_loopback_call_with_pcmu_keeps_aiortcs_encoder() -> None:
    mic = OutboundAudioTrack(MonotonicClock(), max_ahead_ms=10_000)
    t = np.arange(int(0.6 * SR)) / SR
    tone = faded((12000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
    call = await _call(mic, ["audio/PCMU"], [tone])
    assert mic.encoder is None  # frames, encoded by aiortc
    assert {p.payload_type for p in call.sent} == {0}
    freq, _ = _tone_at(call.pcm, 0.4)
    assert abs(freq - 440) < 10


# --- the micro-benchmark ----------------------------------------------------------------------


def test_send_path_bench_quick(tmp_path: Path) -> None:
    data, table = run_quick_bench("send_path", tmp_path)
    rows = {(r["path"], r["load"]): r for r in data["results"]}
    loads = ("speech", "idle", "speech+busy thread")
    paths = ("before", "frames+numpy level", "after")
    assert set(rows) == {(p, load) for p in paths for load in loads}, table
    for r in rows.values():
        assert 0 < r["loop_us"] <= r["process_us"] * 1.2 + 5, table
    # Idle costs next to nothing on the new path; everywhere it saves process CPU.
    assert rows["after", "idle"]["process_us"] < 0.2 * rows["before", "idle"]["process_us"], table
    assert rows["after", "speech"]["process_us"] < rows["before", "speech"]["process_us"], table


async def test_loopback_call_under_loss_recovers_with_the_agents_fec() -> None:
    """10 % random loss on the agent's RTP: the far end rebuilds lost speech frames from the
    in-band FEC of the inline-encoded packets."""
    mic = OutboundAudioTrack(MonotonicClock(), max_ahead_ms=10_000)
    call = await _call(mic, None, [speech_like(seconds=3.0)], loss_pct=10)
    assert mic.encoder is not None
    link = call.link
    assert link is not None and link.path == "ringback", link
    assert link.packets_lost >= 5, link
    # Lost idle packets have no FEC to rebuild them from; lost speech mostly does.
    assert link.frames_fec_recovered >= max(3, 0.2 * link.packets_lost), link
    assert link.frames_fec_recovered + link.frames_concealed >= link.packets_lost, link
