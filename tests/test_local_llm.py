"""Tests for agent.engines.local_llm: the rule-based responder and its word-by-word stream."""

from __future__ import annotations

import datetime

import pytest

from agent.engines.interfaces import Message, Role
from agent.engines.local_llm import STORY, LocalLlm, respond

NOW = datetime.datetime(2024, 3, 5, 14, 7)  # a Tuesday afternoon


def at(hour: int, minute: int) -> datetime.datetime:
    return NOW.replace(hour=hour, minute=minute)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(14, 7), "It's 2:07 in the afternoon."),
        (at(9, 0), "It's 9 o'clock in the morning."),
        (at(0, 30), "It's 12:30 in the morning."),
        (at(12, 0), "It's 12 o'clock in the afternoon."),
        (at(11, 59), "It's 11:59 in the morning."),
        (at(17, 59), "It's 5:59 in the afternoon."),
        (at(18, 0), "It's 6 o'clock in the evening."),
        (at(23, 45), "It's 11:45 in the evening."),
    ],
)
def test_time(now: datetime.datetime, expected: str) -> None:
    assert respond("What time is it?", now) == expected


@pytest.mark.parametrize(
    "text", ["What time is it?", "what's the time", "Tell me the time, please."]
)
def test_time_phrasings(text: str) -> None:
    assert respond(text, NOW) == "It's 2:07 in the afternoon."


@pytest.mark.parametrize("text", ["What is the date today?", "what's the date", "What day is it?"])
def test_date(text: str) -> None:
    assert respond(text, NOW) == "Today is Tuesday, March 5, 2024."


def test_date_follows_the_clock() -> None:
    assert (
        respond("date", datetime.datetime(2025, 12, 31, 8, 0))
        == "Today is Wednesday, December 31, 2025."
    )


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("what is two plus three", "5"),
        ("What is 7 times 6?", "42"),
        ("what's ten minus twelve", "-2"),
        ("nine divided by two", "4.5"),
        ("what is twenty divided by four", "5"),
        ("twelve multiplied by three", "36"),
        ("what is 100 plus 23", "123"),
    ],
)
def test_arithmetic(text: str, answer: str) -> None:
    reply = respond(text, NOW)
    assert reply.endswith(f" is {answer}.")


def test_arithmetic_echoes_the_question_in_digits() -> None:
    assert respond("what is two plus three", NOW) == "2 plus 3 is 5."
    # Recognizers write homophones for spoken numbers.
    assert respond("what is to plus for", NOW) == "2 plus 4 is 6."


def test_division_by_zero() -> None:
    assert respond("five divided by zero", NOW) == "Dividing by zero is the one thing I can't do."
    assert respond("what is 3 divided by 0", NOW).startswith("Dividing by zero")


@pytest.mark.parametrize("text", ["Hello!", "hi there", "Hey", "Good morning", "good evening"])
def test_greeting(text: str) -> None:
    assert respond(text, NOW) == "Hello! How can I help you today?"


@pytest.mark.parametrize("text", ["What can you do?", "Can you help me?", "what do you do"])
def test_capabilities(text: str) -> None:
    reply = respond(text, NOW)
    for topic in ("time", "date", "arithmetic", "story"):
        assert topic in reply


@pytest.mark.parametrize(
    ("text", "expected_start"),
    [
        ("Thank you very much.", "You're welcome"),
        ("thanks", "You're welcome"),
        ("Goodbye", "Goodbye!"),
        ("ok bye", "Goodbye!"),
        ("What is your name?", "I'm ringback"),
        ("who are you", "I'm ringback"),
        ("How are you?", "I'm doing well"),
        ("What's the weather like?", "I can't check the weather"),
        ("", "Sorry, I didn't catch that"),
        ("?!", "Sorry, I didn't catch that"),
    ],
)
def test_other_intents(text: str, expected_start: str) -> None:
    assert respond(text, NOW).startswith(expected_start)


@pytest.mark.parametrize("text", ["Tell me a story.", "story please", "Can you tell me a story?"])
def test_story_is_long(text: str) -> None:
    reply = respond(text, NOW)
    assert reply == STORY
    assert len(reply) > 400


@pytest.mark.parametrize(
    ("text", "echo"),
    [
        ("The purple elephant dances.", "The purple elephant dances"),
        ("  I like trains!  ", "I like trains"),
        ("Bananas are yellow?", "Bananas are yellow"),
    ],
)
def test_unknown_text_is_reflected(text: str, echo: str) -> None:
    reply = respond(text, NOW)
    assert reply.startswith(f"You said: {echo}. ")


@pytest.mark.parametrize(
    ("text", "expected_start"),
    [
        ("Hello, how are you today?", "I'm doing well"),
        ("Thanks, have a nice day.", "You're welcome"),
    ],
)
def test_day_in_small_talk_is_not_a_date_question(text: str, expected_start: str) -> None:
    assert respond(text, NOW).startswith(expected_start)


# --- LocalLlm.complete ---------------------------------------------------------------------


async def collect(llm: LocalLlm, messages: list[Message]) -> list[str]:
    return [token async for token in llm.complete(messages)]


@pytest.mark.parametrize(
    "question", ["what is two plus three", "Tell me a story.", "What time is it?"]
)
async def test_complete_streams_the_reply_word_by_word(question: str) -> None:
    llm = LocalLlm(now=lambda: NOW)
    messages = [
        Message(Role.SYSTEM, "You are a helpful voice agent."),
        Message(Role.USER, "hello"),
        Message(Role.ASSISTANT, "Hello! How can I help you today?"),
        Message(Role.USER, question),
    ]
    tokens = await collect(llm, messages)
    expected = respond(question, NOW)
    assert "".join(tokens) == expected
    assert len(tokens) == len(expected.split(" ")) > 1
    assert not tokens[0].startswith(" ")
    assert all(t.startswith(" ") and t.strip() == t[1:] for t in tokens[1:])


async def test_complete_answers_the_last_user_message_only() -> None:
    llm = LocalLlm(now=lambda: NOW)
    tokens = await collect(
        llm, [Message(Role.USER, "What time is it?"), Message(Role.ASSISTANT, "Tell me a story.")]
    )
    assert "".join(tokens) == "It's 2:07 in the afternoon."


async def test_complete_without_user_message() -> None:
    tokens = await collect(LocalLlm(now=lambda: NOW), [Message(Role.SYSTEM, "be brief")])
    assert "".join(tokens).startswith("Sorry")
    assert LocalLlm.name == "local"
