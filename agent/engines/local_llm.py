"""The built-in conversational responder: deterministic, instant, no model at all.

It answers the time and date, greetings, what it can do, simple arithmetic, thanks and
goodbyes, tells a (long) story on request, and otherwise reflects what it heard. Replies are
streamed word by word like a real LLM so the rest of the pipeline is exercised the same way.

Offered tools (`complete_with_tools`), it drives them the way a model would, through the same
interface: "goodbye" says farewell and calls `end_call`, "what time is it in Tokyo" calls
`time_in`, "set a timer for ten seconds" calls `set_timer`; the next request, carrying the
results, is answered by saying them (an error: "Sorry, I couldn't check that.").
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
from collections.abc import AsyncGenerator, Callable, Sequence

from agent.engines.interfaces import Message, Role, ToolCall, ToolCalls, ToolSpec

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


FAREWELL = "Goodbye! It was nice talking with you."
TOOL_ERROR_REPLY = "Sorry, I couldn't check that."
_UNITS_S = {"second": 1, "seconds": 1, "minute": 60, "minutes": 60}


def tool_intent(text: str, offered: set[str]) -> tuple[str, list[ToolCall]]:
    """What to say first and which offered tools to call for `text` ("", [] when none fits)."""
    t = " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())
    words = set(t.split())
    ids = (f"local_{i}" for i in itertools.count())
    if "end_call" in offered and words & {"bye", "goodbye"}:
        return FAREWELL, [ToolCall(next(ids), "end_call", "{}")]
    m = re.search(r"\btime (?:is it |now )?in ([a-z' ]+)$", t)
    if "time_in" in offered and m:
        city = m.group(1).strip()
        return "", [ToolCall(next(ids), "time_in", json.dumps({"city": city}))]
    m = re.search(r"timer (?:for )?(\w+) (seconds?|minutes?)", t)
    if "set_timer" in offered and m and (n := _number(m.group(1))) is not None:
        seconds = n * _UNITS_S[m.group(2)]
        return "", [ToolCall(next(ids), "set_timer", json.dumps({"seconds": seconds}))]
    return "", []


def say_results(results: Sequence[Message]) -> str:
    """The tool results of the last round, as a reply."""
    said = []
    for m in results:
        try:
            data = json.loads(m.content)
        except ValueError:
            data = m.content
        if isinstance(data, dict) and "error" in data:
            said.append(TOOL_ERROR_REPLY)
        elif isinstance(data, str):
            said.append(data if data != "done" else "Done.")
        else:
            said.append("Done.")
    return " ".join(dict.fromkeys(said)) or "Done."


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
        async for word in self._words(respond(last_user, self._now())):
            yield word

    async def complete_with_tools(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncGenerator[str | ToolCalls, None]:
        """As a model would: tool calls for the requests it knows, their results said."""
        results = list(itertools.takewhile(lambda m: m.role == Role.TOOL, reversed(messages)))
        if results:
            async for word in self._words(say_results(results[::-1])):
                yield word
            return
        last_user = next((m.content for m in reversed(messages) if m.role == Role.USER), "")
        first, calls = tool_intent(last_user, {t.name for t in tools})
        if not calls:
            first = respond(last_user, self._now())
        if first:
            async for word in self._words(first):
                yield word
        if calls:
            yield ToolCalls(tuple(calls))

    async def _words(self, reply: str) -> AsyncGenerator[str, None]:
        for i, word in enumerate(reply.split(" ")):
            await asyncio.sleep(self._token_delay_s)
            yield word if i == 0 else " " + word

    async def aclose(self) -> None:
        return None
