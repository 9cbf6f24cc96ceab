"""Patch points into aiortc/aioice private symbols, checked at start-up.

aiortc is pinned (pyproject.toml); `check()` fails with a message naming the symbol if an
upgrade moves one we rely on, instead of the server misbehaving later.

What is patched, and why (facts in the README's "Receive path" section):
- `aiortc.rtcrtpreceiver.JitterBuffer` / `get_decoder`: aiortc's fixed audio buffer adds
  ~80 ms, ratchets to ~280 ms after one loss and has no concealment. For Opus, PCMU and PCMA
  the patched receiver hands each RTP packet, stamped with its arrival time, straight to
  the track as `EncodedAudio`; agent/inbound.py buffers (agent/rtp_jitter.py) and decodes it
  (agent/opus.py, agent/concealment.py). Video and other codecs keep aiortc's path.
- `aiortc.codecs.CODECS` (Opus fmtp): answers advertise `useinbandfec=1;minptime=10`, so
  browsers put FEC in their packets.
- `aiortc.rtcrtpsender.get_encoder`: Opus at a speech bitrate with in-band FEC.
- `aioice.ice.get_host_addresses`: aioice never offers loopback; tests pin 127.0.0.1.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PINNED_AIORTC = "1.16.0"

PATCH_POINTS: tuple[tuple[str, str], ...] = (
    ("aioice.ice", "get_host_addresses"),
    ("aiortc.rtcrtpreceiver", "JitterBuffer"),
    ("aiortc.rtcrtpreceiver", "get_decoder"),
    ("aiortc.rtcrtpsender", "get_encoder"),
    ("aiortc.codecs", "CODECS"),
    ("aiortc.codecs.opus", "OpusEncoder"),
    ("aiortc.jitterbuffer", "JitterFrame"),
)

OWN_DECODE = frozenset({"opus", "PCMU", "PCMA"})


class PatchError(RuntimeError):
    pass


def check() -> None:
    import aiortc

    if aiortc.__version__ != PINNED_AIORTC:
        raise PatchError(
            f"aiortc {aiortc.__version__} is installed but ringback is pinned to {PINNED_AIORTC}; "
            "its private symbols are patched, reinstall with `make clean run`"
        )
    for module_name, attr in PATCH_POINTS:
        module = importlib.import_module(module_name)
        if getattr(module, attr, None) is None:
            raise PatchError(f"{module_name}.{attr} is missing: the pinned aiortc/aioice changed")


def pin_host_addresses(addresses: Sequence[str]) -> None:
    """Make ICE gather host candidates only on these addresses (aioice never offers loopback)."""
    import aioice.ice

    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


# --- receive path -------------------------------------------------------------------------


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


_originals: dict[str, Any] = {}


def _private(module_name: str) -> Any:
    """A module whose private symbols we replace (typed as Any on purpose)."""
    return importlib.import_module(module_name)


def install_receive_path(now: Callable[[], float] = time.monotonic) -> None:
    """Route Opus/PCMU/PCMA packets to the project's jitter buffer and decoders."""
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


def uninstall_receive_path() -> None:
    """Back to aiortc's own receive path (benchmarks compare both in one run)."""
    receiver = _private("aiortc.rtcrtpreceiver")
    if "JitterBuffer" in _originals:
        receiver.JitterBuffer = _originals.pop("JitterBuffer")
        receiver.get_decoder = _originals.pop("get_decoder")


# --- send path and SDP --------------------------------------------------------------------


@dataclass(frozen=True)
class OpusSendConfig:
    bitrate_bps: int = 32_000
    fec: bool = True
    packet_loss_pct: int = 10  # the encoder only adds FEC when told to expect loss

    def __post_init__(self) -> None:
        if not 6_000 <= self.bitrate_bps <= 510_000:
            raise ValueError("Opus bitrate must be 6000..510000 b/s")
        if not 0 <= self.packet_loss_pct <= 100:
            raise ValueError("packet loss hint must be 0..100 %")


def configure_opus(send: OpusSendConfig) -> None:
    """Advertise in-band FEC in the SDP and encode with speech settings and FEC."""
    import aiortc.codecs
    from aiortc.codecs.opus import OpusEncoder

    sender = _private("aiortc.rtcrtpsender")
    for codec in aiortc.codecs.CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters.update({"useinbandfec": 1, "minptime": 10})

    original_get_encoder = _originals.setdefault("get_encoder", sender.get_encoder)

    class SpeechOpusEncoder(OpusEncoder):
        def __init__(self) -> None:
            super().__init__()
            # Options must be set before the first encode; they cannot change later.
            self.codec.bit_rate = send.bitrate_bps
            self.codec.options = {
                "application": "voip",
                "fec": "1" if send.fec else "0",
                "packet_loss": str(send.packet_loss_pct if send.fec else 0),
            }

    def get_encoder(codec: Any) -> Any:
        if codec.name == "opus":
            return SpeechOpusEncoder()
        return original_get_encoder(codec)

    sender.get_encoder = get_encoder
