"""The completeness rule and the silence it chooses (pure)."""

from __future__ import annotations

import pytest

from agent.conversation.completeness import Completeness, TurnEndConfig, completeness

C, INC, U = Completeness.COMPLETE, Completeness.INCOMPLETE, Completeness.UNKNOWN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What time is it?", C),
        ("Tell me a joke.", C),
        ("Thanks a lot!", C),
        ("What is 20 divided by 4?", C),  # digits are words
        ("Add 5 to 7.", C),
        ("No.", U),  # "No, that's not what I meant": one word ends no turn early
        ("Hello.", U),
        ("I'd like to book a table for two.", C),
        ("What is seven times six?", C),
        ("I want to", INC),
        ("I want to.", INC),  # whisper's period does not make it finished
        ("Book a table and", INC),
        ("Can you tell me the", INC),
        ("My name is", INC),
        ("Um.", INC),
        ("I'd like to...", INC),
        ("I'd like to…", INC),
        ("So, first,", INC),
        ("", U),
        ("   ", U),
        ("what time is it", U),  # a streaming partial: no punctuation to go by
    ],
)
def test_completeness(text: str, expected: Completeness) -> None:
    assert completeness(text) == expected


def test_silence_follows_the_words_within_bounds() -> None:
    cfg = TurnEndConfig(complete_ms=250, incomplete_ms=900)
    assert cfg.silence_ms("What time is it?", 400) == 250
    assert cfg.silence_ms("I want to", 400) == 900
    assert cfg.silence_ms("what time is it", 400) == 400
    # Never longer than the default for a complete utterance, never shorter for an unfinished one.
    assert cfg.silence_ms("What time is it?", 200) == 200
    assert cfg.silence_ms("I want to", 1200) == 1200


def test_reading_words_can_be_turned_off() -> None:
    cfg = TurnEndConfig(read_words=False)
    assert {cfg.silence_ms(t, 400) for t in ("Hi.", "I want to", "")} == {400}


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TurnEndConfig(complete_ms=900, incomplete_ms=250)
    with pytest.raises(ValueError):
        TurnEndConfig(complete_ms=0)
