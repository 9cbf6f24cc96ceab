"""Opus at 48 kHz. Receive side: libopus itself (ctypes), decoding with its real packet-loss
concealment and in-band FEC recovery. Send side: the agent's own encoder settings
(`OpusSendConfig`, `configure_send_codec`) and `SpeechEncoder`, which encodes the agent's voice
inline with the same libopus and settings as aiortc's encoder and skips settled silence. No I/O.

Which libopus: the copy bundled in PyAV's wheel (`av.libs/libopus-*.so*`, the same one aiortc
ends up using through PyAV), else whatever `ctypes.util.find_library("opus")` finds. The library
is loaded on first use, so importing this module never fails; `OpusUnavailable` says what was
searched when neither exists.

Loss handling, per lost packet, in order of preference:

- the next packet has already arrived and carries LBRR data (`has_fec(next)`):
  `recover(next, samples)` decodes the lost frame from it; then decode `next` normally too;
- otherwise `conceal(samples)`: libopus' PLC continues the signal from decoder state.

A decoder (and an encoder) is a single stream's state: not thread-safe, use one per stream.
Counters count calls (one per packet or per lost packet), not samples.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio import Pcm16

SAMPLE_RATE_HZ = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz, per channel
MAX_FRAME_SAMPLES = 5760  # 120 ms: the longest an Opus packet can be
_GRANULE = SAMPLE_RATE_HZ // 400  # 2.5 ms: PLC / FEC lengths must be multiples of this

# opus_defines.h
_OPUS_OK = 0
_OPUS_RESET_STATE = 4028
_OPUS_GET_LAST_PACKET_DURATION = 4039

_LIB_GLOBS = ("av.libs/libopus*.so*", "av/.dylibs/libopus*.dylib")


@dataclass(frozen=True)
class OpusSendConfig:
    """How the agent's own Opus is encoded (applied by agent.media.patches)."""

    bitrate_bps: int = 32_000
    fec: bool = True
    packet_loss_pct: int = 10  # the encoder only adds FEC when told to expect loss

    def __post_init__(self) -> None:
        if not 6_000 <= self.bitrate_bps <= 510_000:
            raise ValueError("Opus bitrate must be 6000..510000 b/s")
        if not 0 <= self.packet_loss_pct <= 100:
            raise ValueError("packet loss hint must be 0..100 %")


class OpusUnavailable(RuntimeError):
    """No usable libopus was found (or it could not be loaded)."""


class OpusError(RuntimeError):
    """libopus returned a negative error code."""

    def __init__(self, code: int, where: str) -> None:
        self.code = code
        self.where = where
        super().__init__(f"{where}: {_strerror(code)} ({code})")


# ctl is variadic: ctypes has no varargs, so each ctl shape gets its own fixed prototype bound to
# the same symbol. Ints and pointers are passed identically to fixed and variadic arguments on
# the x86-64 SysV and Linux aarch64 ABIs (not on Apple arm64, where varargs go on the stack).
_CtlNone = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_CtlInt = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
_CtlIntPtr = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)
)


class _Lib:
    """The loaded library with every function's signature declared once."""

    def __init__(self, path: str) -> None:
        c_int, c_void_p, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
        int_p = ctypes.POINTER(ctypes.c_int)
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise OpusUnavailable(f"cannot load libopus from {path}: {e}") from e
        self.path = path
        self.cdll = lib

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype = restype
            f.argtypes = argtypes
            return f

        self.version = fn("opus_get_version_string", c_char_p)
        self.strerror = fn("opus_strerror", c_char_p, c_int)
        self.decoder_create = fn("opus_decoder_create", c_void_p, c_int, c_int, int_p)
        self.decoder_destroy = fn("opus_decoder_destroy", None, c_void_p)
        # data is `const unsigned char *`: c_char_p takes bytes (no copy) or None (= lost packet)
        self.decode = fn("opus_decode", c_int, c_void_p, c_char_p, c_int, c_void_p, c_int, c_int)
        self.encoder_create = fn("opus_encoder_create", c_void_p, c_int, c_int, c_int, int_p)
        self.encoder_destroy = fn("opus_encoder_destroy", None, c_void_p)
        self.encode = fn("opus_encode", c_int, c_void_p, c_void_p, c_int, c_void_p, c_int)
        self.packet_get_nb_samples = fn("opus_packet_get_nb_samples", c_int, c_char_p, c_int, c_int)
        self.packet_get_samples_per_frame = fn(
            "opus_packet_get_samples_per_frame", c_int, c_char_p, c_int
        )
        # const unsigned char *data, len, unsigned char *out_toc, const unsigned char *frames[48],
        # opus_int16 size[48], int *payload_offset
        self.packet_parse = fn(
            "opus_packet_parse",
            c_int,
            c_char_p,
            c_int,
            c_void_p,
            ctypes.POINTER(c_void_p),
            ctypes.POINTER(ctypes.c_int16),
            c_void_p,
        )
        # Exported since libopus 1.5; older builds get the same check done in Python.
        self.packet_has_lbrr: Any = (
            fn("opus_packet_has_lbrr", c_int, c_char_p, c_int)
            if hasattr(lib, "opus_packet_has_lbrr")
            else None
        )
        self.decoder_ctl_none = _CtlNone(("opus_decoder_ctl", lib))
        self.decoder_ctl_get = _CtlIntPtr(("opus_decoder_ctl", lib))
        self.encoder_ctl_set = _CtlInt(("opus_encoder_ctl", lib))
        self.encoder_ctl_get = _CtlIntPtr(("opus_encoder_ctl", lib))
        # The same opus_encode, called without releasing the GIL (a PyDLL function): for the
        # event-loop thread, where giving the GIL up for ~0.2 ms can cost a 5 ms wait to get
        # it back from a busy Python thread (sys.getswitchinterval()).
        encode_gil = ctypes.PyDLL(path).opus_encode
        encode_gil.restype = c_int
        encode_gil.argtypes = (c_void_p, c_void_p, c_int, c_void_p, c_int)
        self.encode_holding_gil = encode_gil


def _candidates() -> tuple[list[str], list[str]]:
    """(paths to try in order, human-readable description of what was searched)."""
    found: list[str] = []
    searched: list[str] = []
    spec = importlib.util.find_spec("av")
    if spec is not None and spec.submodule_search_locations:
        site = Path(next(iter(spec.submodule_search_locations))).parent
        for pattern in _LIB_GLOBS:
            searched.append(str(site / pattern))
            found.extend(str(p) for p in sorted(site.glob(pattern)))
    else:
        searched.append("PyAV's bundled libopus (package `av` is not installed)")
    searched.append('ctypes.util.find_library("opus")')
    system = ctypes.util.find_library("opus")
    if system:
        found.append(system)
    return found, searched


@functools.cache
def _library() -> _Lib:
    found, searched = _candidates()
    errors: list[str] = []
    for path in found:
        try:
            return _Lib(path)
        except (OpusUnavailable, AttributeError) as e:
            errors.append(str(e))
    detail = f"; load errors: {'; '.join(errors)}" if errors else ""
    raise OpusUnavailable(f"libopus not found (searched: {', '.join(searched)}){detail}")


def library_path() -> str:
    """Filesystem path (or soname) of the libopus in use."""
    return _library().path


def opus_version() -> str:
    """libopus' own version string, e.g. "libopus 1.6.1"."""
    raw: bytes = _library().version()
    return raw.decode()


def _strerror(code: int) -> str:
    try:
        raw: bytes | None = _library().strerror(code)
    except OpusUnavailable:
        return "libopus error"
    return raw.decode() if raw else "unknown error"


def _check(ret: int, where: str) -> int:
    if ret < 0:
        raise OpusError(ret, where)
    return ret


def _as_bytes(payload: bytes | bytearray | memoryview) -> bytes:
    return payload if isinstance(payload, bytes) else bytes(payload)


def packet_samples(payload: bytes) -> int:
    """Samples per channel (at 48 kHz) a packet decodes to, from its TOC byte(s)."""
    data = _as_bytes(payload)
    if not data:
        raise OpusError(-1, "opus_packet_get_nb_samples")
    return _check(
        _library().packet_get_nb_samples(data, len(data), SAMPLE_RATE_HZ),
        "opus_packet_get_nb_samples",
    )


def _celt_only(toc: int) -> bool:
    return bool(toc & 0x80)


def _has_lbrr_py(lib: _Lib, data: bytes) -> bool:
    """What opus_packet_has_lbrr does: SILK's LBRR flag(s) are the first range-coded bits of the
    first frame, after the per-20-ms VAD flags (one set per coded channel)."""
    if _celt_only(data[0]):
        return False
    per_frame = lib.packet_get_samples_per_frame(data, SAMPLE_RATE_HZ)
    silk_frames = max(1, per_frame // FRAME_SAMPLES)
    stereo = bool(data[0] & 0x04)
    frames = (ctypes.c_void_p * 48)()
    sizes = (ctypes.c_int16 * 48)()
    if lib.packet_parse(data, len(data), None, frames, sizes, None) <= 0 or sizes[0] <= 0:
        return False
    start = frames[0]  # points into `data`, which is alive for this whole function
    if not start:
        return False
    first = ctypes.cast(start, ctypes.POINTER(ctypes.c_ubyte))[0]
    lbrr = (first >> (7 - silk_frames)) & 1
    if stereo:
        lbrr |= (first >> (6 - 2 * silk_frames)) & 1
    return bool(lbrr)


def has_fec(payload: bytes) -> bool:
    """Whether a packet carries in-band FEC (SILK LBRR) for the packet before it.

    False for CELT-only packets (CELT has no LBRR) and for empty or malformed ones. Uses libopus'
    `opus_packet_has_lbrr` when exported (1.5+), else the same bit test done here.
    """
    data = _as_bytes(payload)
    if not data:
        return False
    lib = _library()
    if lib.packet_has_lbrr is not None:
        return int(lib.packet_has_lbrr(data, len(data))) > 0
    return _has_lbrr_py(lib, data)


def _check_plc_samples(samples: int) -> None:
    if samples <= 0 or samples > MAX_FRAME_SAMPLES or samples % _GRANULE:
        raise ValueError(
            f"samples must be a positive multiple of {_GRANULE} (2.5 ms) up to "
            f"{MAX_FRAME_SAMPLES}, got {samples}"
        )


class OpusDecoder:
    """One Opus stream → 48 kHz int16 PCM (interleaved when `channels` is 2).

    `channels` is the output layout, not the stream's: libopus downmixes a stereo stream to a
    mono decoder itself (and upmixes mono to a stereo one).
    """

    def __init__(self, channels: int = 1) -> None:
        self._state: int | None = None  # first, so __del__ is safe if anything below raises
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.channels = channels
        self._lib = _library()
        err = ctypes.c_int(0)
        state = self._lib.decoder_create(SAMPLE_RATE_HZ, channels, ctypes.byref(err))
        if err.value != _OPUS_OK or not state:
            raise OpusError(err.value or -7, "opus_decoder_create")
        self._state = state
        self._pcm = np.zeros(MAX_FRAME_SAMPLES * channels, np.int16)
        self._last_celt_only = False
        self.frames_decoded = 0
        self.frames_concealed = 0
        self.frames_recovered = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the libopus state; idempotent."""
        state, self._state = self._state, None
        if state:
            self._lib.decoder_destroy(state)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> OpusDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._state is None

    def _live(self) -> int:
        if self._state is None:
            raise ValueError("OpusDecoder is closed")
        return self._state

    def reset(self) -> None:
        """Forget all stream state (OPUS_RESET_STATE), e.g. after an SSRC change. Counters stay."""
        _check(self._lib.decoder_ctl_none(self._live(), _OPUS_RESET_STATE), "OPUS_RESET_STATE")
        self._last_celt_only = False

    @property
    def last_packet_duration(self) -> int:
        """Samples per channel of the last decode / conceal / recover call."""
        out = ctypes.c_int(0)
        _check(
            self._lib.decoder_ctl_get(
                self._live(), _OPUS_GET_LAST_PACKET_DURATION, ctypes.byref(out)
            ),
            "OPUS_GET_LAST_PACKET_DURATION",
        )
        return out.value

    # -- decoding --------------------------------------------------------------------------------

    def _run(self, data: bytes | None, frame_size: int, fec: int, where: str) -> Pcm16:
        n = self._lib.decode(
            self._live(),
            data,
            len(data) if data else 0,
            self._pcm.ctypes.data,
            frame_size,
            fec,
        )
        _check(n, where)
        out: Pcm16 = self._pcm[: n * self.channels].copy()
        return out

    def decode(self, payload: bytes) -> Pcm16:
        """Decode one packet (any legal duration, 2.5–120 ms; 960 samples for WebRTC's 20 ms)."""
        data = _as_bytes(payload)
        if not data:
            raise ValueError("empty payload: a lost packet is conceal()ed or recover()ed")
        pcm = self._run(data, MAX_FRAME_SAMPLES, 0, "opus_decode")
        self._last_celt_only = _celt_only(data[0])
        self.frames_decoded += 1
        return pcm

    def conceal(self, samples: int = FRAME_SAMPLES) -> Pcm16:
        """libopus PLC for `samples` per channel of lost audio (opus_decode with data=NULL)."""
        _check_plc_samples(samples)
        pcm = self._run(None, samples, 0, "opus_decode (PLC)")
        self.frames_concealed += 1
        return pcm

    def fec_usable(self, next_payload: bytes, samples: int = FRAME_SAMPLES) -> bool:
        """Whether `recover(next_payload, samples)` would really use FEC rather than PLC.

        libopus falls back to PLC when the packet has no LBRR, when it is longer than `samples`,
        or when the previous decoded packet was CELT-only (the decoder is then in CELT mode).
        """
        data = _as_bytes(next_payload)
        if not data or self._last_celt_only or not has_fec(data):
            return False
        per_frame = int(self._lib.packet_get_samples_per_frame(data, SAMPLE_RATE_HZ))
        return per_frame <= samples

    def recover(self, next_payload: bytes, samples: int = FRAME_SAMPLES) -> Pcm16:
        """The LOST packet before `next_payload`, rebuilt from its in-band FEC (decode_fec=1).

        `samples` is the duration of the gap (per channel). libopus conceals all but the last
        frame-length of it with PLC and fills that with the LBRR copy, so for a 20 ms stream pass
        960 for one lost packet; with two lost, conceal() the first and recover() the second.
        Without usable FEC (see `fec_usable`) libopus silently returns PLC instead; that is
        counted in `frames_concealed`, real recoveries in `frames_recovered`.
        Afterwards `next_payload` must still be `decode()`d as usual.
        """
        data = _as_bytes(next_payload)
        if not data:
            raise ValueError("recover() needs the packet after the lost one")
        _check_plc_samples(samples)
        used_fec = self.fec_usable(data, samples)
        pcm = self._run(data, samples, 1, "opus_decode (FEC)")
        if used_fec:
            self._last_celt_only = False  # libopus switched to the packet's (SILK/hybrid) mode
            self.frames_recovered += 1
        else:
            self.frames_concealed += 1
        return pcm

    def has_fec(self, payload: bytes) -> bool:
        """`has_fec(payload)`: does the packet carry LBRR for the one before it."""
        return has_fec(payload)


# --- send side ------------------------------------------------------------------------------
# The agent's own Opus. aiortc's encoder is libavcodec's libopus wrapper (through PyAV) on
# stereo input; agent.media.patches configures it with `configure_send_codec`. `SpeechEncoder`
# calls the same libopus directly with the same settings on the same stereo input, so its
# packets are byte-for-byte aiortc's (tests/test_send_path.py checks it for several configs).

SEND_CHANNELS = 2  # aiortc's OpusEncoder is stereo (opus/48000/2); kept so nothing changes
# aiortc's resampler upmixes mono to stereo with libswresample's matrix: each channel is the
# mono sample × 1/√2 (−3 dB), in Q14 with rounding. Done here in numpy, bit-exact.
_UPMIX_Q14 = 11_585
# Digital silence is not encoded once the encoder's output for it has settled: after this many
# byte-identical silent packets in a row, that packet is sent again instead. Shorter identical
# runs happen while the decay after speech is still being coded (up to 7 seen in 80 random
# signals, bitrates 16-64 kb/s); 10 (200 ms) is also libopus' own DTX hang-over.
SILENCE_SETTLE_PACKETS = 10

# opus_defines.h
_OPUS_APPLICATION_VOIP = 2048
_OPUS_SET_BITRATE = 4002
_OPUS_SET_VBR = 4006
_OPUS_SET_COMPLEXITY = 4010
_OPUS_SET_INBAND_FEC = 4012
_OPUS_SET_PACKET_LOSS_PERC = 4014
_OPUS_SET_VBR_CONSTRAINT = 4020
_MAX_PACKET_BYTES = 4000  # libopus' recommended output buffer


def _send_settings(send: OpusSendConfig) -> dict[str, int]:
    """The encoder settings, once, as libavcodec option values (see configure_send_codec)."""
    return {
        "bitrate": send.bitrate_bps,
        "fec": 1 if send.fec else 0,
        "packet_loss": send.packet_loss_pct if send.fec else 0,
    }


def configure_send_codec(codec: Any, send: OpusSendConfig) -> None:
    """Speech settings on a PyAV libopus encoder context, i.e. aiortc's (before its first
    encode: libopus options cannot change afterwards). libavcodec's own defaults give the rest:
    unconstrained VBR, complexity 10."""
    settings = _send_settings(send)
    codec.bit_rate = settings["bitrate"]
    codec.options = {
        "application": "voip",
        "fec": str(settings["fec"]),
        "packet_loss": str(settings["packet_loss"]),
    }


def upmix(pcm: Pcm16) -> Pcm16:
    """48 kHz mono → interleaved stereo exactly as aiortc's resampler makes it (−3 dB)."""
    half = (pcm.astype(np.int32) * _UPMIX_Q14 + 8192) >> 14
    out: Pcm16 = np.repeat(half.astype(np.int16), 2)
    return out


class SpeechEncoder:
    """The agent's voice, encoded inline: 20 ms of 48 kHz mono s16 → one Opus packet.

    libopus with aiortc's patched encoder settings (`configure_send_codec`: application voip,
    bitrate, in-band FEC, loss hint; libavcodec's unconstrained VBR and complexity 10), on
    stereo input upmixed like aiortc's resampler: the same packets aiortc would send. One
    instance per stream, its state continuous. `encode` holds the GIL throughout (~0.2 ms for
    speech): it runs on the event-loop thread, which must not give the GIL up mid-frame and
    then queue up to a switch interval (5 ms) to get it back from a busy Python thread.

    Digital silence (the agent idle) is cheap: once the encoder has produced the same packet
    for `SILENCE_SETTLE_PACKETS` silent frames in a row, that packet is returned for further
    silent frames without encoding; the next non-silent frame is encoded by the same encoder,
    which has simply not seen the extra silence. The far end's decoder sees a steady run of
    identical silence packets (tests/test_send_path.py decodes it across silence→speech→silence
    and compares with encoding every frame).
    """

    def __init__(self, send: OpusSendConfig) -> None:
        self._state: int | None = None  # first, so __del__ is safe if anything below raises
        self._lib = _library()
        err = ctypes.c_int(0)
        state = self._lib.encoder_create(
            SAMPLE_RATE_HZ, SEND_CHANNELS, _OPUS_APPLICATION_VOIP, ctypes.byref(err)
        )
        if err.value != _OPUS_OK or not state:
            raise OpusError(err.value or -7, "opus_encoder_create")
        self._state = state
        settings = _send_settings(send)
        for request, value, name in (
            (_OPUS_SET_BITRATE, settings["bitrate"], "OPUS_SET_BITRATE"),
            (_OPUS_SET_VBR, 1, "OPUS_SET_VBR"),
            (_OPUS_SET_VBR_CONSTRAINT, 0, "OPUS_SET_VBR_CONSTRAINT"),
            (_OPUS_SET_COMPLEXITY, 10, "OPUS_SET_COMPLEXITY"),
            (_OPUS_SET_PACKET_LOSS_PERC, settings["packet_loss"], "OPUS_SET_PACKET_LOSS_PERC"),
            (_OPUS_SET_INBAND_FEC, settings["fec"], "OPUS_SET_INBAND_FEC"),
        ):
            _check(self._lib.encoder_ctl_set(state, request, value), name)
        self._encode = self._lib.encode_holding_gil
        self._stereo = np.zeros(FRAME_SAMPLES * SEND_CHANNELS, np.int16)
        self._stereo_ptr = self._stereo.ctypes.data
        self._out = ctypes.create_string_buffer(_MAX_PACKET_BYTES)
        self._silent_packet: bytes | None = None  # the settled silence packet, once known
        self._last_silent: bytes | None = None
        self._same_silent = 0  # identical silent packets in a row
        self.frames_encoded = 0
        self.silent_frames_reused = 0

    def close(self) -> None:
        """Free the libopus state; idempotent."""
        state, self._state = self._state, None
        if state:
            self._lib.encoder_destroy(state)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def encode(self, pcm: Pcm16) -> bytes:
        """One 20 ms frame (960 mono samples) → its Opus packet."""
        if pcm.size != FRAME_SAMPLES:
            raise ValueError(f"encode() takes {FRAME_SAMPLES} mono samples, got {pcm.size}")
        if self._state is None:
            raise ValueError("SpeechEncoder is closed")
        silent = not pcm.any()
        if silent and self._silent_packet is not None:
            self.silent_frames_reused += 1
            return self._silent_packet
        half = (pcm.astype(np.int32) * _UPMIX_Q14 + 8192) >> 14  # = upmix(), in place
        self._stereo[0::2] = half
        self._stereo[1::2] = half
        n = _check(
            self._encode(self._state, self._stereo_ptr, FRAME_SAMPLES, self._out, len(self._out)),
            "opus_encode",
        )
        payload = ctypes.string_at(self._out, n)
        self.frames_encoded += 1
        if not silent:  # after sound the silence must settle again before it is reused
            self._silent_packet, self._last_silent, self._same_silent = None, None, 0
        else:
            self._same_silent = self._same_silent + 1 if payload == self._last_silent else 1
            self._last_silent = payload
            if self._same_silent >= SILENCE_SETTLE_PACKETS:
                self._silent_packet = payload
        return payload
