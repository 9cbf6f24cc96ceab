"""A thin libopus encoder for tests: 48 kHz int16 → Opus packets of exactly 20 ms.

The product sends with agent.media.opus.SpeechEncoder (aiortc's settings, fixed); the tests
need packets they control (FEC on or off, mono or stereo, a given bitrate, complexity, VBR) to
exercise the decoder. It uses the same ctypes binding of PyAV's bundled libopus and the same
request codes as agent.media.opus.
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np

from agent.audio import Pcm16
from agent.media import opus
from agent.media.opus import FRAME_SAMPLES, SAMPLE_RATE_HZ, OpusError, _check, _library

OPUS_GET_LOOKAHEAD = 4027
APPLICATIONS = {"voip": opus._OPUS_APPLICATION_VOIP, "audio": 2049, "lowdelay": 2051}


class OpusEncoder:
    """48 kHz int16 PCM → Opus packets of exactly 20 ms."""

    def __init__(
        self,
        channels: int = 1,
        bitrate_bps: int = 32_000,
        fec: bool = True,
        packet_loss_pct: int = 10,
        application: str = "voip",
    ) -> None:
        self._state: int | None = None
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if application not in APPLICATIONS:
            raise ValueError(f"application must be one of {sorted(APPLICATIONS)}")
        if not 0 <= packet_loss_pct <= 100:
            raise ValueError("packet_loss_pct must be within 0..100")
        self.channels = channels
        self._lib = _library()
        err = ctypes.c_int(0)
        state = self._lib.encoder_create(
            SAMPLE_RATE_HZ, channels, APPLICATIONS[application], ctypes.byref(err)
        )
        if err.value != 0 or not state:
            raise OpusError(err.value or -7, "opus_encoder_create")
        self._state = state
        self._set(opus._OPUS_SET_BITRATE, bitrate_bps, "OPUS_SET_BITRATE")
        self._set(opus._OPUS_SET_INBAND_FEC, 1 if fec else 0, "OPUS_SET_INBAND_FEC")
        self._set(opus._OPUS_SET_PACKET_LOSS_PERC, packet_loss_pct, "OPUS_SET_PACKET_LOSS_PERC")
        self._out = ctypes.create_string_buffer(opus._MAX_PACKET_BYTES)
        self.frames_encoded = 0

    def _live(self) -> int:
        if self._state is None:
            raise ValueError("OpusEncoder is closed")
        return self._state

    def _set(self, request: int, value: int, name: str) -> None:
        _check(self._lib.encoder_ctl_set(self._live(), request, value), name)

    def set_complexity(self, complexity: int) -> None:
        """0 (cheapest) … 10 (default, best)."""
        self._set(opus._OPUS_SET_COMPLEXITY, complexity, "OPUS_SET_COMPLEXITY")

    def set_vbr(self, vbr: bool) -> None:
        self._set(opus._OPUS_SET_VBR, 1 if vbr else 0, "OPUS_SET_VBR")

    @property
    def lookahead(self) -> int:
        """Codec delay in samples per channel (decoded audio lags the input by this much)."""
        out = ctypes.c_int(0)
        _check(
            self._lib.encoder_ctl_get(self._live(), OPUS_GET_LOOKAHEAD, ctypes.byref(out)),
            "OPUS_GET_LOOKAHEAD",
        )
        return out.value

    def encode(self, pcm: Pcm16) -> bytes:
        """One 20 ms frame: exactly 960 samples per channel, interleaved if stereo."""
        if pcm.dtype != np.int16:
            raise ValueError(f"encode() takes int16 PCM, got {pcm.dtype}")
        if pcm.size != FRAME_SAMPLES * self.channels:
            raise ValueError(
                f"encode() takes {FRAME_SAMPLES * self.channels} samples "
                f"(20 ms × {self.channels} ch), got {pcm.size}"
            )
        frame = np.ascontiguousarray(pcm)
        n = self._lib.encode(
            self._live(), frame.ctypes.data, FRAME_SAMPLES, self._out, opus._MAX_PACKET_BYTES
        )
        _check(n, "opus_encode")
        self.frames_encoded += 1
        return ctypes.string_at(self._out, n)

    def close(self) -> None:
        state, self._state = self._state, None
        if state:
            self._lib.encoder_destroy(state)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> OpusEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
