"""The built-in conversational responder: deterministic, instant, no model at all.

It answers the time and date, greetings, what it can do, simple arithmetic, thanks and
goodbyes, tells a (long) story on request, and otherwise reflects what it heard. Replies are
streamed word by word like a real LLM so the rest of the pipeline is exercised the same way.
"""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import AsyncGenerator, Callable, Sequence

from agent.engines.interfaces import Message, Role

_NUMBERS = {
    w: i
    for i, w in enumerate(
        (
            "zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
        ).split()
    )
}
_OPS = {"plus": "+", "minus": "-", "times": "*", "multiplied": "*", "divided": "/"}

STORY = (
    "Once upon a time, in a small town by the sea, there lived a lighthouse keeper named Ada. "
    "Every evening she climbed the long spiral staircase to light the great lamp. "
    "One stormy night, a little fishing boat lost its way in the fog, far from the harbour. "
    "Ada saw its tiny light flicker between the waves, and she turned the lamp toward it. "
    "The fishermen followed the beam through the rocks and reached the harbour safely. "
    "The next morning the whole town came to thank her, and they brought her fresh bread, "
    "warm soup, and a brand new lantern. From that day on, nobody in the town ever feared "
    "the fog again, because they knew that Ada was watching over them."
)


def _spoken_time(now: datetime.datetime) -> str:
    hour = now.hour % 12 or 12
    suffix = (
        "in the morning"
        if now.hour < 12
        else "in the afternoon"
        if now.hour < 18
        else "in the evening"
    )
    if now.minute == 0:
        return f"It's {hour} o'clock {suffix}."
    return f"It's {hour}:{now.minute:02d} {suffix}."


# Homophones a recognizer writes for spoken numbers ("what is to plus three").
_HOMOPHONES = {"won": 1, "to": 2, "too": 2, "for": 4, "ate": 8}


def _number(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    return _NUMBERS.get(word, _HOMOPHONES.get(word))


def respond(text: str, now: datetime.datetime) -> str:
    t = " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())
    words = set(t.split())
    if not t:
        return "Sorry, I didn't catch that. Could you say it again?"
    if "story" in words:
        return STORY
    if "time" in words and ("what" in words or "what's" in words or "tell" in words):
        return _spoken_time(now)
    if "date" in words or (words & {"what", "which"} and words & {"day", "today"}):
        return f"Today is {now:%A}, {now:%B} {now.day}, {now.year}."
    m = re.search(r"(\w+) (plus|minus|times|multiplied|divided) (?:by )?(\w+)", t)
    if m and (a := _number(m.group(1))) is not None and (b := _number(m.group(3))) is not None:
        op = _OPS[m.group(2)]
        if op == "/" and b == 0:
            return "Dividing by zero is the one thing I can't do."
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0}[op]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{a} {m.group(2)} {b} is {shown}."
    if words & {"bye", "goodbye"}:
        return "Goodbye! It was nice talking with you."
    if words & {"thanks", "thank"}:
        return "You're welcome! Anything else?"
    if words & {"name", "who"} and words & {"you", "your"}:
        return "I'm ringback, a voice agent running entirely on this server."
    if words & {"help", "can", "do"} and words & {"you", "what"}:
        return (
            "I can tell you the time and the date, do simple arithmetic, tell you a story, "
            "or just chat. Try asking me what time it is."
        )
    if "how" in words and "you" in words:
        return "I'm doing well, thanks for asking. How can I help you?"
    if words & {"hello", "hi", "hey", "morning", "evening", "afternoon"}:
        return "Hello! How can I help you today?"
    if "weather" in words:
        return "I can't check the weather from here, I have no internet access."
    return f"You said: {text.strip().rstrip('.?!')}. Tell me more, or ask me what I can do."


class LocalLlm:
    """Rule-based responder behind the LLM interface (streams one word at a time)."""

    name = "local"

    def __init__(
        self,
        token_delay_s: float = 0.0,
        now: Callable[[], datetime.datetime] = datetime.datetime.now,
    ) -> None:
        self._token_delay_s = token_delay_s
        self._now = now

    async def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        last_user = next((m.content for m in reversed(messages) if m.role == Role.USER), "")
        reply = respond(last_user, self._now())
        for i, word in enumerate(reply.split(" ")):
            await asyncio.sleep(self._token_delay_s)
            yield word if i == 0 else " " + word

    async def aclose(self) -> None:
        return None
