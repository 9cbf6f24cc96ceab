"""The listener on scripted frames: which turn events, and what the recognizer is given."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.audio import Pcm16
from agent.clock import FakeClock
from agent.conversation.endpointer import Endpointer, EndpointerConfig
from agent.conversation.listener import (
    Final,
    Listener,
    ListenerConfig,
    NoiseOnly,
    Partial,
    Paused,
    Resumed,
    SpeechStarted,
    TurnEvent,
)


@dataclass(frozen=True)
class Frame:
    pcm16: Pcm16
    t: float


class MarkedVoice:
    """A frame is 'voiced' when its samples are positive: frames carry their index as value."""

    def is_speech(self, frame: Pcm16) -> bool:
        return bool(frame[0] > 0)


class ScriptedRecognizer:
    def __init__(self) -> None:
        self.pushed: list[int] = []  # frame values, in order
        self.calls: list[str] = []

    async def open(self) -> None:
        self.calls.append("open")

    async def start(self) -> None:
        self.calls.append("start")
        self.pushed.clear()

    async def push(self, pcm16: Pcm16) -> None:
        self.pushed.append(int(pcm16[0]))

    async def partial(self) -> str:
        return f"{len(self.pushed)} frames"

    async def finish(self) -> str:
        self.calls.append("finish")
        return "final words"

    async def cancel(self) -> None:
        self.calls.append("cancel")

    async def aclose(self) -> None:
        self.calls.append("aclose")


def frames_of(pattern: str, t0: float = 100.0) -> list[Frame]:
    """'x' voiced, '.' silent; a voiced frame holds +index, a silent one -index."""
    out = []
    for i, ch in enumerate(pattern):
        value = i + 1 if ch == "x" else -(i + 1)
        out.append(Frame(np.full(320, value, np.int16), t0 + i * 0.02))
    return out


async def run(pattern: str, config: ListenerConfig | None = None) -> tuple[list[TurnEvent], ScriptedRecognizer]:
    rec = ScriptedRecognizer()
    listener = Listener(
        MarkedVoice(),
        Endpointer(EndpointerConfig()),
        rec,
        FakeClock(),
        config or ListenerConfig(preroll_ms=100, partial_interval_ms=100),
    )
    events: list[TurnEvent] = []
    for frame in frames_of(pattern):
        events += await listener.feed(frame)
    return events, rec


async def test_a_turn_gets_preroll_speech_partials_pause_and_final() -> None:
    events, rec = await run("." * 10 + "x" * 20 + "." * 25, ListenerConfig(preroll_ms=200))
    assert [type(e) for e in events if not isinstance(e, Partial)] == [
        SpeechStarted,
        Paused,
        Final,
    ]
    partials = [e.text for e in events if isinstance(e, Partial)]
    assert partials and len(partials) == len(set(partials)), "only changed partials"
    # The onset fires on the 6th voiced frame (index 15). The 200 ms of pre-roll before it hold
    # the 5 voiced frames of the onset window and 5 silent ones before them.
    assert rec.pushed[:5] == [-6, -7, -8, -9, -10]
    assert rec.pushed[5:25] == list(range(11, 31))
    final = events[-1]
    assert isinstance(final, Final) and final.text == "final words"
    m = final.metrics
    assert m.speech_start is not None and abs(m.speech_start - (100 + 10 * 0.02)) < 1e-9
    assert m.speech_end is not None and abs(m.speech_end - (100 + 30 * 0.02)) < 1e-9
    assert rec.calls == ["start", "finish"]


async def test_resume_after_a_pause_is_reported_and_the_turn_goes_on() -> None:
    events, rec = await run("x" * 12 + "." * 9 + "x" * 6 + "." * 25)
    kinds = [type(e) for e in events if not isinstance(e, Partial)]
    assert kinds == [SpeechStarted, Paused, Resumed, Paused, Final]
    assert rec.calls == ["start", "finish"]


async def test_a_click_is_noise_and_cancels_the_utterance() -> None:
    events, rec = await run("." * 5 + "x" * 7 + "." * 30)
    assert [type(e) for e in events if not isinstance(e, Partial)] == [
        SpeechStarted,
        Paused,
        NoiseOnly,
    ]
    assert rec.calls == ["start", "cancel"]


async def test_partials_are_paced() -> None:
    events, _ = await run("x" * 60, ListenerConfig(preroll_ms=0, partial_interval_ms=200))
    partials = [e for e in events if isinstance(e, Partial)]
    # 60 frames = 1.2 s, the first 6 before the onset: one partial per 200 ms after it.
    assert 4 <= len(partials) <= 6
