"""Patch points into aiortc/aioice private symbols: installed together, removed together.

`install(receive_path, opus_send, host_addresses)` checks the pins, replaces what it is asked
to and returns a `Patches` handle; `Patches.uninstall()` puts back every original object (the
handle keeps them). This module holds no state: whether aiortc is patched, and by which
installation, is read from the patch points themselves (each replacement carries its
installation). One installation at a time per process: a second `install` while one is
active raises `PatchError`, unless it asks for `shared=True` with the same settings; then it
gets its own handle on the active installation, which is undone when its last handle is
uninstalled (the harness's Callers share one this way).

aiortc and aioice are pinned (pyproject.toml); `install` and `hook_outgoing_rtp` run `check()`
first, which fails with a message naming the symbol if an upgrade moves one of the
`PATCH_POINTS`, instead of the server misbehaving later. The start-up self-test
(agent/call/selfcheck.py) runs it too.

The patch points, and why (facts in docs/architecture.md, "Receive path" and "Send path").
"Replaced": `install` sets it and `uninstall` restores it; "relied on": used as it is, checked.

Receive path (`receive_path="ringback"`; `"aiortc"` leaves aiortc's own):
- `aiortc.rtcrtpreceiver.JitterBuffer` (replaced): aiortc's fixed audio buffer adds ~80 ms,
  ratchets to ~280 ms after one loss and has no concealment. Audio receivers get a
  pass-through buffer instead: every packet leaves at once, stamped with its arrival time.
  Video keeps aiortc's buffer.
- `aiortc.rtcrtpreceiver.get_decoder` (replaced): for Opus, PCMU and PCMA a pass-through
  "decoder" hands the packet to the track as `EncodedAudio`; agent/media/inbound.py buffers
  (agent/media/rtp_jitter.py) and decodes it (agent/media/opus.py, concealment.py). Other codecs
  keep aiortc's decoders.
- `aiortc.jitterbuffer.JitterFrame` (relied on): subclassed for the stamped frame.
- `RTCRtpReceiver.receive` (replaced): on its first call, swaps the receiver's private decoder
  queue for a `DirectQueue`. aiortc passes every packet to a decoder thread and back to the
  loop (`queue.Queue.put`, a thread wake-up, `run_coroutine_threadsafe`), per packet per call,
  only for our pass-through "decode"; those packets now go straight into the track's queue on
  the event loop. One Python thread fewer waking 50 times a second per call also spares the
  loop the GIL hand-offs.
- `RTCRtpReceiver._RTCRtpReceiver__stop_decoder` and `aiortc.rtcrtpreceiver.decoder_worker`
  (relied on): aiortc still starts its decoder thread, which reads `DirectQueue.get` and only
  waits for the stop signal (None) that `__stop_decoder` puts.

Send path and SDP (`opus_send` given; None leaves aiortc's own):
- `aiortc.codecs.CODECS` (Opus's `parameters` dict replaced): answers and offers advertise
  `useinbandfec=1;minptime=10`, so browsers put FEC in their packets.
- `aiortc.rtcrtpsender.get_encoder` (replaced): aiortc's Opus encoder at a speech bitrate with
  in-band FEC (`opus_send`), for tracks that hand aiortc frames.
- `aiortc.codecs.opus.OpusEncoder` (relied on): subclassed for that encoder.
- `RTCRtpSender.send` / `RTCRtpSender.replaceTrack` (replaced): when a sender starts with Opus
  and its track is an OutboundAudioTrack, the track is told to encode inline (`encode_opus`):
  it returns encoded packets instead of running the encoder in the default thread pool and
  computing the audio level, once per 20 ms per call.
- `RTCRtpSender._next_encoded_frame` and `OpusEncoder.pack` (relied on): given an `av.Packet`
  instead of a frame, aiortc only packs it.
- `aiortc.rtp.compute_audio_level_dbov` (replaced): the same level in numpy (~3 µs a frame
  instead of aiortc's pure-Python loop, ~56 µs on the event loop) for tracks that still hand
  aiortc frames.

Data channels (always):
- `RTCSctpTransport._data_channel_receive` (replaced): aiortc decodes a message sent with the
  string PPID (`WEBRTC_STRING`) as UTF-8 before any handler runs, inside the DTLS reader: a
  peer sending invalid UTF-8 there raised UnicodeDecodeError and ended the call. Such a
  message is now delivered as the bytes it is (`WEBRTC_BINARY`), which a handler can refuse
  as malformed (agent/call/events.py does). Valid text arrives as before (text that is not
  ASCII is decoded once more, to check it).
- `aiortc.rtcsctptransport.WEBRTC_STRING` / `WEBRTC_BINARY` (relied on): the PPIDs.
- `RTCSctpTransport._receive_data_chunk` (replaced): aiortc reassembles by calling
  `InboundStream.pop_messages()` after every DATA chunk, and it walks the stream's whole
  reassembly list: quadratic in a message's size, all on the event loop (every call's audio
  waits): ~0.3 s for 1 MB, ~5 s for 4 MB, and aiortc does not enforce the max-message-size it
  advertises. A chunk appended at the end of a settled list (one `pop_messages` has just
  emptied of deliverable messages, same list object since) completes no message unless it
  carries LAST_FRAG; only then, or when it fills a gap (inserted before the end), or when the
  list is not known settled (a FORWARD-TSN pruned it), is `pop_messages` called. Everything
  else is aiortc's own, in the same order: duplicates, SACK bookkeeping, rwnd, stream resets.
  FORWARD-TSN handling is untouched (it calls `pop_messages` itself). Nothing bounds what one
  stream buffers: dropping chunks already acknowledged breaks SCTP's reliability, and
  refusing them leaves an honest sender of a large message retransmitting forever.
- `aiortc.rtcsctptransport.InboundStream.add_chunk` / `pop_messages` and
  `SCTP_DATA_LAST_FRAG` (relied on): the reassembly used as it is.

ICE (`host_addresses` given; empty leaves aioice's own):
- `aioice.ice.get_host_addresses` (replaced): aioice never offers loopback; tests pin 127.0.0.1.

Per connection, not part of an installation (`hook_outgoing_rtp`):
- `RTCDtlsTransport._send_rtp`: that connection's transport instance only gets a hook (seeded
  in-process impairment of what a test or benchmark peer sends); the class is not touched, and
  the hook goes with the connection.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from types import TracebackType
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
    ("aiortc.rtcsctptransport", "RTCSctpTransport._data_channel_receive"),
    ("aiortc.rtcsctptransport", "WEBRTC_STRING"),
    ("aiortc.rtcsctptransport", "WEBRTC_BINARY"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport._receive_data_chunk"),
    ("aiortc.rtcsctptransport", "InboundStream.add_chunk"),
    ("aiortc.rtcsctptransport", "InboundStream.pop_messages"),
    ("aiortc.rtcsctptransport", "SCTP_DATA_LAST_FRAG"),
)

# The functions `install` replaces with its own (each marked with its installation).
MARKED_POINTS: tuple[tuple[str, str], ...] = (
    ("aioice.ice", "get_host_addresses"),
    ("aiortc.rtcrtpreceiver", "JitterBuffer"),
    ("aiortc.rtcrtpreceiver", "get_decoder"),
    ("aiortc.rtcrtpreceiver", "RTCRtpReceiver.receive"),
    ("aiortc.rtcrtpsender", "get_encoder"),
    ("aiortc.rtcrtpsender", "RTCRtpSender.send"),
    ("aiortc.rtcrtpsender", "RTCRtpSender.replaceTrack"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport._data_channel_receive"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport._receive_data_chunk"),
)

OWN_DECODE = frozenset({"opus", "PCMU", "PCMA"})
RECEIVE_PATHS = ("ringback", "aiortc")
FEC_SDP = {"useinbandfec": 1, "minptime": 10}

SendRtp = Callable[[bytes], Awaitable[None]]
RtpHook = Callable[[bytes, SendRtp], Awaitable[None]]

_MARK = "ringback_patches"  # attribute of each replacement function: its _Installation
# Attribute of an aiortc InboundStream: its reassembly list as `pop_messages` last left it.
_SETTLED = "_ringback_settled"


class PatchError(RuntimeError):
    pass


def check() -> None:
    """Fail, naming the package or symbol, if the installed aiortc/aioice is not the pinned one."""
    for package, pinned in PINNED.items():
        installed = version(package)
        if installed != pinned:
            raise PatchError(
                f"{package} {installed} is installed but ringback is pinned to {pinned}; "
                "its private symbols are patched, reinstall with `make clean run`"
            )
    for module_name, dotted in PATCH_POINTS:
        if _resolve(module_name, dotted) is None:
            raise PatchError(f"{module_name}.{dotted} is missing: the pinned aiortc/aioice changed")


def _resolve(module_name: str, dotted: str) -> Any:
    """The object at `module.dotted` now (None if missing); modules are typed Any on purpose."""
    target: Any = importlib.import_module(module_name)
    for attr in dotted.split("."):
        target = getattr(target, attr, None)
    return target


@dataclass(frozen=True)
class PatchSettings:
    """What an installation patches: each part left as aiortc has it when not asked for."""

    receive_path: str = "aiortc"  # "ringback": the project's jitter buffer and decoders
    opus_send: OpusSendConfig | None = None  # None: aiortc's own encoder, SDP and send path
    host_addresses: tuple[str, ...] = ()  # (): aioice's own host candidates


class _Installation:
    """The originals one `install` replaced, and how many handles still use them."""

    def __init__(self, settings: PatchSettings) -> None:
        self.settings = settings
        self.handles = 0
        self.originals: dict[str, Any] = {}
        self._saved: list[tuple[Any, str, bool, Any]] = []  # (owner, name, own attribute, value)

    def replace(self, point: str, owner: Any, name: str, value: Any) -> None:
        """Set `owner.name` to `value`, keeping the object it had (`point` names it)."""
        original = getattr(owner, name)
        self._saved.append((owner, name, name in vars(owner), original))
        self.originals[point] = original
        setattr(owner, name, value)

    def mark(self, replacement: Callable[..., Any]) -> Callable[..., Any]:
        replacement.__dict__[_MARK] = self
        return replacement

    def restore(self) -> None:
        while self._saved:
            owner, name, own, original = self._saved.pop()
            if own:
                setattr(owner, name, original)
            else:  # it was inherited: remove the override
                delattr(owner, name)


def _active() -> _Installation | None:
    """The installation whose replacements are in aiortc/aioice now, if any."""
    for module_name, dotted in MARKED_POINTS:
        found = getattr(_resolve(module_name, dotted), "__dict__", {}).get(_MARK)
        if isinstance(found, _Installation):
            return found
    return None


class Patches:
    """A handle on installed patches (see `install`); also a context manager that uninstalls."""

    def __init__(self, installation: _Installation) -> None:
        self._installation = installation
        self._installed = True
        installation.handles += 1

    @property
    def settings(self) -> PatchSettings:
        return self._installation.settings

    @property
    def installed(self) -> bool:
        """Whether this handle still holds its installation (until `uninstall`)."""
        return self._installed

    def uninstall(self) -> None:
        """Release this handle; the last handle of an installation restores every patch point
        it replaced. A second call does nothing."""
        if not self._installed:
            return
        self._installed = False
        self._installation.handles -= 1
        if self._installation.handles == 0:
            self._installation.restore()

    def original(self, point: str) -> Any:
        """What aiortc/aioice had at `point` ("aiortc.rtp.compute_audio_level_dbov") before
        this installation replaced it."""
        try:
            return self._installation.originals[point]
        except KeyError:
            raise PatchError(f"{point} is not replaced by this installation") from None

    def encode_inline(self, sender: Any, codec: Any) -> bool:
        """If `sender` sends `codec` = Opus from an OutboundAudioTrack, have the track encode it
        itself (with this installation's `opus_send`). Returns whether it does."""
        send = self.settings.opus_send
        return send is not None and _encode_inline(sender, codec, send)

    def __enter__(self) -> Patches:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        state = "installed" if self._installed else "uninstalled"
        return f"Patches({self.settings}, {state})"


def install(
    receive_path: str,
    opus_send: OpusSendConfig | None,
    host_addresses: Sequence[str] = (),
    *,
    shared: bool = False,
) -> Patches:
    """Check the pins, patch aiortc/aioice as asked and return the handle that undoes it.

    `receive_path`: "ringback" (the project's jitter buffer and decoders) or "aiortc" (its own,
    not patched). `opus_send`: Opus SDP, encoder settings and inline encoding (None: aiortc's
    own). `host_addresses`: the only ICE host candidates (empty: aioice's own).

    Every installation makes data channels survive invalid UTF-8 sent as text, and reassembles
    a large data-channel message in linear time.

    While an installation is active, another is refused (PatchError): uninstall it first. With
    `shared=True` and the same settings, the caller gets its own handle on the active one
    instead (different settings are still refused).
    """
    if receive_path not in RECEIVE_PATHS:
        raise ValueError(
            f"receive path must be one of {', '.join(RECEIVE_PATHS)}, not {receive_path!r}"
        )
    settings = PatchSettings(receive_path, opus_send, tuple(host_addresses))
    check()
    active = _active()
    if active is not None:
        if not shared:
            raise PatchError(
                f"aiortc is already patched ({active.settings}): uninstall() that first, "
                "or install(..., shared=True) with the same settings"
            )
        if active.settings != settings:
            raise PatchError(
                f"aiortc is already patched with other settings ({active.settings}), not {settings}"
            )
        return Patches(active)
    installation = _Installation(settings)
    try:
        _patch_data_channels(installation)
        _patch_sctp_reassembly(installation)
        if settings.host_addresses:
            _pin_host_addresses(installation, settings.host_addresses)
        if receive_path == "ringback":
            _patch_receive_path(installation)
        if opus_send is not None:
            _patch_send_path(installation, opus_send)
    except BaseException:
        installation.restore()
        raise
    return Patches(installation)


# --- ICE ----------------------------------------------------------------------------------


def _pin_host_addresses(installation: _Installation, addresses: tuple[str, ...]) -> None:
    """ICE gathers host candidates only on these addresses (aioice never offers loopback)."""
    ice: Any = importlib.import_module("aioice.ice")

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    installation.replace(
        "aioice.ice.get_host_addresses",
        ice,
        "get_host_addresses",
        installation.mark(get_host_addresses),
    )


# --- data channels ------------------------------------------------------------------------


def _patch_data_channels(installation: _Installation) -> None:
    """A text message that is not UTF-8 reaches the channel's handler as bytes instead of
    raising in aiortc's DTLS reader (which ends the call)."""
    sctp: Any = importlib.import_module("aiortc.rtcsctptransport")
    transport_class = sctp.RTCSctpTransport
    original_receive = transport_class._data_channel_receive
    string_ppid, binary_ppid = sctp.WEBRTC_STRING, sctp.WEBRTC_BINARY

    async def data_channel_receive(self: Any, stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == string_ppid and not data.isascii():
            try:
                data.decode("utf8")
            except UnicodeDecodeError:
                pp_id = binary_ppid
        await original_receive(self, stream_id, pp_id, data)

    installation.replace(
        "aiortc.rtcsctptransport.RTCSctpTransport._data_channel_receive",
        transport_class,
        "_data_channel_receive",
        installation.mark(data_channel_receive),
    )


def _patch_sctp_reassembly(installation: _Installation) -> None:
    """Look for completed messages only when a DATA chunk can have completed one."""
    sctp: Any = importlib.import_module("aiortc.rtcsctptransport")
    last_frag = int(sctp.SCTP_DATA_LAST_FRAG)

    # aiortc's `_receive_data_chunk` line for line, but for the `if` around `pop_messages`.
    async def receive_data_chunk(self: Any, chunk: Any) -> None:
        self._sack_needed = True
        if self._mark_received(chunk.tsn):  # a duplicate
            return
        inbound_stream = self._get_inbound_stream(chunk.stream_id)
        # Settled: the last `pop_messages` left nothing deliverable in this very list, and
        # only `add_chunk` (in place) changed it since; FORWARD-TSN prunes into a new list.
        settled = getattr(inbound_stream, _SETTLED, None) is inbound_stream.reassembly
        inbound_stream.add_chunk(chunk)
        self._advertised_rwnd -= len(chunk.user_data)
        appended = inbound_stream.reassembly[-1] is chunk
        # Appended to a settled list, the chunk can only complete a message that ends with it.
        if not settled or not appended or chunk.flags & last_frag:
            for message in inbound_stream.pop_messages():
                self._advertised_rwnd += len(message[2])
                await self._receive(*message)
        setattr(inbound_stream, _SETTLED, inbound_stream.reassembly)
        await self._reset_deferred_streams()

    installation.replace(
        "aiortc.rtcsctptransport.RTCSctpTransport._receive_data_chunk",
        sctp.RTCSctpTransport,
        "_receive_data_chunk",
        installation.mark(receive_data_chunk),
    )


# --- per connection -----------------------------------------------------------------------


def hook_outgoing_rtp(pc: Any, hook: RtpHook) -> None:
    """Route every RTP packet that `pc` sends through `hook(data, send)`; RTCP passes untouched.

    For in-process impairment in tests and benchmarks. Call after setLocalDescription (the
    transports exist from then on). Only this connection's transports are hooked.
    """
    check()
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


def _patch_receive_path(
    installation: _Installation, now: Callable[[], float] = time.monotonic
) -> None:
    """Route Opus/PCMU/PCMA packets to the project's jitter buffer and decoders."""
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame

    receiver: Any = importlib.import_module("aiortc.rtcrtpreceiver")
    original_get_decoder = receiver.get_decoder
    original_receive = receiver.RTCRtpReceiver.receive

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

    async def receive(self: Any, parameters: Any) -> None:
        if not self._RTCRtpReceiver__started:  # first call: the thread starts now
            self._RTCRtpReceiver__decoder_queue = DirectQueue(self._track._queue, get_decoder)
        await original_receive(self, parameters)

    mark = installation.mark
    installation.replace(
        "aiortc.rtcrtpreceiver.JitterBuffer", receiver, "JitterBuffer", mark(make_buffer)
    )
    installation.replace(
        "aiortc.rtcrtpreceiver.get_decoder", receiver, "get_decoder", mark(get_decoder)
    )
    installation.replace(
        "aiortc.rtcrtpreceiver.RTCRtpReceiver.receive",
        receiver.RTCRtpReceiver,
        "receive",
        mark(receive),
    )


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


# --- send path and SDP --------------------------------------------------------------------


def _patch_send_path(installation: _Installation, send: OpusSendConfig) -> None:
    """Advertise in-band FEC in the SDP and encode with speech settings and FEC.

    Opus senders whose track is an OutboundAudioTrack get it to encode inline (its packets are
    only packed by aiortc); any other track's frames go through aiortc's encoder, configured
    the same way.
    """
    from aiortc.codecs.opus import OpusEncoder

    codecs: Any = importlib.import_module("aiortc.codecs")
    sender: Any = importlib.import_module("aiortc.rtcrtpsender")
    rtp: Any = importlib.import_module("aiortc.rtp")
    sender_class = sender.RTCRtpSender
    original_get_encoder = sender.get_encoder
    original_send = sender_class.send
    original_replace_track = sender_class.replaceTrack

    class SpeechOpusEncoder(OpusEncoder):
        def __init__(self) -> None:
            super().__init__()
            configure_send_codec(self.codec, send)

    def get_encoder(codec: Any) -> Any:
        if codec.name == "opus":
            return SpeechOpusEncoder()
        return original_get_encoder(codec)

    async def send_rtp(self: Any, parameters: Any) -> None:
        # parameters.codecs[0] is the codec aiortc's _run_rtp will use (rtcrtpsender.py, send()).
        if parameters.codecs and getattr(self, "_ringback_codec", None) is None:
            self._ringback_codec = parameters.codecs[0]
            _encode_inline(self, self._ringback_codec, send)
        await original_send(self, parameters)

    def replace_track(self: Any, track: Any) -> None:
        original_replace_track(self, track)
        codec = getattr(self, "_ringback_codec", None)
        if codec is not None:
            _encode_inline(self, codec, send)

    for codec in codecs.CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            installation.replace(
                "aiortc.codecs.CODECS", codec, "parameters", {**codec.parameters, **FEC_SDP}
            )
    mark = installation.mark
    installation.replace(
        "aiortc.rtcrtpsender.get_encoder", sender, "get_encoder", mark(get_encoder)
    )
    installation.replace(
        "aiortc.rtcrtpsender.RTCRtpSender.send", sender_class, "send", mark(send_rtp)
    )
    installation.replace(
        "aiortc.rtcrtpsender.RTCRtpSender.replaceTrack",
        sender_class,
        "replaceTrack",
        mark(replace_track),
    )
    installation.replace(
        "aiortc.rtp.compute_audio_level_dbov", rtp, "compute_audio_level_dbov", audio_level_dbov
    )


def _encode_inline(sender: Any, codec: Any, send: OpusSendConfig) -> bool:
    track = sender.track
    if not isinstance(track, OutboundAudioTrack) or codec.mimeType.lower() != "audio/opus":
        return False
    try:
        track.encode_opus(send)
    except OpusUnavailable as e:  # aiortc's own encoder still works without our libopus
        log.warning("Opus is encoded by aiortc (in its thread pool): %s", e)
        return False
    return True


def audio_level_dbov(frame: Any) -> int:
    """`aiortc.rtp.compute_audio_level_dbov` (RFC 6465 level of an s16 frame, as aiortc computes
    it: all of plane 0 over `frame.samples`) in numpy: same result, ~20x cheaper."""
    pcm = np.frombuffer(frame.planes[0], np.int16)
    energy = float(np.dot(pcm, pcm.astype(np.int64)))
    rms = math.sqrt(energy / (frame.samples * 32767 * 32767))
    if rms <= 0:
        return -127
    return round(min(max(20 * math.log10(rms), -127), 0))
