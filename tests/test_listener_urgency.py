"""The listener tells the shared whisper pool how urgent each accurate pass is."""

from __future__ import annotations

from agent.audio import Pcm16
from agent.clock import FakeClock
from agent.conversation.listener import Final
from agent.engines.interfaces import Transcription
from agent.engines.priority import Priority, Urgency
from tests.test_listener import ScriptedTranscriber, only, run_hybrid


class RecordingTranscriber(ScriptedTranscriber):
    """Keeps each pass's Urgency (the listener may raise it later) and its class at the start."""

    def __init__(self, clock: FakeClock, text: str, delay_s: float) -> None:
        super().__init__(clock, text, delay_s)
        self.urgencies: list[Urgency] = []
        self.at_start: list[Priority] = []

    async def transcribe(self, pcm16: Pcm16, urgency: Urgency | None = None) -> Transcription:
        assert urgency is not None, "the listener always says how urgent a pass is"
        self.urgencies.append(urgency)
        self.at_start.append(urgency.priority)
        return await super().transcribe(pcm16, urgency)


async def test_the_pass_started_in_the_pause_is_speculative() -> None:
    _, _, whisper = await run_hybrid(
        "x" * 20 + "." * 40, lambda c: RecordingTranscriber(c, "What time is it?", 0.06)
    )
    assert isinstance(whisper, RecordingTranscriber)
    assert whisper.at_start == [Priority.SPECULATIVE]


async def test_a_pass_still_running_at_the_end_of_turn_is_raised_to_turn_final() -> None:
    events, _, whisper = await run_hybrid(
        "x" * 20 + "." * 70, lambda c: RecordingTranscriber(c, "Hello there.", 1.2)
    )
    assert isinstance(whisper, RecordingTranscriber)
    ((_, final),) = only(events, Final)
    assert final.text == "Hello there."
    assert whisper.at_start == [Priority.SPECULATIVE]
    assert [u.priority for u in whisper.urgencies] == [Priority.TURN_FINAL]


async def test_speech_after_the_pause_cancels_the_speculative_pass() -> None:
    _, _, whisper = await run_hybrid(
        "x" * 20 + "." * 8 + "x" * 4 + "." * 40,
        lambda c: RecordingTranscriber(c, "Call my mother.", 0.2),
    )
    assert isinstance(whisper, RecordingTranscriber)
    assert whisper.cancelled == 1 and whisper.at_start == [Priority.SPECULATIVE] * 2
    # The cancelled one was never raised: only the adopted pass holds the turn.
    assert [u.priority for u in whisper.urgencies] == [Priority.SPECULATIVE, Priority.TURN_FINAL]
