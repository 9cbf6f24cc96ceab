"""Patch points into aiortc/aioice private symbols, checked at start-up.

aiortc and aioice are pinned (pyproject.toml); every install function runs `check()`, which fails with a message naming the symbol if an
upgrade moves one we rely on, instead of the server misbehaving later.

What is patched, and why (facts in the README's "Receive path" and "Send path" sections):
- `aiortc.rtcrtpreceiver.JitterBuffer` / `get_decoder`: aiortc's fixed audio buffer adds
  ~80 ms, ratchets to ~280 ms after one loss and has no concealment. For Opus, PCMU and PCMA
  the patched receiver hands each RTP packet, stamped with its arrival time, straight to
  the track as `EncodedAudio`; agent/media/inbound.py buffers (agent/media/rtp_jitter.py) and decodes it
  (agent/media/opus.py, agent/media/concealment.py). Video and other codecs keep aiortc's path.
- `RTCRtpReceiver.receive` / its private decoder queue: aiortc passes every packet to a
  decoder thread and back to the loop (`queue.Queue.put`, a thread wake-up,
  `run_coroutine_threadsafe`), per packet per call, only for our pass-through "decode".
  Those packets now go straight into the track's queue on the event loop (`DirectQueue`);
  the decoder thread still starts but only waits for aiortc's stop signal. One Python
  thread fewer waking 50 times a second per call also spares the loop the GIL hand-offs.
- `aiortc.codecs.CODECS` (Opus fmtp): answers advertise `useinbandfec=1;minptime=10`, so
  browsers put FEC in their packets.
- `aiortc.rtcrtpsender.get_encoder`: Opus at a speech bitrate with in-band FEC.
- `RTCRtpSender.send` / `replaceTrack`: when a sender starts with Opus and its track is an
  OutboundAudioTrack, the track is told to encode inline (`encode_opus`): it returns encoded
  packets, which `_next_encoded_frame` only packs (`OpusEncoder.pack`) instead of running the
  encoder in the default thread pool and computing the audio level, once per 20 ms per call.
- `aiortc.rtp.compute_audio_level_dbov`: the same level in numpy (~3 µs a frame instead of
  aiortc's pure-Python loop, ~56 µs on the event loop) for tracks that still hand aiortc frames.
- `aioice.ice.get_host_addresses`: aioice never offers loopback; tests pin 127.0.0.1.
- `RTCDtlsTransport._send_rtp` (per connection, `hook_outgoing_rtp`): seeded in-process
  impairment of what a test or benchmark peer sends.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import version
from typing import Any

import numpy as np

from agent.media.inbound import EncodedAudio
from agent.media.opus import OpusSendConfig, OpusUnavailable, configure_send_codec
from agent.media.outbound import OutboundAudioTrack

log = logging.getLogger(__name__)

# Pinned in pyproject.toml: these packages' private symbols are replaced below.
PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0"}

PATCH_POINTS: tuple[tuple[str, str], ...] = (
    ("aioice.ice", "get_host_addresses"),
    ("aiortc.rtcrtpreceiver", "JitterBuffer"),
    ("aiortc.rtcrtpreceiver", "get_decoder"),
    ("aiortc.rtcrtpreceiver", "RTCRtpReceiver.receive"),
    ("aiortc.rtcrtpreceiver", "RTCRtpReceiver._RTCRtpReceiver__stop_decoder"),
    ("aiortc.rtcrtpreceiver", "decoder_worker"),
    ("aiortc.rtcrtpsender", "get_encoder"),
    ("aiortc.codecs", "CODECS"),
    ("aiortc.codecs.opus", "OpusEncoder"),
    ("aiortc.jitterbuffer", "JitterFrame"),
    ("aiortc.rtcdtlstransport", "RTCDtlsTransport._send_rtp"),
    ("aiortc.rtcrtpsender", "RTCRtpSender.send"),
    ("aiortc.rtcrtpsender", "RTCRtpSender.replaceTrack"),
    ("aiortc.rtcrtpsender", "RTCRtpSender._next_encoded_frame"),
    ("aiortc.codecs.opus", "OpusEncoder.pack"),
    ("aiortc.rtp", "compute_audio_level_dbov"),
)

OWN_DECODE = frozenset({"opus", "PCMU", "PCMA"})
RECEIVE_PATHS = ("ringback", "aiortc")

SendRtp = Callable[[bytes], Awaitable[None]]
RtpHook = Callable[[bytes, SendRtp], Awaitable[None]]


class PatchError(RuntimeError):
    pass


_checked = False


def check() -> None:
    """Fail, naming the package or symbol, if the installed aiortc/aioice is not the pinned one."""
    global _checked
    for package, pinned in PINNED.items():
        installed = version(package)
        if installed != pinned:
            raise PatchError(
                f"{package} {installed} is installed but ringback is pinned to {pinned}; "
                "its private symbols are patched, reinstall with `make clean run`"
            )
    for module_name, dotted in PATCH_POINTS:
        target: Any = importlib.import_module(module_name)
        for attr in dotted.split("."):
            target = getattr(target, attr, None)
        if target is None:
            raise PatchError(f"{module_name}.{dotted} is missing: the pinned aiortc/aioice changed")
    _checked = True


def _guard() -> None:
    """Every patch checks the pins first: patching the wrong version must fail loudly."""
    if not _checked:
        check()


def install(
    receive_path: str, opus_send: OpusSendConfig, host_addresses: Sequence[str] = ()
) -> None:
    """The one set-up sequence of the server, the harness and the benchmarks."""
    check()
    if host_addresses:
        pin_host_addresses(host_addresses)
    use_receive_path(receive_path)
    configure_opus(opus_send)


def use_receive_path(path: str) -> None:
    """`ringback`: the project's jitter buffer and decoders; `aiortc`: aiortc's own."""
    if path == "ringback":
        install_receive_path()
    elif path == "aiortc":
        uninstall_receive_path()
    else:
        raise ValueError(f"receive path must be one of {', '.join(RECEIVE_PATHS)}, not {path!r}")


def pin_host_addresses(addresses: Sequence[str]) -> None:
    """Make ICE gather host candidates only on these addresses (aioice never offers loopback)."""
    _guard()
    import aioice.ice

    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


def hook_outgoing_rtp(pc: Any, hook: RtpHook) -> None:
    """Route every RTP packet that `pc` sends through `hook(data, send)`; RTCP passes untouched.

    For in-process impairment in tests and benchmarks. Call after setLocalDescription (the
    transports exist from then on).
    """
    _guard()
    transports = {id(s.transport): s.transport for s in pc.getSenders() if s.transport is not None}
    if not transports:
        raise PatchError("the peer connection has no sender transport yet")
    for transport in transports.values():
        transport._send_rtp = _hooked(transport._send_rtp, hook)


def _hooked(send: SendRtp, hook: RtpHook) -> SendRtp:
    async def send_hooked(data: bytes) -> None:
        if len(data) > 1 and 192 <= data[1] <= 223:  # RTCP (RFC 5761 demultiplexing)
            await send(data)
        else:
            await hook(data, send)

    return send_hooked


# --- receive path -------------------------------------------------------------------------


_originals: dict[str, Any] = {}


def _private(module_name: str) -> Any:
    """A module whose private symbols we replace (typed as Any on purpose)."""
    return importlib.import_module(module_name)


def install_receive_path(now: Callable[[], float] = time.monotonic) -> None:
    """Route Opus/PCMU/PCMA packets to the project's jitter buffer and decoders."""
    _guard()
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame

    receiver = _private("aiortc.rtcrtpreceiver")
    if "JitterBuffer" in _originals:
        return
    _originals["JitterBuffer"] = receiver.JitterBuffer
    _originals["get_decoder"] = receiver.get_decoder
    original_get_decoder = receiver.get_decoder

    class StampedFrame(JitterFrame):
        def __init__(self, packet: Any, arrival_s: float) -> None:
            super().__init__(data=packet._data, timestamp=packet.timestamp)
            self.seq = int(packet.sequence_number)
            self.rtp_timestamp = int(packet.timestamp)
            self.ssrc = int(packet.ssrc)
            self.arrival_s = arrival_s

    class PassThroughBuffer:
        """Every audio packet leaves at once, stamped with its arrival time."""

        def __init__(self, capacity: int) -> None:
            self._capacity = capacity

        @property
        def capacity(self) -> int:
            return self._capacity

        def add(self, packet: Any) -> tuple[bool, Any]:
            return False, StampedFrame(packet, now())

    def make_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> Any:
        if is_video:
            return JitterBuffer(capacity=capacity, prefetch=prefetch, is_video=True)
        return PassThroughBuffer(capacity)

    class PassThroughDecoder:
        def __init__(self, codec: Any) -> None:
            self.name = str(codec.name)
            self.clock_rate_hz = int(codec.clockRate)

        def decode(self, frame: Any) -> list[EncodedAudio]:
            return [
                EncodedAudio(
                    self.name,
                    self.clock_rate_hz,
                    frame.seq,
                    frame.rtp_timestamp,
                    frame.ssrc,
                    bytes(frame.data),
                    frame.arrival_s,
                )
            ]

    def get_decoder(codec: Any) -> Any:
        if codec.name in OWN_DECODE:
            return PassThroughDecoder(codec)
        return original_get_decoder(codec)

    receiver.JitterBuffer = make_buffer
    receiver.get_decoder = get_decoder

    original_receive = receiver.RTCRtpReceiver.receive
    _originals["receive"] = original_receive

    async def receive(self: Any, parameters: Any) -> None:
        if not self._RTCRtpReceiver__started:  # first call: the thread starts now
            self._RTCRtpReceiver__decoder_queue = DirectQueue(self._track._queue, get_decoder)
        await original_receive(self, parameters)

    receiver.RTCRtpReceiver.receive = receive


class DirectQueue:
    """Stands in for an RTCRtpReceiver's decoder-thread queue (only `put` and `get` are used).

    `put` runs on the event loop (`_handle_rtp_packet`): Opus/PCMU/PCMA frames are "decoded"
    (stamped into EncodedAudio) and queued for the track right there. Other codecs and the
    stop signal (None) go to aiortc's decoder thread as before, which reads them with `get`;
    frames put earlier are already in the track's queue when its end-of-track arrives."""

    def __init__(self, track_queue: asyncio.Queue[Any], get_decoder: Callable[[Any], Any]) -> None:
        self._track_queue = track_queue
        self._get_decoder = get_decoder
        self._decoders: dict[str, Any] = {}
        self._thread_queue: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any) -> None:
        if item is not None and item[0].name in OWN_DECODE:
            codec, frame = item
            decoder = self._decoders.get(codec.name)
            if decoder is None:
                decoder = self._decoders[codec.name] = self._get_decoder(codec)
            for audio in decoder.decode(frame):
                self._track_queue.put_nowait(audio)
            return
        self._thread_queue.put(item)

    def get(self) -> Any:
        return self._thread_queue.get()


def uninstall_receive_path() -> None:
    """Back to aiortc's own receive path (benchmarks compare both in one run)."""
    receiver = _private("aiortc.rtcrtpreceiver")
    if "JitterBuffer" in _originals:
        receiver.JitterBuffer = _originals.pop("JitterBuffer")
        receiver.get_decoder = _originals.pop("get_decoder")
        receiver.RTCRtpReceiver.receive = _originals.pop("receive")


# --- send path and SDP --------------------------------------------------------------------


def configure_opus(send: OpusSendConfig) -> None:
    """Advertise in-band FEC in the SDP and encode with speech settings and FEC.

    Opus senders whose track is an OutboundAudioTrack get it to encode inline (its packets are
    only packed by aiortc); any other track's frames go through aiortc's encoder, configured
    the same way. Calling it again replaces the settings for senders started afterwards.
    """
    _guard()
    import aiortc.codecs
    import aiortc.rtp
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.rtcrtpsender import RTCRtpSender

    sender = _private("aiortc.rtcrtpsender")
    for codec in aiortc.codecs.CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters.update({"useinbandfec": 1, "minptime": 10})

    original_get_encoder = _originals.setdefault("get_encoder", sender.get_encoder)

    class SpeechOpusEncoder(OpusEncoder):
        def __init__(self) -> None:
            super().__init__()
            configure_send_codec(self.codec, send)

    def get_encoder(codec: Any) -> Any:
        if codec.name == "opus":
            return SpeechOpusEncoder()
        return original_get_encoder(codec)

    sender.get_encoder = get_encoder
    _send_config["opus"] = send
    if "send" not in _originals:
        _originals["send"] = RTCRtpSender.send
        _originals["replaceTrack"] = RTCRtpSender.replaceTrack
        _originals["compute_audio_level_dbov"] = aiortc.rtp.compute_audio_level_dbov
        RTCRtpSender.send = _send  # type: ignore[method-assign]
        RTCRtpSender.replaceTrack = _replace_track  # type: ignore[method-assign]
        aiortc.rtp.compute_audio_level_dbov = audio_level_dbov


_send_config: dict[str, OpusSendConfig] = {}


def encode_inline(sender: Any, codec: Any) -> bool:
    """If `sender` sends `codec` = Opus from an OutboundAudioTrack, have the track encode it
    itself (with the settings of the last `configure_opus`). Returns whether it does."""
    send = _send_config.get("opus")
    track = sender.track
    if send is None or not isinstance(track, OutboundAudioTrack):
        return False
    if codec.mimeType.lower() != "audio/opus":
        return False
    try:
        track.encode_opus(send)
    except OpusUnavailable as e:  # aiortc's own encoder still works without our libopus
        log.warning("Opus is encoded by aiortc (in its thread pool): %s", e)
        return False
    return True


async def _send(self: Any, parameters: Any) -> None:
    # parameters.codecs[0] is the codec aiortc's _run_rtp will use (rtcrtpsender.py, send()).
    if parameters.codecs and getattr(self, "_ringback_codec", None) is None:
        self._ringback_codec = parameters.codecs[0]
        encode_inline(self, self._ringback_codec)
    await _originals["send"](self, parameters)


def _replace_track(self: Any, track: Any) -> None:
    _originals["replaceTrack"](self, track)
    codec = getattr(self, "_ringback_codec", None)
    if codec is not None:
        encode_inline(self, codec)


def audio_level_dbov(frame: Any) -> int:
    """`aiortc.rtp.compute_audio_level_dbov` (RFC 6465 level of an s16 frame, as aiortc computes
    it: all of plane 0 over `frame.samples`) in numpy: same result, ~20x cheaper."""
    pcm = np.frombuffer(frame.planes[0], np.int16)
    energy = float(np.dot(pcm, pcm.astype(np.int64)))
    rms = math.sqrt(energy / (frame.samples * 32767 * 32767))
    if rms <= 0:
        return -127
    return round(min(max(20 * math.log10(rms), -127), 0))
