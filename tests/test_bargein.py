"""Tier 2 on a fake clock: a barge-in reaches the turn manager at the speech detector's onset
frame, before the recognizer is even started; the agent's own voice coming back does not start
a turn; a speculated first chunk plays within one frame of the end of turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from agent.audio import Pcm16, dbfs
from agent.clock import FakeClock
from agent.conversation.endpointer import Endpointer, EndpointerConfig
from agent.conversation.history import Conversation
from agent.conversation.listener import Listener, ListenerConfig, SpeechStarted, TurnEvent
from agent.conversation.turns import TurnManager
from agent.media.echo import EchoGuard
from agent.media.outbound import OutboundAudioTrack
from agent.metrics import TurnMetrics
from tests.test_echo import speechlike
from tests.test_listener import Frame, MarkedVoice, ScriptedRecognizer, frames_of
from tests.turn_rig import ScriptedLlm, ScriptedTts


class SlowStartRecognizer(ScriptedRecognizer):
    """A recognizer whose start is a round trip that only ends when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()
        await super().start()


async def _aiter(frames: list[Frame]) -> AsyncIterator[Frame]:
    for f in frames:
        yield f


async def test_speech_started_comes_at_the_onset_frame_before_the_recognizer_starts() -> None:
    rec = SlowStartRecognizer()
    listener = Listener(
        MarkedVoice(),
        Endpointer(EndpointerConfig()),
        rec,
        FakeClock(),
        ListenerConfig(preroll_ms=60),
    )
    frames = frames_of("." * 5 + "x" * 10)
    onset_index = 5 + EndpointerConfig().min_speech_ms // 20 - 1  # the 6th voiced frame
    seen: list[tuple[TurnEvent, list[str]]] = []
    async with asyncio.timeout(5):  # a listener that awaits the recognizer first never ends
        async for event in listener.events(_aiter(frames)):
            seen.append((event, list(rec.calls)))
            if isinstance(event, SpeechStarted):
                rec.release.set()  # the round trip ends only after the event was handled
    started = [(e, calls) for e, calls in seen if isinstance(e, SpeechStarted)]
    assert len(started) == 1
    event, calls_then = started[0]
    assert "start" not in calls_then, "the turn manager heard of it before the recognizer started"
    assert isinstance(event, SpeechStarted)
    assert event.metrics.audio_chunk_received == frames[onset_index].t
    # The recognizer still gets everything, in order: pre-roll, onset frame, the rest.
    assert rec.pushed == [*range(8, 16)]


async def _echo_listener(echo_guard: EchoGuard | None) -> tuple[Listener, ScriptedRecognizer]:
    class Loud:
        def is_speech(self, frame: Pcm16) -> bool:
            return dbfs(frame) > -40  # what webrtcvad and Silero say of any voice, the agent's too

    rec = ScriptedRecognizer()
    listener = Listener(
        Loud(),
        Endpointer(EndpointerConfig()),
        rec,
        FakeClock(),
        ListenerConfig(),
        echo_guard=echo_guard,
    )
    return listener, rec


async def _feed_call(user: bool, guard: bool) -> list[TurnEvent]:
    """The agent talks for 2 s; its voice comes back 100 ms later at −6 dB; with `user`, the
    caller talks over it from 1 s on."""
    agent = speechlike(2.0, seed=11)
    echo_guard = EchoGuard() if guard else None
    listener, _ = await _echo_listener(echo_guard)
    back = np.zeros(agent.size + 4800, np.float64)
    back[4800:] = agent * 10 ** (-6 / 20)
    if user:
        voice = speechlike(1.0, seed=12)
        back[48_000 : 48_000 + voice.size] += voice
    back16 = np.clip(back[::3], -32768, 32767).astype(np.int16)  # crude 16 kHz, as heard
    events: list[TurnEvent] = []
    for k in range(back16.size // 320):
        if echo_guard is not None:
            sent = agent[k * 960 : (k + 1) * 960]
            echo_guard.sent(k * 0.02, sent if sent.size == 960 else np.zeros(960, np.int16))
        events += await listener.feed(Frame(back16[k * 320 : (k + 1) * 320], k * 0.02))
    return events


async def test_the_agents_own_voice_coming_back_starts_no_turn() -> None:
    assert any(isinstance(e, SpeechStarted) for e in await _feed_call(False, guard=False))
    assert not any(isinstance(e, SpeechStarted) for e in await _feed_call(False, guard=True))


async def test_the_user_talking_over_the_echo_still_starts_a_turn_at_once() -> None:
    events = await _feed_call(True, guard=True)
    started = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(started) == 1
    t = started[0].metrics.audio_chunk_received
    assert t is not None and 1.0 <= t <= 1.0 + 0.2, "within the onset window of the user's voice"


async def test_a_speculated_first_chunk_plays_within_one_frame_of_the_end_of_turn() -> None:
    clock = FakeClock()
    track = OutboundAudioTrack(clock)
    tts = ScriptedTts(instant=True)
    tm = TurnManager(ScriptedLlm(), tts, track, Conversation(), clock, lambda e: None)
    sent: list[tuple[float, int]] = []  # (time, audio frames sent so far)

    async def pump() -> None:
        while True:
            await track.recv()
            sent.append((clock.now(), track.audio_frames_sent))

    pumping = asyncio.get_running_loop().create_task(pump())
    try:
        await clock.advance(0.1)
        await tm.on_speech_start()
        metrics = TurnMetrics(turn=1)
        await tm.on_pause("what time is it", metrics)
        await clock.advance(0.2)
        assert tts.texts == ["It's noon."], "the first unit is synthesized in the pause"
        assert track.audio_frames_sent == 0, "and held back"
        t_end = clock.now()
        await tm.on_final("What time is it?", metrics)
        await clock.advance(0.1)
        first = next(t for t, n in sent if n > 0)
        assert first - t_end <= 0.02 + 1e-9, f"first audio {1000 * (first - t_end):.0f} ms late"
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await tm.aclose()
