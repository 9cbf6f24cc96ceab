"""The aiortc patch points: start-up check, install/uninstall as one handle, receive path,
Opus send settings, and real loopback calls with the patches and after them."""

from __future__ import annotations

import asyncio
import fractions
import importlib
import random
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

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
REASSEMBLY = "aiortc.rtcsctptransport.RTCSctpTransport._receive_data_chunk"
ALWAYS = {DATA_CHANNELS, REASSEMBLY}
# What a full install replaces; every other patch point is only relied on (and checked).
REPLACED = {
    *ALWAYS,
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
    assert len(before) >= len(patches.PATCH_POINTS) == 23
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
            *ALWAYS,
            "aiortc.rtcrtpreceiver.JitterBuffer",
            "aiortc.rtcrtpreceiver.get_decoder",
            "aiortc.rtcrtpreceiver.RTCRtpReceiver.receive",
        },
        ("aiortc", OpusSendConfig(), ()): {
            *ALWAYS,
            "aiortc.rtcrtpsender.get_encoder",
            "aiortc.rtcrtpsender.RTCRtpSender.send",
            "aiortc.rtcrtpsender.RTCRtpSender.replaceTrack",
            "aiortc.rtp.compute_audio_level_dbov",
            "CODECS[audio] audio/opus parameters",
        },
        ("aiortc", None, ("127.0.0.1",)): {*ALWAYS, "aioice.ice.get_host_addresses"},
        ("aiortc", None, ()): ALWAYS,
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
        assert changed(before) == {*ALWAYS, "aioice.ice.get_host_addresses"}
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


# --- data channels: reassembly of large messages ----------------------------------------------


class _StubDtls:
    state = "new"


def _sctp(receive: Callable[..., object] | None = None) -> tuple[RTCSctpTransport, list[object]]:
    """An RTCSctpTransport fed chunks by hand: what it delivers, in order, goes to the list."""
    sctp = RTCSctpTransport(_StubDtls())  # type: ignore[arg-type]  # only its state is read
    delivered: list[object] = []

    async def deliver(stream_id: int, pp_id: int, data: bytes) -> None:
        delivered.append((stream_id, pp_id, data))

    sctp._receive = deliver  # type: ignore[method-assign]  # record instead of a channel
    if receive is not None:
        sctp._receive_data_chunk = receive.__get__(sctp)  # type: ignore[method-assign]
    return sctp, delivered


def _scenario(rng: random.Random) -> tuple[int, list[object]]:
    """A random receive history: (initial TSN, events). Messages of 1-6 fragments on three
    streams, ordered, unordered or mixed; delivered reordered, duplicated or lost, with
    FORWARD-TSNs past some losses (as a partially reliable sender abandons messages)."""
    from aiortc.rtcsctptransport import (
        SCTP_DATA_FIRST_FRAG,
        SCTP_DATA_LAST_FRAG,
        SCTP_DATA_UNORDERED,
        DataChunk,
        ForwardTsnChunk,
    )

    first_tsn = rng.choice([1, 2**32 - 25, rng.randrange(2**32)])
    tsn = first_tsn
    ssn = [0, 0, 0]
    modes = [rng.choice(("ordered", "unordered", "mixed")) for _ in ssn]
    chunks: list[DataChunk] = []
    ssn_of: dict[int, tuple[int, int, bool]] = {}  # tsn -> (stream, ssn, ordered)
    for m in range(rng.randrange(3, 25)):
        stream = rng.randrange(3)
        ordered = modes[stream] == "ordered" or (modes[stream] == "mixed" and rng.random() < 0.5)
        n = rng.randrange(1, 7)
        for i in range(n):
            chunk = DataChunk()
            chunk.flags = (SCTP_DATA_FIRST_FRAG if i == 0 else 0) | (
                SCTP_DATA_LAST_FRAG if i == n - 1 else 0
            )
            if not ordered:
                chunk.flags |= SCTP_DATA_UNORDERED
            chunk.tsn, chunk.stream_id, chunk.protocol = tsn, stream, 53
            chunk.stream_seq = ssn[stream] if ordered else 0
            chunk.user_data = f"{m}.{i};".encode()
            chunks.append(chunk)
            ssn_of[tsn] = (stream, chunk.stream_seq, ordered)
            tsn = (tsn + 1) % 2**32
        if ordered:
            ssn[stream] = (ssn[stream] + 1) % 2**16
    order = list(chunks)
    for i in range(len(order) - 1):  # local reordering
        if rng.random() < 0.3:
            j = min(len(order) - 1, i + rng.randrange(1, 6))
            order[i], order[j] = order[j], order[i]
    events: list[object] = []
    lost: list[int] = []
    for k, chunk in enumerate(order):
        if rng.random() < 0.1:
            lost.append(chunk.tsn)
            continue
        events.append(chunk)
        if rng.random() < 0.1:
            events.append(rng.choice(order[: k + 1]))  # a duplicate
        if lost and rng.random() < 0.15:  # abandon what was lost so far
            forward = ForwardTsnChunk()
            cumulative = max(lost, key=lambda t: (t - first_tsn) % 2**32)
            forward.cumulative_tsn = cumulative
            streams: dict[int, int] = {}
            for t in lost:
                stream, seq, ordered = ssn_of[t]
                if ordered:
                    streams[stream] = seq  # lost in TSN order, so the last is the largest
            forward.streams = sorted(streams.items())
            events.append(forward)
            lost = []
    for chunk in order:  # then every chunk once more, as retransmissions would
        if rng.random() < 0.5:
            events.append(chunk)
    return first_tsn, events


async def test_reassembly_delivers_exactly_what_aiortc_does_chunk_by_chunk() -> None:
    """Random histories with loss, reordering, duplicates, mixed ordering and FORWARD-TSN: after
    every chunk, the patched transport has delivered the same messages in the same order, and
    has the same window and reassembly state, as aiortc's own."""
    from aiortc.rtcsctptransport import DataChunk

    with patches.install("aiortc", None) as installed:
        patched_receive = RTCSctpTransport._receive_data_chunk
        original_receive = installed.original(REASSEMBLY)
    assert patched_receive is not original_receive
    rng = random.Random(20261207)
    delivered_any = 0
    for _ in range(400):
        first_tsn, events = _scenario(rng)
        ours, ours_got = _sctp(patched_receive)
        theirs, theirs_got = _sctp(original_receive)
        for sctp in (ours, theirs):
            sctp._last_received_tsn = (first_tsn - 1) % 2**32
        for step, event in enumerate(events):
            for sctp in (ours, theirs):
                if isinstance(event, DataChunk):
                    await sctp._receive_data_chunk(event)
                else:
                    await sctp._receive_forward_tsn_chunk(event)  # type: ignore[arg-type]
            assert ours_got == theirs_got, (first_tsn, step)
            assert ours._advertised_rwnd == theirs._advertised_rwnd
            assert ours._last_received_tsn == theirs._last_received_tsn
            assert {s: [c.tsn for c in i.reassembly] for s, i in ours._inbound_streams.items()} == {
                s: [c.tsn for c in i.reassembly] for s, i in theirs._inbound_streams.items()
            }
        delivered_any += len(ours_got)
    assert delivered_any > 1000  # the histories do deliver


class _LoopLag:
    """A ticker on the event loop: the longest it was held up (how late a 5 ms sleep woke)."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.005)
            self.max_s = max(self.max_s, loop.time() - t0 - 0.005)

    def __enter__(self) -> _LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _send_over_data_channels(
    messages: list[tuple[int, bytes]], ordered: bool, channels: int = 1
) -> tuple[dict[int, list[bytes]], float, float]:
    """Two in-process peers (whatever aiortc is patched with now): the caller opens `channels`
    data channels and sends `messages` ((channel index, payload)) ignoring the advertised
    max-message-size, as a hostile peer does. What each channel of the other peer received, in
    order; the longest the event loop was held up meanwhile; and how long the loop spent in
    the other peer's `_receive_data_chunk` in all."""
    received: dict[int, list[bytes]] = {i: [] for i in range(channels)}
    done = asyncio.Event()
    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    agent = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    @agent.on("datachannel")
    def on_channel(channel: RTCDataChannel) -> None:
        index = int(channel.label)

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            assert isinstance(message, bytes)
            received[index].append(message)
            if sum(map(len, received.values())) == len(messages):
                done.set()

    sent = [caller.createDataChannel(str(i), ordered=ordered) for i in range(channels)]
    opened = [asyncio.Event() for _ in sent]
    for channel, event in zip(sent, opened, strict=True):
        channel.on("open", event.set)
    receive_data_chunk = RTCSctpTransport._receive_data_chunk
    reassembly_s = 0.0

    async def timed(self: RTCSctpTransport, chunk: Any) -> None:
        nonlocal reassembly_s
        t0 = time.perf_counter()
        try:
            await receive_data_chunk(self, chunk)
        finally:
            if self is agent.sctp:
                reassembly_s += time.perf_counter() - t0

    try:
        await caller.setLocalDescription(await caller.createOffer())
        await agent.setRemoteDescription(caller.localDescription)
        await agent.setLocalDescription(await agent.createAnswer())
        await caller.setRemoteDescription(agent.localDescription)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 10)
        sent[0].transport._remote_max_message_size = 0  # send past the advertised 256 KiB
        RTCSctpTransport._receive_data_chunk = timed  # type: ignore[method-assign]
        with _LoopLag() as lag:
            for index, payload in messages:
                sent[index].send(payload)
            await asyncio.wait_for(done.wait(), 120)
        return received, lag.max_s, reassembly_s
    finally:
        RTCSctpTransport._receive_data_chunk = receive_data_chunk  # type: ignore[method-assign]
        await caller.close()
        await agent.close()


def _payload(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


async def test_a_4_mb_message_arrives_intact_without_holding_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiortc's reassembly walks the whole message so far after each of its ~3,500 chunks:
    ~1 s of the loop's time for 4 MB here (every call's audio waits), 10-20x what linear
    reassembly takes. The loop is never held long by either: asyncio reads one datagram per
    iteration, and one walk takes a few ms."""
    big = _payload(4 << 20, 1)
    with patches.install("aiortc", None, LOOPBACK) as installed:
        received, lag_s, reassembly_s = await _send_over_data_channels([(0, big)], ordered=True)
        assert received == {0: [big]}
        assert lag_s < 0.1, f"the loop was held {lag_s * 1000:.0f} ms"

        monkeypatch.setattr(RTCSctpTransport, "_receive_data_chunk", installed.original(REASSEMBLY))
        received, _, original_s = await _send_over_data_channels([(0, big)], ordered=True)
        monkeypatch.undo()
    assert received == {0: [big]}
    assert original_s > 5 * reassembly_s and original_s > 0.3, (original_s, reassembly_s)


@pytest.mark.parametrize("ordered", [True, False])
async def test_many_messages_on_two_channels_arrive_intact(ordered: bool) -> None:
    """Small and large messages interleaved on two channels, ordered or not: each arrives
    byte-identical (in the order sent, on an ordered channel)."""
    sizes = [1, 100, 1200, 1201, 70_000, 5, 300_000, 0, 2500, 1_000_000, 17] * 3
    messages = [(i % 2, _payload(size, i)) for i, size in enumerate(sizes)]
    messages += [(i % 2, b"small %d" % i) for i in range(500)]
    with patches.install("aiortc", None, LOOPBACK):
        received, _, _ = await _send_over_data_channels(messages, ordered, channels=2)
    for index in (0, 1):
        sent = [payload for i, payload in messages if i == index]
        got = received[index] if ordered else sorted(received[index])
        assert got == (sent if ordered else sorted(sent)), index
