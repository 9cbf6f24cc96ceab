"""The examples end to end: `ringback serve --agent examples/NAME.py --llm openai` (a real
server process) against a fake OpenAI-compatible server that streams real tool-call chunks,
called by a real aiortc peer speaking synthesized speech."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.fake_openai import Call, FakeOpenAi, Text, last_user, tool_results
from harness.peer import Caller
from tests.conftest import run_server

pytestmark = pytest.mark.e2e

PHRASES = (
    "What is the secret word in French?",
    "Book a table for four on Friday at seven.",
    "Yes, that is right.",
    "Goodbye.",
    "What time is it in Tokyo?",
    "Set a timer for three seconds.",
)


@pytest.fixture(scope="module")
def phrases() -> Iterator[dict[str, Any]]:
    from harness.speech import synthesize, synthesizer

    async def make() -> dict[str, Any]:
        async with synthesizer("piper") as pool:
            return {t: await synthesize(pool, t, deterministic=True) for t in PHRASES}

    yield asyncio.run(make())


def env_for(fake: FakeOpenAi) -> dict[str, str]:
    return {"RINGBACK_OPENAI_BASE_URL": fake.base_url, "RINGBACK_OPENAI_MODEL": "fake-model"}


def tool_events(caller: Caller) -> list[dict[str, Any]]:
    return [e.data for e in caller.events if e.data.get("type") == "tool"]


def offered(body: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in body.get("tools", [])}


async def test_hello_tool(tmp_path: Path, phrases: dict[str, Any]) -> None:
    def answer(body: dict[str, Any]) -> list[Text | Call]:
        results = tool_results(body)
        if results:
            return [Text(f"The secret word is {results[-1]['content']}.")]
        if "secret" in last_user(body).lower():
            return [Call("secret_word", {"language": "French"}, id="call_secret")]
        return [Text("Hello there.")]

    async with FakeOpenAi(answer) as fake:
        args = ("--agent", "examples/hello_tool.py", "--llm", "openai")
        with run_server(tmp_path, *args, env=env_for(fake)) as server:
            caller = Caller(server.url)
            try:
                await caller.connect()
                turn = await caller.say("secret", phrases[PHRASES[0]])
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"{server.url}/sessions/{caller.session_id}") as resp,
                ):
                    info = await resp.json()
            finally:
                await caller.close()

    assert turn.reply == "The secret word is phare."
    events = tool_events(caller)
    assert events and events[-1]["name"] == "secret_word"
    assert events[-1]["arguments"] == {"language": "French"}
    assert events[-1]["result"] == "phare" and events[-1]["ms"] >= 0
    asked = [b for b in fake.requests if tool_results(b)]
    assert asked, "the tool's result reached the model's next request"
    body = asked[-1]
    assert body["messages"][-1] == {
        "role": "tool",
        "content": "phare",
        "tool_call_id": "call_secret",
    }
    assistant = body["messages"][-2]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "secret_word",
        "arguments": '{"language": "French"}',
    }
    assert {"secret_word", "end_call", "time_in"} <= offered(body)
    assert info["tools"][-1]["name"] == "secret_word" and info["tools"][-1]["result"] == "phare"
    turn_event = caller.last_event("turn")
    assert turn_event["metrics"]["tool_ms"] is not None


async def test_restaurant_books_with_confirmation_and_hangs_up(
    tmp_path: Path, phrases: dict[str, Any]
) -> None:
    def answer(body: dict[str, Any]) -> list[Text | Call]:
        results = tool_results(body)
        if results:
            content = results[-1]["content"]
            if "reference" in content:
                booking = json.loads(content)
                return [Text(f"Booked for {booking['name']}, reference {booking['reference']}.")]
            return [Text("A table is free on Friday at seven for four. Shall I book it?")]
        said = last_user(body).lower()
        if "yes" in said or "right" in said:
            args = {"day": "friday", "time": "19:00", "people": 4}
            return [Call("book_table", args, id="call_book")]
        if "bye" in said:
            return [Text("Goodbye, see you on Friday!"), Call("end_call", {})]
        if "book" in said or "table" in said:
            args = {"day": "Friday", "time": "19:00", "people": 4}
            return [Text("Let me check."), Call("check_availability", args)]
        return [Text("Sorry, could you say that again?")]

    async with FakeOpenAi(answer) as fake:
        args = ("--agent", "examples/restaurant.py", "--llm", "openai")
        with run_server(tmp_path, *args, env=env_for(fake)) as server:
            caller = Caller(server.url)
            try:
                await caller.connect(context={"name": "Ada"})
                ask = await caller.say("book", phrases[PHRASES[1]])
                confirm = await caller.say("confirm", phrases[PHRASES[2]])
                bye = await caller.say("bye", phrases[PHRASES[3]])
                hangup = await caller.wait_event(lambda d: d.get("type") == "hangup", 0, 10)
                state = await closed_by_server(caller)
            finally:
                await caller.close()
            log = server.log()

    assert (
        ask.reply == "Let me check. A table is free on Friday at seven for four. Shall I book it?"
    )
    assert confirm.reply == "Booked for Ada, reference R101."
    assert bye.reply == "Goodbye, see you on Friday!"
    names = [e["name"] for e in tool_events(caller)]
    assert names == ["check_availability", "book_table", "end_call"]
    booked = tool_events(caller)[1]
    assert json.loads(booked["result"])["name"] == "Ada", "the tool read the offer's context"
    assert hangup is not None and state in ("closed", "failed")
    assert "call ended: agent hung up" in log
    system = fake.requests[0]["messages"][0]
    assert system["role"] == "system" and "Ada" in system["content"]


async def closed_by_server(caller: Caller) -> str:
    """The peer connection's state once the server has closed it (5 s at most)."""
    for _ in range(50):
        if caller.pc.connectionState in ("closed", "failed"):
            break
        await asyncio.sleep(0.1)
    return str(caller.pc.connectionState)


async def test_builtin_tools_offline(tmp_path: Path, phrases: dict[str, Any]) -> None:
    """No --agent, no LLM: the built-in responder drives the built-in tools."""
    with run_server(tmp_path) as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            tokyo = await caller.say("tokyo", phrases["What time is it in Tokyo?"])
            timer = await caller.say("timer", phrases["Set a timer for three seconds."])
            t_set = caller.clock.now()
            fired = await caller.wait_event(lambda d: bool(d.get("announcement")), t_set, 10)
            await asyncio.sleep(1.5)  # the announcement is spoken
            bye = await caller.say("bye", phrases["Goodbye."])
            hangup = await caller.wait_event(lambda d: d.get("type") == "hangup", 0, 10)
            state = await closed_by_server(caller)  # before our own close could end it
        finally:
            await caller.close()
        log = server.log()

    assert tokyo.reply is not None, tokyo
    assert tokyo.reply.startswith("It's ") and tokyo.reply.endswith(" in Tokyo."), tokyo.reply
    assert timer.reply == "Timer set for 3 seconds."
    assert fired is not None and fired.data["text"] == "Your 3 second timer is done."
    assert fired.t - t_set < 4.5
    assert bye.reply == "Goodbye! It was nice talking with you."
    names = [e["name"] for e in tool_events(caller)]
    assert names == ["time_in", "set_timer", "end_call"]
    assert hangup is not None and state in ("closed", "failed")
    assert "call ended: agent hung up" in log
