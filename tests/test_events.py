"""The `events` channel's inbound side (ping → pong, mute), the mute filter and the greeting."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Hashable
from typing import Any

import numpy as np
import pytest

from agent.audio import OUT_RATE_HZ, Pcm16, peak_dbfs
from agent.call.events import EventChannel
from agent.call.greeting import MARK, chime_pcm, play_greeting
from agent.call.mute import Mute
from agent.engines.priority import Urgency
from agent.media.inbound import InboundFrame


class Channel:
    """The two things EventChannel uses of an RTCDataChannel: readyState and send()."""

    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def on(self, event: str, handler: object) -> None:
        pass


def channel_with(on_mute: list[bool] | None = None) -> tuple[EventChannel, Channel]:
    mutes = on_mute if on_mute is not None else []
    events = EventChannel("s1", on_mute=mutes.append)
    ch = Channel()
    events.attach(ch)  # type: ignore[arg-type]  # duck-typed stand-in for RTCDataChannel
    return events, ch


def test_ping_is_answered_with_its_own_time() -> None:
    events, ch = channel_with()
    events.receive('{"type":"ping","t":1234.5}')
    events.receive(b'{"type":"ping"}')
    assert ch.sent == [{"type": "pong", "t": 1234.5}, {"type": "pong", "t": None}]


@pytest.mark.parametrize(
    "message",
    ["not json", "[1,2]", '{"type":"mute","muted":"yes"}', '{"type":"other"}', "x" * 5000],
)
def test_junk_is_ignored(message: str) -> None:
    mutes: list[bool] = []
    events, ch = channel_with(mutes)
    events.receive(message)
    assert ch.sent == [] and mutes == []


def test_mute_reaches_the_session() -> None:
    mutes: list[bool] = []
    events, _ = channel_with(mutes)
    events.receive('{"type":"mute","muted":true}')
    events.receive('{"type":"mute","muted":false}')
    assert mutes == [True, False]


async def test_muted_frames_become_silence() -> None:
    loud = np.full(320, 8000, np.int16)

    async def frames() -> AsyncGenerator[InboundFrame, None]:
        for i in range(4):
            yield InboundFrame(loud, i * 0.02)

    mute = Mute()
    out = []
    async for frame in mute.filter(frames()):
        out.append(frame)
        mute.set(len(out) in (1, 2))  # muted for the 2nd and 3rd frames
    assert [int(np.abs(f.pcm16).max()) for f in out] == [8000, 0, 0, 8000]
    assert [f.t for f in out] == [0.0, 0.02, 0.04, 0.06]


class Sink:
    def __init__(self) -> None:
        self.queued: list[tuple[Pcm16, Hashable]] = []
        self.log: list[str] = []

    async def enqueue(self, pcm: Pcm16, mark: Hashable) -> None:
        self.queued.append((pcm, mark))
        self.log.append("enqueue")

    async def wait_drained(self) -> None:
        self.log.append("drained")

    def end_stream(self) -> None:
        self.log.append("end")

    def clear(self) -> int:
        return 0

    def played_samples(self, mark: Hashable) -> int:
        return 0

    def forget(self, mark: Hashable) -> None:
        self.log.append("forget")


class Tts:
    sample_rate_hz = OUT_RATE_HZ

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def synthesize(
        self, text: str, *, urgency: Urgency | None = None
    ) -> AsyncGenerator[Pcm16, None]:
        self.texts.append(text)
        yield np.ones(480, np.int16)


def test_chime_is_short_and_quiet() -> None:
    pcm = chime_pcm()
    assert 0.15 < pcm.size / OUT_RATE_HZ < 0.4
    assert -16 < peak_dbfs(pcm) < -12
    assert abs(int(pcm[0])) < 100 and abs(int(pcm[-1])) < 100  # faded: no click


@pytest.mark.parametrize(
    ("greeting", "queued", "said"),
    [("chime", 1, []), ("none", 0, []), ("Hi, I'm listening.", 1, ["Hi, I'm listening."])],
)
async def test_ready_only_after_the_greeting_has_played(
    greeting: str, queued: int, said: list[str]
) -> None:
    sink, tts, emitted = Sink(), Tts(), []

    def emit(event: dict[str, Any]) -> None:
        emitted.append(event)
        sink.log.append("ready")

    await play_greeting(greeting, sink, tts, emit)  # type: ignore[arg-type]  # duck-typed TTS
    assert len(sink.queued) == queued and all(mark == MARK for _, mark in sink.queued)
    assert tts.texts == said
    assert emitted == [{"type": "ready"}]
    assert sink.log[-4:] == ["end", "drained", "forget", "ready"]
