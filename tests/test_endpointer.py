"""Tests for agent.conversation.endpointer: the Endpointer state machine (driven by x/. strings) and VoiceDetector."""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import Pcm16
from agent.conversation.endpointer import (
    Endpointer,
    EndpointerConfig,
    EndpointEvent,
    EndpointKind,
    VoiceDetector,
)

S, P, R, E, N = (
    EndpointKind.SPEECH_START,
    EndpointKind.PAUSE,
    EndpointKind.RESUME,
    EndpointKind.END_OF_TURN,
    EndpointKind.NOISE,
)
T0 = 100.0  # capture time of frame 0; not zero, so absolute times are really used


def t_of(i: int, frame_ms: int = 20) -> float:
    return T0 + i * frame_ms / 1000


def drive(
    pattern: str,
    config: EndpointerConfig | None = None,
    ep: Endpointer | None = None,
    start: int = 0,
) -> list[tuple[int, EndpointEvent]]:
    """Feed one frame per character ('x' voiced, '.' silent) at 20 ms steps (the config's frame
    length), frame indices counting from `start`; return (frame index, event) pairs."""
    ep = ep or Endpointer(config or EndpointerConfig())
    frame_ms = ep.config.frame_ms
    out = []
    for i, ch in enumerate(pattern, start):
        assert ch in "x.", ch
        event = ep.feed(ch == "x", t_of(i, frame_ms))
        if event is not None:
            out.append((i, event))
    return out


def kinds(pattern: str, config: EndpointerConfig | None = None) -> list[tuple[int, EndpointKind]]:
    return [(i, e.kind) for i, e in drive(pattern, config)]


# Default config at 20 ms frames: onset 6 voiced frames within a 10-frame window, PAUSE after
# 8 silent frames, END_OF_TURN after 20 silent frames, a turn needs >= 10 voiced-span frames.
CASES: list[tuple[str, str, list[tuple[int, EndpointKind]]]] = [
    ("silence only", "." * 60, []),
    ("5 voiced frames are not enough", "x" * 5 + "." * 40, []),
    ("isolated voiced frames", "x...." * 20, []),
    ("every other frame: 5 of 10 in the window", "x." * 30, []),
    ("onset on the 6th voiced frame", "..xxxxxx", [(7, S)]),
    ("gappy onset: 6 of 10", "xx.xx.xx", [(7, S)]),
    (
        "10 voiced frames then silence: a turn",
        "..xxxxxxxxxx" + "." * 25,
        [(7, S), (19, P), (31, E)],
    ),
    (
        "9 voiced frames: shorter than min_utterance",
        "..xxxxxxxxx" + "." * 25,
        [(7, S), (18, P), (30, N)],
    ),
    ("6 voiced frames: noise (after a PAUSE)", "xxxxxx" + "." * 25, [(5, S), (13, P), (25, N)]),
    (
        "7 silent frames: no PAUSE",
        "x" * 12 + "." * 7 + "x" * 4 + "." * 20,
        [(5, S), (30, P), (42, E)],
    ),
    (
        "speech returns after a PAUSE",
        "x" * 12 + "." * 8 + "x" * 4 + "." * 20,
        [(5, S), (19, P), (20, R), (31, P), (43, E)],
    ),
    (
        "pause, resume, pause, resume",
        "x" * 12 + "." * 10 + "xx" + "." * 15 + "xxx" + "." * 20,
        [(5, S), (19, P), (22, R), (31, P), (39, R), (49, P), (61, E)],
    ),
    (
        "two turns",
        "x" * 12 + "." * 20 + "." * 5 + "x" * 12 + "." * 20,
        [(5, S), (19, P), (31, E), (42, S), (56, P), (68, E)],
    ),
    ("still talking: no end yet", "x" * 12 + "." * 19, [(5, S), (19, P)]),
]


@pytest.mark.parametrize(("pattern", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_event_sequence(pattern: str, expected: list[tuple[int, EndpointKind]]) -> None:
    assert kinds(pattern) == expected


def test_event_times_and_speech_bounds() -> None:
    events = drive("..xxxxxxxxxx" + "." * 25)
    (i_s, start), (i_p, pause), (i_e, end) = events
    # Every event carries the time of the frame that caused it.
    assert start.t == pytest.approx(t_of(i_s))
    assert pause.t == pytest.approx(t_of(i_p))
    assert end.t == pytest.approx(t_of(i_e))
    # speech_start = first voiced frame (2); speech_end = end of the last voiced frame (11).
    for _, e in events:
        assert e.speech_start == pytest.approx(t_of(2))
    assert start.speech_end is None
    assert pause.speech_end == pytest.approx(t_of(12))
    assert end.speech_end == pytest.approx(t_of(12))
    # END_OF_TURN fires when exactly eou_silence_ms of silence has been captured.
    assert end.speech_end is not None and pause.speech_end is not None
    assert end.t + 0.020 - end.speech_end == pytest.approx(0.400)
    assert pause.t + 0.020 - pause.speech_end == pytest.approx(0.160)


def test_speech_start_is_first_voiced_frame_in_window() -> None:
    # Frame 0 is still inside the 10-frame window when the 6th voiced frame arrives at 9.
    (i, start), *_ = drive("x....xxxxx")
    assert (i, start.kind) == (9, S)
    assert start.speech_start == pytest.approx(t_of(0))
    # One frame later, frame 0 has slid out: onset needs one more frame and starts at frame 6.
    assert drive("x.....xxxxx") == []
    (i, start), *_ = drive("x.....xxxxxx")
    assert (i, start.kind) == (11, S)
    assert start.speech_start == pytest.approx(t_of(6))


def test_resume_and_end_keep_the_turn_start_and_last_voice() -> None:
    events = drive("..xxxxxxxxxx" + "." * 9 + "xxx" + "." * 20)
    assert [e.kind for _, e in events] == [S, P, R, P, E]
    assert all(e.speech_start == pytest.approx(t_of(2)) for _, e in events)
    # The last voiced frame is 23 (the three after the pause end at frame 24).
    assert events[-1][1].speech_end == pytest.approx(t_of(24))
    assert events[-2][1].speech_end == pytest.approx(t_of(24))


def test_noise_carries_its_bounds() -> None:
    [(_, _), (_, _), (_, noise)] = drive("...xxxxxxx" + "." * 20)
    assert noise.kind == N
    assert noise.speech_start == pytest.approx(t_of(3))
    assert noise.speech_end == pytest.approx(t_of(10))


def test_in_speech_follows_the_turn() -> None:
    ep = Endpointer(EndpointerConfig())
    seen = []
    for i, ch in enumerate("x" * 10 + "." * 20 + "."):
        ep.feed(ch == "x", t_of(i))
        seen.append(ep.in_speech)
    assert seen[:5] == [False] * 5
    assert all(seen[5:29])  # through the PAUSE
    assert seen[29:] == [False, False]  # END_OF_TURN at 29


def test_speculate_equal_to_eou_ends_without_pause() -> None:
    cfg = EndpointerConfig(speculate_ms=400, eou_silence_ms=400)
    assert kinds("x" * 12 + "." * 25, cfg) == [(5, S), (31, E)]


@pytest.mark.parametrize(
    ("cfg", "pattern", "expected"),
    [
        # 30 ms frames: onset 4 voiced of a 6-frame window; PAUSE after 6 silent (180 >= 160),
        # END after 14 silent (420 >= 400).
        (EndpointerConfig(frame_ms=30), "x" * 10 + "." * 20, [(3, S), (15, P), (23, E)]),
        # 10 ms frames: onset 12 voiced of 20; PAUSE after 16 silent, END after 40 silent.
        (EndpointerConfig(frame_ms=10), "x" * 20 + "." * 40, [(11, S), (35, P), (59, E)]),
        (
            EndpointerConfig(
                min_speech_ms=40, onset_window_ms=40, speculate_ms=40, eou_silence_ms=100
            ),
            "x" * 10 + "." * 20,
            [(1, S), (11, P), (14, E)],
        ),
    ],
    ids=["30ms", "10ms", "fast"],
)
def test_other_configs(
    cfg: EndpointerConfig, pattern: str, expected: list[tuple[int, EndpointKind]]
) -> None:
    assert kinds(pattern, cfg) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_ms": 15},
        {"frame_ms": 40},
        {"min_speech_ms": 0},
        {"min_speech_ms": -20},
        {"min_speech_ms": 220, "onset_window_ms": 200},
        {"speculate_ms": 0},
        {"speculate_ms": 420, "eou_silence_ms": 400},
    ],
    ids=repr,
)
def test_config_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        EndpointerConfig(**kwargs)


@pytest.mark.parametrize(("frame_ms", "onset_index"), [(10, 11), (30, 3)])
def test_other_webrtcvad_frame_lengths_work(frame_ms: int, onset_index: int) -> None:
    cfg = EndpointerConfig(frame_ms=frame_ms)  # onset: 120 ms of voice, in frames of this size
    events = kinds("x" * 30 + "." * (1000 // frame_ms), cfg)
    assert [k for _, k in events] == [S, P, E]
    assert events[0][0] == onset_index


def test_onset_that_needs_its_whole_window() -> None:
    cfg = EndpointerConfig(min_speech_ms=200, onset_window_ms=200)
    assert kinds("x" * 9 + "." + "x" * 9, cfg) == [], "9 of 10 frames are not enough"
    assert kinds("x" * 10, cfg) == [(9, S)]


def test_speculation_at_the_end_of_turn_silence_adds_no_pause() -> None:
    cfg = EndpointerConfig(speculate_ms=400, eou_silence_ms=400)
    assert kinds("x" * 12 + "." * 25, cfg) == [(5, S), (31, E)]


def test_one_voiced_frame_can_be_the_whole_onset() -> None:
    cfg = EndpointerConfig(frame_ms=20, min_speech_ms=20, onset_window_ms=20)
    assert kinds("x", cfg) == [(0, S)]


def test_reset_mid_turn() -> None:
    ep = Endpointer(EndpointerConfig())
    assert [e.kind for _, e in drive("x" * 10, ep=ep)] == [S]
    ep.reset()
    assert not ep.in_speech
    # No PAUSE / END_OF_TURN for the abandoned turn; a new turn needs a fresh onset.
    assert drive("." * 40, ep=ep, start=10) == []
    [(i, start)] = drive("xxxxxx", ep=ep, start=50)
    assert (i, start.kind) == (55, S)
    assert start.speech_start == pytest.approx(t_of(50))


def test_reset_clears_a_partial_onset() -> None:
    ep = Endpointer(EndpointerConfig())
    assert drive("xxxxx", ep=ep) == []
    ep.reset()
    assert drive("x", ep=ep, start=5) == []  # would have been the 6th voiced frame
    assert [(i, e.kind) for i, e in drive("xxxxx", ep=ep, start=6)] == [(10, S)]


def test_reset_after_pause_forgets_it() -> None:
    ep = Endpointer(EndpointerConfig())
    assert [(i, e.kind) for i, e in drive("x" * 12 + "." * 8, ep=ep)] == [(5, S), (19, P)]
    ep.reset()
    # A new turn: it starts with SPEECH_START, not RESUME, and ends normally.
    events = drive("x" * 12 + "." * 20, ep=ep, start=20)
    assert [(i, e.kind) for i, e in events] == [(25, S), (39, P), (51, E)]
    assert events[-1][1].speech_start == pytest.approx(t_of(20))
    assert events[-1][1].speech_end == pytest.approx(t_of(32))


# --- VoiceDetector (webrtcvad) -------------------------------------------------------------


def voiced_like(n: int, rate: int = 16_000) -> Pcm16:
    """Loud 200 Hz fundamental + harmonics with a syllable-rate envelope."""
    t = np.arange(n) / rate
    sig = cast(
        npt.NDArray[np.float64], sum(np.sin(2 * np.pi * 200 * k * t) / k for k in range(1, 15))
    )
    sig = sig * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    pcm: Pcm16 = (sig / np.abs(sig).max() * 20000).astype(np.int16)
    return pcm


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_vad_silence_is_not_speech(aggressiveness: int) -> None:
    vad = VoiceDetector(aggressiveness)
    assert vad.frame_samples == 320
    assert all(not vad.is_speech(np.zeros(320, np.int16)) for _ in range(10))


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_vad_voiced_signal_is_speech(aggressiveness: int) -> None:
    vad = VoiceDetector(aggressiveness)
    pcm = voiced_like(320 * 10)
    decisions = [vad.is_speech(pcm[i * 320 : (i + 1) * 320]) for i in range(10)]
    assert sum(decisions) >= 8, decisions


@pytest.mark.parametrize(("frame_ms", "samples"), [(10, 160), (20, 320), (30, 480)])
def test_vad_frame_sizes(frame_ms: int, samples: int) -> None:
    vad = VoiceDetector(2, frame_ms)
    assert vad.frame_samples == samples
    assert vad.is_speech(np.zeros(samples, np.int16)) is False
    for wrong in (samples - 1, samples + 1, 0):
        with pytest.raises(ValueError):
            vad.is_speech(np.zeros(wrong, np.int16))


@pytest.mark.parametrize("aggressiveness", [-1, 4])
def test_vad_aggressiveness_validated(aggressiveness: int) -> None:
    with pytest.raises(ValueError):
        VoiceDetector(aggressiveness)
