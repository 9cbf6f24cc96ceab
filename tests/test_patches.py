"""The aiortc patch points: start-up check, receive-path switch, Opus send settings."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import CODECS

from agent import patches
from agent.opus import has_fec
from tests.test_opus import speech_like


def test_check_names_a_missing_symbol(monkeypatch: pytest.MonkeyPatch) -> None:
    patches.check()  # the pinned aiortc has every patch point
    import aiortc.rtcrtpreceiver

    monkeypatch.delattr(aiortc.rtcrtpreceiver, "get_decoder")
    with pytest.raises(patches.PatchError, match=r"aiortc\.rtcrtpreceiver\.get_decoder"):
        patches.check()


def test_check_refuses_another_aiortc_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiortc

    monkeypatch.setattr(aiortc, "__version__", "9.9.9")
    with pytest.raises(patches.PatchError, match=r"pinned to 1\.16\.0"):
        patches.check()


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

    patches.configure_opus(patches.OpusSendConfig(bitrate_bps=32_000, packet_loss_pct=10))
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
