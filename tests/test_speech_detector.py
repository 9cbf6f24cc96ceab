"""The noise-proof speech detector (real Silero model) with the Endpointer, on generated noise.

Speech is piper's (the session `speech` fixture); noise comes from harness/noise.py and keeps
going 3 s after the speech, as in a real room. Levels: speech at about −26 dBFS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from agent.audio import Decimator, Pcm16
from agent.conversation.endpointer import Endpointer, EndpointerConfig, EndpointKind
from agent.conversation.speech_detector import SpeechDetector, SpeechDetectorConfig
from agent.engines.silero_vad import SileroModel
from harness import noise
from harness.peer import last_speech_offset

RATE = 48_000
SPEECH_DBFS = -26.0


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel()


def detector(silero: SileroModel, kind: str = "silero") -> SpeechDetector:
    return SpeechDetector(SpeechDetectorConfig(kind=kind), 20, silero)


def at_dbfs(pcm: Pcm16, dbfs: float) -> Pcm16:
    rms = float(np.sqrt(noise.active_power(pcm)))
    scaled: Pcm16 = np.clip(pcm * (32768 * 10 ** (dbfs / 20) / rms), -32768, 32767).astype(np.int16)
    return scaled


def run(det: SpeechDetector, pcm48: Pcm16) -> list[tuple[EndpointKind, float, float | None]]:
    """(kind, frame time, speech_end) of every endpointer event, times in s from sample 0."""
    ep = Endpointer(EndpointerConfig())
    pcm16 = Decimator(3).process(pcm48)
    out = []
    for i in range(pcm16.size // 320):
        t = i * 0.02
        event = ep.feed(det.is_speech(pcm16[i * 320 : (i + 1) * 320]), t)
        if event is not None:
            out.append((event.kind, t, event.speech_end))
    return out


NOISES: dict[str, Callable[[np.random.Generator, int, list[Pcm16]], Pcm16]] = {
    "pink": lambda rng, n, _: noise.pink(rng, n),
    "hum": lambda rng, n, _: noise.hum(rng, n),
    "white": lambda rng, n, _: noise.white(rng, n),
    "babble": lambda rng, n, talkers: noise.babble(rng, n, talkers),
}


@pytest.mark.parametrize("kind", ["pink", "hum", "white"])
def test_steady_noise_alone_never_starts_a_turn(silero: SileroModel, kind: str) -> None:
    # As loud as the speech itself would be: far above what any SNR target asks.
    rng = np.random.default_rng(11)
    pcm = at_dbfs(NOISES[kind](rng, 10 * RATE, []), SPEECH_DBFS)
    assert run(detector(silero), pcm) == []


def test_webrtcvad_alone_takes_that_noise_for_speech(silero: SileroModel) -> None:
    """The problem the detector solves (and proof that the test above can fail)."""
    rng = np.random.default_rng(11)
    pcm = at_dbfs(noise.pink(rng, 10 * RATE), SPEECH_DBFS)
    assert run(detector(silero, "webrtcvad"), pcm)[0][0] == EndpointKind.SPEECH_START


@pytest.mark.parametrize(
    ("kind", "snr_db"),
    [("clean", None), ("pink", 10), ("pink", 15), ("hum", 12), ("babble", 20), ("white", 25)],
)
def test_end_of_speech_is_found_while_the_noise_goes_on(
    silero: SileroModel, speech: dict[str, Pcm16], kind: str, snr_db: float | None
) -> None:
    rng = np.random.default_rng(5)
    said = at_dbfs(speech["What day is it today?"], SPEECH_DBFS)
    talkers = [speech[t] for t in ("Good morning.", "What can you do?", "Tell me a story.")]
    lead, tail = np.zeros(RATE // 2, np.int16), np.zeros(3 * RATE, np.int16)
    clean = np.concatenate([lead, said, tail])
    true_end_s = last_speech_offset(clean) / RATE
    pcm = clean
    if snr_db is not None:
        pcm = noise.mix(clean, NOISES[kind](rng, clean.size, talkers), snr_db)
    events = run(detector(silero), pcm)
    kinds = [k for k, _, _ in events]
    assert kinds[0] == EndpointKind.SPEECH_START and EndpointKind.END_OF_TURN in kinds, events
    assert kinds.count(EndpointKind.SPEECH_START) == 1, f"the noise started a turn: {events}"
    eot = next((t, end) for k, t, end in events if k == EndpointKind.END_OF_TURN)
    assert eot[1] is not None
    # The detected end of speech is within 200 ms of the true one, so the turn ends on time
    # (default silence 400 ms) though the noise goes on for 3 s.
    assert abs(eot[1] - true_end_s) <= 0.2, (eot, true_end_s)
    assert eot[0] - true_end_s <= 0.4 + 0.2


def test_babble_after_the_user_spoke_never_starts_a_turn(
    silero: SileroModel, speech: dict[str, Pcm16]
) -> None:
    rng = np.random.default_rng(9)
    det = detector(silero)
    said = at_dbfs(speech["What day is it today?"], SPEECH_DBFS)
    talkers = [speech[t] for t in ("Good morning.", "What can you do?", "Tell me a story.")]
    room = noise.babble(rng, 8 * RATE, talkers)
    quiet = at_dbfs(room, SPEECH_DBFS - 20)  # 20 dB below the user
    events = run(det, np.concatenate([np.zeros(RATE // 2, np.int16), said, quiet]))
    assert [k for k, _, _ in events].count(EndpointKind.SPEECH_START) == 1, events
