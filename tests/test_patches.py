"""The aiortc patch points: start-up check, receive-path switch, Opus send settings."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import CODECS

from agent.media import patches
from agent.media.opus import OpusSendConfig, has_fec
from tests.test_opus import speech_like


def test_check_names_a_missing_symbol(monkeypatch: pytest.MonkeyPatch) -> None:
    patches.check()  # the pinned aiortc has every patch point
    import aiortc.rtcrtpreceiver

    monkeypatch.delattr(aiortc.rtcrtpreceiver, "get_decoder")
    with pytest.raises(patches.PatchError, match=r"aiortc\.rtcrtpreceiver\.get_decoder"):
        patches.check()


@pytest.mark.parametrize(("package", "pinned"), [("aiortc", r"1\.16\.0"), ("aioice", r"0\.13\.0")])
def test_check_refuses_another_version(
    monkeypatch: pytest.MonkeyPatch, package: str, pinned: str
) -> None:
    real = patches.version
    monkeypatch.setattr(patches, "version", lambda p: "9.9.9" if p == package else real(p))
    with pytest.raises(patches.PatchError, match=rf"{package} 9\.9\.9 .* pinned to {pinned}"):
        patches.check()


def test_every_patch_checks_the_pins_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioice.ice
    import aiortc.rtcrtpreceiver as receiver
    import aiortc.rtcrtpsender as sender

    before = (receiver.JitterBuffer, sender.get_encoder, aioice.ice.get_host_addresses)
    real = patches.version
    monkeypatch.setattr(patches, "version", lambda p: "9.9.9" if p == "aiortc" else real(p))
    monkeypatch.setattr(patches, "_checked", False)
    for install in (
        lambda: patches.install_receive_path(),
        lambda: patches.configure_opus(OpusSendConfig()),
        lambda: patches.pin_host_addresses(["127.0.0.1"]),
        lambda: patches.hook_outgoing_rtp(object(), _pass),
        lambda: patches.install("ringback", OpusSendConfig()),
    ):
        with pytest.raises(patches.PatchError, match="pinned"):
            install()
    assert (receiver.JitterBuffer, sender.get_encoder, aioice.ice.get_host_addresses) == before


async def _pass(data: bytes, send: patches.SendRtp) -> None:
    await send(data)


async def test_outgoing_rtp_hook_sees_rtp_only() -> None:
    sent: list[bytes] = []
    hooked: list[bytes] = []

    class Transport:
        async def _send_rtp(self, data: bytes) -> None:
            sent.append(data)

    class Sender:
        transport = Transport()

    class Peer:
        def getSenders(self) -> list[Sender]:
            return [Sender(), Sender()]  # two senders on one (BUNDLE) transport

    async def drop_odd(data: bytes, send: patches.SendRtp) -> None:
        hooked.append(data)
        if data[2] % 2 == 0:
            await send(data)

    patches.hook_outgoing_rtp(Peer(), drop_odd)
    transport = Sender.transport
    rtp = [bytes([0x80, 111, seq]) for seq in range(4)]
    rtcp = bytes([0x80, 200, 0])  # a sender report
    for packet in [*rtp, rtcp]:
        await transport._send_rtp(packet)
    assert hooked == rtp, "each RTP packet passes the hook once, RTCP never"
    assert sent == [rtp[0], rtp[2], rtcp]


def test_outgoing_rtp_hook_needs_a_transport() -> None:
    class Peer:
        def getSenders(self) -> list[object]:
            return []

    with pytest.raises(patches.PatchError, match="no sender transport"):
        patches.hook_outgoing_rtp(Peer(), _pass)


def test_receive_path_switches_and_restores() -> None:
    import aiortc.rtcrtpreceiver as receiver
    from aiortc.jitterbuffer import JitterBuffer

    patches.uninstall_receive_path()
    assert receiver.JitterBuffer is JitterBuffer
    patches.install_receive_path()
    try:
        audio = receiver.JitterBuffer(capacity=16, prefetch=4)
        video = receiver.JitterBuffer(capacity=512, is_video=True)
        assert not isinstance(audio, JitterBuffer), "audio must bypass aiortc's fixed buffer"
        assert isinstance(video, JitterBuffer), "video keeps aiortc's buffer"
        opus = next(c for c in CODECS["audio"] if c.name == "opus")
        assert type(receiver.get_decoder(opus)).__name__ == "PassThroughDecoder"
    finally:
        patches.uninstall_receive_path()
    assert receiver.JitterBuffer is JitterBuffer


def test_opus_is_sent_at_speech_bitrate_with_in_band_fec() -> None:
    import aiortc.rtcrtpsender as sender

    patches.configure_opus(OpusSendConfig(bitrate_bps=32_000, packet_loss_pct=10))
    opus = next(c for c in CODECS["audio"] if c.name == "opus")
    assert opus.parameters["useinbandfec"] == 1 and opus.parameters["minptime"] == 10
    encoder = sender.get_encoder(opus)
    pcm = speech_like(seconds=3.0)
    payloads: list[bytes] = []
    for i in range(pcm.size // 960):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * 960 : (i + 1) * 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48_000
        frame.pts = i * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        packets, _ = encoder.encode(frame)
        payloads.extend(packets)
    assert len(payloads) >= 140
    kbps = sum(len(p) for p in payloads) * 8 / 3.0 / 1000
    assert 20 <= kbps <= 45, f"{kbps:.1f} kb/s, expected about 32"
    with_fec = np.mean([has_fec(p) for p in payloads[1:]])
    assert with_fec > 0.3, f"only {with_fec:.0%} of packets carry in-band FEC"


async def test_received_audio_reaches_the_track_on_the_loop_not_through_a_thread() -> None:
    """A real loopback call: every Opus packet is in the track's queue without passing
    aiortc's decoder thread, and closing the peer still ends the track."""
    import asyncio

    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

    from agent.media.inbound import EncodedAudio

    patches.pin_host_addresses(["127.0.0.1"])
    patches.install_receive_path()
    caller, agent = RTCPeerConnection(), RTCPeerConnection()
    caller.addTrack(AudioStreamTrack())  # aiortc's silence source: real Opus packets
    tracks: asyncio.Queue[object] = asyncio.Queue()
    agent.on("track", tracks.put_nowait)
    try:
        await caller.setLocalDescription(await caller.createOffer())
        await agent.setRemoteDescription(caller.localDescription)
        await agent.setLocalDescription(await agent.createAnswer())
        await caller.setRemoteDescription(agent.localDescription)
        track = await asyncio.wait_for(tracks.get(), 10)
        got = [await asyncio.wait_for(track.recv(), 10) for _ in range(25)]  # type: ignore[attr-defined]
        assert all(isinstance(a, EncodedAudio) and a.codec == "opus" for a in got)
        (receiver,) = agent.getReceivers()
        direct = receiver._RTCRtpReceiver__decoder_queue
        assert isinstance(direct, patches.DirectQueue)
        assert direct._thread_queue.empty(), "nothing went to the decoder thread"
        await agent.close()
        with pytest.raises(MediaStreamError):
            while True:  # the frames already queued, then the end of the track
                await asyncio.wait_for(track.recv(), 5)  # type: ignore[attr-defined]
    finally:
        await caller.close()
        await agent.close()
