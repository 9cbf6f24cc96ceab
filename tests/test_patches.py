"""The aiortc patch points: start-up check, install/uninstall as one handle, receive path,
Opus send settings, and real loopback calls with the patches and after them."""

from __future__ import annotations

import asyncio
import fractions
import importlib
from collections.abc import Callable
from importlib.metadata import version

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection
from aiortc.codecs import CODECS
from aiortc.rtcsctptransport import RTCSctpTransport

from agent.clock import MonotonicClock
from agent.media import patches
from agent.media.inbound import EncodedAudio
from agent.media.opus import OpusSendConfig, has_fec
from agent.media.outbound import OutboundAudioTrack
from tests.test_opus import speech_like

LOOPBACK = ["127.0.0.1"]
# What every install replaces, whatever it is asked for.
DATA_CHANNELS = "aiortc.rtcsctptransport.RTCSctpTransport._data_channel_receive"
# What a full install replaces; every other patch point is only relied on (and checked).
REPLACED = {
    DATA_CHANNELS,
    "aioice.ice.get_host_addresses",
    "aiortc.rtcrtpreceiver.JitterBuffer",
    "aiortc.rtcrtpreceiver.get_decoder",
    "aiortc.rtcrtpreceiver.RTCRtpReceiver.receive",
    "aiortc.rtcrtpsender.get_encoder",
    "aiortc.rtcrtpsender.RTCRtpSender.send",
    "aiortc.rtcrtpsender.RTCRtpSender.replaceTrack",
    "aiortc.rtp.compute_audio_level_dbov",
    "CODECS[audio] audio/opus parameters",
}


def patch_points() -> dict[str, object]:
    """The object at every patch point now, and each codec's parameters dict (the Opus entry
    of CODECS is patched by giving it another one)."""
    out: dict[str, object] = {}
    for module_name, dotted in patches.PATCH_POINTS:
        target: object = importlib.import_module(module_name)
        for attr in dotted.split("."):
            target = getattr(target, attr)
        out[f"{module_name}.{dotted}"] = target
    for kind, codecs in CODECS.items():
        for codec in codecs:
            out[f"CODECS[{kind}] {codec.mimeType} parameters"] = codec.parameters
    return out


def changed(before: dict[str, object]) -> set[str]:
    now = patch_points()
    assert now.keys() == before.keys()
    return {name for name, obj in now.items() if obj is not before[name]}


def codec_parameters() -> dict[str, dict[str, object]]:
    return {c.mimeType: dict(c.parameters) for codecs in CODECS.values() for c in codecs}


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
    real = version  # what agent.media.patches imports, before it is replaced
    monkeypatch.setattr(patches, "version", lambda p: "9.9.9" if p == package else real(p))
    with pytest.raises(patches.PatchError, match=rf"{package} 9\.9\.9 .* pinned to {pinned}"):
        patches.check()


def test_every_patch_checks_the_pins_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioice.ice
    import aiortc.rtcrtpreceiver as receiver
    import aiortc.rtcrtpsender as sender

    before = (receiver.JitterBuffer, sender.get_encoder, aioice.ice.get_host_addresses)  # type: ignore[attr-defined]  # a patch point aiortc does not re-export
    real = version  # what agent.media.patches imports, before it is replaced
    monkeypatch.setattr(patches, "version", lambda p: "9.9.9" if p == "aiortc" else real(p))
    for install in (
        lambda: patches.install("ringback", None),
        lambda: patches.install("aiortc", OpusSendConfig()),
        lambda: patches.install("aiortc", None, ["127.0.0.1"]),
        lambda: patches.hook_outgoing_rtp(object(), _pass),
        lambda: patches.install("ringback", OpusSendConfig()),
        lambda: patches.install("ringback", OpusSendConfig(), ["127.0.0.1"], shared=True),
    ):
        with pytest.raises(patches.PatchError, match="pinned"):
            install()
    assert (receiver.JitterBuffer, sender.get_encoder, aioice.ice.get_host_addresses) == before  # type: ignore[attr-defined]  # a patch point aiortc does not re-export


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

    assert receiver.JitterBuffer is JitterBuffer  # type: ignore[attr-defined]  # a patch point aiortc does not re-export
    installed = patches.install("ringback", None)
    try:
        audio = receiver.JitterBuffer(capacity=16, prefetch=4)  # type: ignore[attr-defined]  # a patch point aiortc does not re-export
        video = receiver.JitterBuffer(capacity=512, is_video=True)  # type: ignore[attr-defined]  # a patch point aiortc does not re-export
        assert not isinstance(audio, JitterBuffer), "audio must bypass aiortc's fixed buffer"
        assert isinstance(video, JitterBuffer), "video keeps aiortc's buffer"
        opus = next(c for c in CODECS["audio"] if c.name == "opus")
        assert type(receiver.get_decoder(opus)).__name__ == "PassThroughDecoder"
    finally:
        installed.uninstall()
    assert receiver.JitterBuffer is JitterBuffer


def test_opus_is_sent_at_speech_bitrate_with_in_band_fec() -> None:
    import aiortc.rtcrtpsender as sender

    opus = next(c for c in CODECS["audio"] if c.name == "opus")
    with patches.install("aiortc", OpusSendConfig(bitrate_bps=32_000, packet_loss_pct=10)):
        assert opus.parameters["useinbandfec"] == 1 and opus.parameters["minptime"] == 10
        encoder = sender.get_encoder(opus)  # type: ignore[attr-defined]  # a patch point aiortc does not re-export
    assert "useinbandfec" not in opus.parameters, "uninstall puts aiortc's SDP back"
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

    installed = patches.install("ringback", None, ["127.0.0.1"])
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
        # aiortc's private (name-mangled) decoder queue: where the patch routes received audio
        direct = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
        assert isinstance(direct, patches.DirectQueue)
        assert direct._thread_queue.empty(), "nothing went to the decoder thread"
        await agent.close()
        with pytest.raises(MediaStreamError):
            while True:  # the frames already queued, then the end of the track
                await asyncio.wait_for(track.recv(), 5)  # type: ignore[attr-defined]
    finally:
        await caller.close()
        await agent.close()
        installed.uninstall()


# --- one handle: install, uninstall, twice ----------------------------------------------------


def test_uninstall_restores_every_patch_point() -> None:
    before, params = patch_points(), codec_parameters()
    assert len(before) >= len(patches.PATCH_POINTS) == 19
    installed = patches.install("ringback", OpusSendConfig(), LOOPBACK)
    try:
        assert installed.installed
        assert changed(before) == REPLACED, "a full install replaces exactly these"
        for name in REPLACED - {"CODECS[audio] audio/opus parameters"}:
            assert installed.original(name) is before[name], name
        assert codec_parameters()["audio/opus"] == {**params["audio/opus"], **patches.FEC_SDP}
    finally:
        installed.uninstall()
    assert not installed.installed
    assert changed(before) == set(), "every patch point is its original object again"
    for name, obj in patch_points().items():
        assert obj is before[name], name
    assert codec_parameters() == params
    installed.uninstall()  # a second call does nothing
    assert changed(before) == set()


def test_each_part_installs_only_itself() -> None:
    before = patch_points()
    parts = {
        ("ringback", None, ()): {
            DATA_CHANNELS,
            "aiortc.rtcrtpreceiver.JitterBuffer",
            "aiortc.rtcrtpreceiver.get_decoder",
            "aiortc.rtcrtpreceiver.RTCRtpReceiver.receive",
        },
        ("aiortc", OpusSendConfig(), ()): {
            DATA_CHANNELS,
            "aiortc.rtcrtpsender.get_encoder",
            "aiortc.rtcrtpsender.RTCRtpSender.send",
            "aiortc.rtcrtpsender.RTCRtpSender.replaceTrack",
            "aiortc.rtp.compute_audio_level_dbov",
            "CODECS[audio] audio/opus parameters",
        },
        ("aiortc", None, ("127.0.0.1",)): {DATA_CHANNELS, "aioice.ice.get_host_addresses"},
        ("aiortc", None, ()): {DATA_CHANNELS},
    }
    for (path, send, hosts), replaced in parts.items():
        with patches.install(path, send, hosts) as installed:
            assert changed(before) == replaced, installed
        assert changed(before) == set(), installed
    with pytest.raises(ValueError, match="receive path"):
        patches.install("fast", None)


def test_a_second_install_is_refused_unless_shared() -> None:
    import aiortc.rtcrtpreceiver as receiver

    before = patch_points()
    first = patches.install("ringback", OpusSendConfig(), LOOPBACK)
    try:
        patched = patch_points()
        again: Callable[[], object]
        for again in (
            lambda: patches.install("ringback", OpusSendConfig(), LOOPBACK),
            lambda: patches.install("aiortc", None, LOOPBACK),
        ):
            with pytest.raises(
                patches.PatchError, match=r"already patched .*receive_path='ringback'"
            ):
                again()
        with pytest.raises(patches.PatchError, match="other settings"):
            patches.install("aiortc", OpusSendConfig(), LOOPBACK, shared=True)
        with pytest.raises(patches.PatchError, match="other settings"):
            patches.install("ringback", OpusSendConfig(bitrate_bps=16_000), LOOPBACK, shared=True)
        assert changed(patched) == set(), "a refused install touches nothing"

        second = patches.install("ringback", OpusSendConfig(), LOOPBACK, shared=True)
        assert second is not first and second.settings == first.settings
        assert changed(patched) == set(), "sharing installs nothing more"
        first.uninstall()
        assert not first.installed and second.installed
        assert changed(patched) == set(), "still in use by the second handle"
        assert (
            second.original("aiortc.rtcrtpreceiver.JitterBuffer")
            is before["aiortc.rtcrtpreceiver.JitterBuffer"]
        )
        second.uninstall()
        assert changed(before) == set(), "the last handle restores everything"
    finally:
        first.uninstall()
    # And once uninstalled, another install (other settings) is welcome.
    with patches.install("aiortc", None, LOOPBACK) as third:
        assert receiver.JitterBuffer is before["aiortc.rtcrtpreceiver.JitterBuffer"]  # type: ignore[attr-defined]  # a patch point aiortc does not re-export
        with pytest.raises(patches.PatchError, match="not replaced"):
            third.original("aiortc.rtcrtpreceiver.JitterBuffer")
    assert changed(before) == set()


def test_a_failed_install_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenOpus:
        mimeType = "audio/opus"

        @property
        def parameters(self) -> dict[str, object]:
            raise RuntimeError("broken codec")

    before = patch_points()
    monkeypatch.setitem(CODECS, "audio", [BrokenOpus()])
    with pytest.raises(RuntimeError, match="broken codec"):  # after the host and receive parts
        patches.install("ringback", OpusSendConfig(), LOOPBACK)
    monkeypatch.undo()
    assert changed(before) == set()
    with patches.install("ringback", None):  # and nothing is left marked as installed
        pass


async def _loopback_call() -> tuple[list[object], OutboundAudioTrack, str]:
    """A caller sending from an OutboundAudioTrack (as the agent does) to a second peer over
    loopback ICE: what that peer's track yields first, the caller's track, the answer SDP."""
    from aiortc.mediastreams import MediaStreamTrack

    mic = OutboundAudioTrack(MonotonicClock())
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    agent = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    caller.addTransceiver(mic, direction="sendonly")
    tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    agent.on("track", tracks.put_nowait)
    try:
        await caller.setLocalDescription(await caller.createOffer())
        await agent.setRemoteDescription(caller.localDescription)
        await agent.setLocalDescription(await agent.createAnswer())
        await caller.setRemoteDescription(agent.localDescription)
        track = await asyncio.wait_for(tracks.get(), 10)
        got: list[object] = [await asyncio.wait_for(track.recv(), 10) for _ in range(25)]
        return got, mic, str(agent.localDescription.sdp)
    finally:
        mic.stop()
        await caller.close()
        await agent.close()


async def test_a_loopback_call_works_with_the_patches_and_after_uninstall() -> None:
    before = patch_points()
    with patches.install("ringback", OpusSendConfig(), LOOPBACK):
        got, mic, answer = await _loopback_call()
    assert all(isinstance(a, EncodedAudio) and a.codec == "opus" for a in got), got[:2]
    assert mic.encoder is not None, "the caller's track encoded its own Opus"
    assert "useinbandfec=1" in answer
    assert changed(before) == set()

    # aiortc's own paths; only the host candidates are pinned (aioice never offers loopback).
    with patches.install("aiortc", None, LOOPBACK):
        assert changed(before) == {DATA_CHANNELS, "aioice.ice.get_host_addresses"}
        got, mic, answer = await _loopback_call()
    assert all(isinstance(f, av.AudioFrame) and f.sample_rate == 48_000 for f in got), got[:2]
    assert mic.encoder is None, "aiortc encoded the track's frames itself"
    assert "useinbandfec" not in answer
    assert changed(before) == set()


# --- data channels: text that is not UTF-8 ----------------------------------------------------


async def send_as_text(channel: RTCDataChannel, raw: bytes) -> None:
    """Send `raw` with the string PPID, as a peer that does not check its UTF-8 does (aiortc's
    own `send` encodes a str): queued behind what `channel` already sends, like aiortc's."""
    from aiortc.rtcsctptransport import WEBRTC_STRING

    sctp = channel.transport
    channel._addBufferedAmount(len(raw))
    sctp._data_channel_queue.append((channel, WEBRTC_STRING, raw))
    await sctp._data_channel_flush()


# A bad start byte, a cut sequence, an encoded surrogate.
NOT_UTF8 = (b"\xff\xfe\xfd", b'{"type":"ping","t":\xc3}', b"\xed\xa0\x80")


async def _text_that_is_not_utf8(
    patched: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str | bytes], str]:
    """Two in-process peers: one sends NOT_UTF8 as text, then valid text. What the other's
    channel received, and its connection state after."""
    received: list[str | bytes] = []
    settled = asyncio.Event()  # the last message arrived, or the connection ended
    with patches.install("aiortc", None, LOOPBACK) as installed:
        if not patched:  # aiortc's own receive, as without the patch
            monkeypatch.setattr(
                RTCSctpTransport, "_data_channel_receive", installed.original(DATA_CHANNELS)
            )
        caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        agent = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @agent.on("connectionstatechange")
        def on_state() -> None:
            if agent.connectionState in ("failed", "closed"):
                settled.set()

        @agent.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                received.append(message)
                if message == "é the end":
                    settled.set()

        opened = asyncio.Event()
        channel = caller.createDataChannel("events")
        channel.on("open", opened.set)
        try:
            await caller.setLocalDescription(await caller.createOffer())
            await agent.setRemoteDescription(caller.localDescription)
            await agent.setLocalDescription(await agent.createAnswer())
            await caller.setRemoteDescription(agent.localDescription)
            await asyncio.wait_for(opened.wait(), 10)
            for raw in NOT_UTF8:
                await send_as_text(channel, raw)
            channel.send('{"type":"ping"}')
            channel.send("é the end")
            await asyncio.wait_for(settled.wait(), 10)
            return received, agent.connectionState
        finally:
            await caller.close()
            await agent.close()
            monkeypatch.undo()


async def test_text_that_is_not_utf8_arrives_as_bytes_and_the_call_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received, state = await _text_that_is_not_utf8(True, monkeypatch)
    assert received == [*NOT_UTF8, '{"type":"ping"}', "é the end"], received
    assert state == "connected"


async def test_without_the_patch_text_that_is_not_utf8_ends_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why the patch point exists: aiortc's own decode raises in its DTLS reader."""
    received, state = await _text_that_is_not_utf8(False, monkeypatch)
    assert received == [] and state in ("failed", "closed"), (received, state)
