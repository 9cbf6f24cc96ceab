"""Tier 1: the echo check (agent/media/echo.py) on synthetic signals and on real piper speech
sent through Opus both ways, table-driven: the agent's own voice coming back is echo, the user
talking over it is not."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from agent.audio import Decimator, Pcm16
from agent.media.echo import EchoConfig, EchoGuard
from agent.media.opus import OpusDecoder, OpusSendConfig, SpeechEncoder
from tests.conftest import SENTENCES

FRAME_48K = 960
RTT_FRAMES = 3  # besides the loudspeaker-to-mic delay: jitter buffers and the network, 60 ms


def speechlike(seconds: float, seed: int, rate_hz: int = 48_000) -> Pcm16:
    """Noise shaped like a voice: low-passed, in syllable-long bursts with gaps."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    noise = rng.standard_normal(n)
    kernel = np.hanning(24)
    shaped = np.convolve(noise, kernel / kernel.sum(), mode="same")
    syllable = int(0.25 * rate_hz)
    envelope = np.repeat(rng.uniform(0.2, 1.0, n // syllable + 1), syllable)[:n]
    envelope[(np.arange(n) // syllable) % 4 == 3] = 0.0  # a gap every fourth syllable
    pcm = shaped * envelope
    out: Pcm16 = (pcm / np.max(np.abs(pcm)) * 12_000).astype(np.int16)
    return out


def opus_round_trip(pcm: Pcm16) -> Pcm16:
    enc, dec = SpeechEncoder(OpusSendConfig()), OpusDecoder(channels=1)
    n = pcm.size // FRAME_48K * FRAME_48K
    return np.concatenate(
        [dec.decode(enc.encode(pcm[i : i + FRAME_48K])) for i in range(0, n, 960)]
    )


def run_call(
    agent: Pcm16,
    user: Pcm16 | None,
    gain_db: float,
    delay_ms: float,
    user_at_s: float = 1.0,
    codec: bool = False,
) -> dict[str, Any]:
    """The agent sends `agent`; the caller's mic picks it up `gain_db` quieter and `delay_ms`
    later (plus `user` from `user_at_s`); the guard judges each inbound frame. Returns the
    share of flagged frames among loud echo-only frames and among frames the user dominates
    (their voice at least 6 dB above the echo's)."""
    heard = opus_round_trip(agent) if codec else agent
    delay = int(delay_ms * 48)
    echo = np.zeros(heard.size + delay, np.float64)
    echo[delay:] = heard * 10 ** (gain_db / 20)
    voice = np.zeros_like(echo)
    if user is not None:
        u0 = int(user_at_s * 48_000)
        part = user[: max(0, voice.size - u0)].astype(np.float64)
        voice[u0 : u0 + part.size] = part
    mic = np.clip(echo + voice, -32768, 32767).astype(np.int16)
    inbound = opus_round_trip(mic) if codec else mic
    guard, to16k = EchoGuard(), Decimator(3)
    echo_only: list[bool] = []
    user_frames: list[bool] = []
    for k in range(inbound.size // FRAME_48K + RTT_FRAMES):
        sent = agent[k * FRAME_48K : (k + 1) * FRAME_48K]
        guard.sent(k * 0.02, sent if sent.size == FRAME_48K else np.zeros(FRAME_48K, np.int16))
        j = k - RTT_FRAMES
        if not 0 <= j < inbound.size // FRAME_48K:
            continue
        span = slice(j * FRAME_48K, (j + 1) * FRAME_48K)
        verdict = guard.check(k * 0.02, to16k.process(inbound[span]))
        e, v = float(np.mean(echo[span] ** 2)), float(np.mean(voice[span] ** 2))
        if v > 4 * e and v > 300**2:  # the user's voice 6 dB or more above the echo
            user_frames.append(verdict.echo)
        elif v == 0 and e > 200**2:
            echo_only.append(verdict.echo)
    return {
        "echo_flagged": float(np.mean(echo_only)) if echo_only else None,
        "user_flagged": float(np.mean(user_frames)) if user_frames else None,
    }


CASES = [(gain, delay) for gain in (-15.0, -6.0) for delay in (20.0, 60.0, 150.0)]


@pytest.mark.parametrize(("gain_db", "delay_ms"), CASES)
def test_synthetic_echo_is_found_and_the_user_over_it_is_not(
    gain_db: float, delay_ms: float
) -> None:
    agent, user = speechlike(4.0, seed=1), speechlike(2.0, seed=2)
    alone = run_call(agent, None, gain_db, delay_ms)
    assert alone["echo_flagged"] >= 0.95, alone
    talk = run_call(agent, user, gain_db, delay_ms)
    assert talk["user_flagged"] <= 0.1, talk


@pytest.fixture(scope="module")
def voices() -> tuple[Pcm16, Pcm16]:
    """The agent's voice (a long sentence) and the user's (another): the same piper voice,
    the hardest case for telling them apart. Rendered with piper's noise off, so every run
    judges the same samples: over random renderings the share of the user's frames taken for
    echo under -6 dB echo varies from ~4 to ~30 % (a user less than ~5 dB louder than the
    echo is the guard's known limit, agent/media/echo.py)."""
    from harness.speech import synthesize, synthesizer

    async def make() -> list[Pcm16]:
        async with synthesizer("piper") as pool:
            return [await synthesize(pool, s, deterministic=True) for s in SENTENCES[:5]]

    rendered = asyncio.run(make())
    return np.concatenate(rendered[:4]), rendered[4]


@pytest.mark.parametrize(("gain_db", "delay_ms"), CASES)
def test_real_speech_through_opus_both_ways(
    voices: tuple[Pcm16, Pcm16], gain_db: float, delay_ms: float
) -> None:
    agent, user = voices
    alone = run_call(agent, None, gain_db, delay_ms, codec=True)
    assert alone["echo_flagged"] >= 0.9, alone
    talk = run_call(agent, user, gain_db, delay_ms, user_at_s=1.5, codec=True)
    assert talk["user_flagged"] <= 0.15, talk


def test_nothing_is_echo_before_anything_was_sent_or_when_silence_was() -> None:
    guard = EchoGuard()
    voice = speechlike(0.5, seed=3, rate_hz=16_000)
    frames = [voice[i : i + 320] for i in range(0, voice.size - 319, 320)]
    assert not any(guard.check(i * 0.02, f).echo for i, f in enumerate(frames))
    for i in range(40):
        guard.sent(i * 0.02, np.zeros(FRAME_48K, np.int16))
    assert not any(guard.check(0.8 + i * 0.02, f).echo for i, f in enumerate(frames))


def test_unvoiced_echo_teaches_the_path_so_the_first_voiced_echo_is_already_known() -> None:
    """The greeting's echo (not speech) is never judged echo, but it tells the guard the echo
    path's lag and level: the first reply's echo is then recognized from its first frame."""
    guard = EchoGuard()
    agent = speechlike(2.0, seed=4)
    back = Decimator(3).process((agent * 0.5).astype(np.int16))
    lag_frames = 5  # 100 ms
    verdicts = []
    for k in range(95):
        guard.sent(k * 0.02, agent[k * FRAME_48K : (k + 1) * FRAME_48K])
        j = k - lag_frames
        if j >= 0:
            voiced = j >= 60
            verdicts.append((voiced, guard.check(k * 0.02, back[j * 320 : (j + 1) * 320], voiced)))
    assert not any(v.echo for voiced, v in verdicts if not voiced)
    assert guard.locked_lag is not None and abs(guard.locked_lag / 16 - 100) <= 4
    assert guard.echo_gain is not None and 0.2 < guard.echo_gain < 0.3  # 0.5 in amplitude
    voiced_echo = [v.echo for voiced, v in verdicts if voiced]
    assert voiced_echo[0] and sum(voiced_echo) >= 0.9 * len(voiced_echo)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        EchoConfig(window_ms=30)
    with pytest.raises(ValueError):
        EchoConfig(min_correlation=1.5)


def test_the_user_over_a_speakerphone_that_echoes_nothing_is_never_echo(
    voices: tuple[Pcm16, Pcm16],
) -> None:
    """No echo path at all (a headset) while the agent talks: the user's voice, the same
    piper voice as the agent's, may resemble some stretch of it by chance, but never enough."""
    agent, user = voices
    talk = run_call(agent, user, -200.0, 60.0, user_at_s=1.5, codec=True)
    assert talk["user_flagged"] <= 0.1, talk  # a stray frame; an onset needs 6 in 10
