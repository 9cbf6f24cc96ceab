"""Tier 2: the tool loop of one reply (engine_faults.Answerer) on a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.conversation.chunker import ChunkerConfig
from agent.conversation.engine_faults import (
    FILLER,
    GOODBYE,
    MAX_TOOL_ROUNDS,
    TOOL_FAILED,
    Answerer,
    LlmTimeouts,
    Say,
    Units,
)
from agent.conversation.tools import CallControl, Toolbox, ToolError, tool
from agent.engines.interfaces import EngineError, Message, Role, ToolCall, ToolCalls, ToolSpec
from agent.metrics import TurnMetrics

Item = str | ToolCall


class ToolScriptLlm:
    """Answers each request with the next script entry: words, then the tool calls in it.
    An entry that is an exception is raised instead (before any word)."""

    name = "scripted-tools"

    def __init__(self, *script: Sequence[Item] | BaseException) -> None:
        self.script = list(script)
        self.requests: list[list[Message]] = []
        self.offered: list[list[str]] = []

    async def complete(self, messages: Sequence[Message]) -> AsyncGenerator[str, None]:
        raise AssertionError("a tool-capable LLM is asked with tools")
        yield ""

    async def complete_with_tools(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncGenerator[str | ToolCalls, None]:
        self.requests.append(list(messages))
        self.offered.append([t.name for t in tools])
        entry = self.script.pop(0) if self.script else ["Okay."]
        if isinstance(entry, BaseException):
            raise entry
        calls = tuple(i for i in entry if isinstance(i, ToolCall))
        for item in entry:
            if isinstance(item, str):
                yield item
        if calls:
            yield ToolCalls(calls)

    async def aclose(self) -> None:
        return None


def call(name: str, id: str = "c1", **arguments: Any) -> ToolCall:
    return ToolCall(id, name, json.dumps(arguments))


class Setup:
    def __init__(self, llm: ToolScriptLlm, toolbox: Toolbox, clock: FakeClock) -> None:
        self.clock = clock
        self.events: list[dict[str, Any]] = []
        self.control = CallControl("s1", {"caller": "Ada"})
        self.answerer = Answerer(
            llm, clock, self.events.append, LlmTimeouts(), ChunkerConfig(), toolbox, self.control
        )
        self.metrics = TurnMetrics(turn=3)
        self.units = Units()

    def start(self, committed: asyncio.Event | None = None) -> asyncio.Task[None]:
        messages = [Message(Role.SYSTEM, "s"), Message(Role.USER, "question")]
        return asyncio.get_running_loop().create_task(
            self.answerer.answer(1, lambda: messages, self.metrics, self.units, committed)
        )

    def said(self) -> list[Say]:
        out: list[Say] = []
        while not self.units.empty():
            unit = self.units.get_nowait()
            if unit is not None:
                out.append(unit)
        return out

    def tools(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "tool"]


async def run(setup: Setup, committed: asyncio.Event | None = None, seconds: float = 2) -> None:
    task = setup.start(committed)
    await setup.clock.advance(seconds, step=0.05)
    await task


async def test_a_tool_call_runs_and_its_result_reaches_the_next_request() -> None:
    clock = FakeClock()
    seen: list[Any] = []

    @tool
    async def weather(city: str, context: dict[str, Any]) -> str:
        """The weather."""
        seen.append((city, dict(context)))
        await clock.sleep(0.05)
        return "sunny"

    llm = ToolScriptLlm(["Let me check. ", call("weather", city="Oslo")], ["It's sunny in Oslo."])
    s = Setup(llm, Toolbox([weather]), clock)
    await run(s)
    assert seen == [("Oslo", {"caller": "Ada"})]
    assert [u.text for u in s.said()] == ["Let me check.", "It's sunny in Oslo."]
    assert llm.offered[0] == ["weather"]
    second = llm.requests[1]
    assert second[2].role == Role.ASSISTANT and second[2].tool_calls == (
        call("weather", city="Oslo"),
    )
    assert second[3] == Message(Role.TOOL, "sunny", tool_call_id="c1")
    event = s.tools()[0]
    assert event["name"] == "weather" and event["arguments"] == {"city": "Oslo"}
    assert event["result"] == "sunny" and event["turn"] == 3
    assert event["ms"] == pytest.approx(50, abs=10)
    assert s.metrics.tool_ms == pytest.approx(50, abs=10)
    assert s.metrics.tool_started is not None and s.metrics.tool_complete is not None


async def test_a_slow_tool_gets_the_filler_once() -> None:
    clock = FakeClock()

    @tool
    async def slow() -> str:
        """Slow."""
        await clock.sleep(1.5)
        return "42"

    llm = ToolScriptLlm([call("slow")], [call("slow", id="c2")], ["The answer is 42."])
    s = Setup(llm, Toolbox([slow]), clock)
    await run(s, seconds=4)
    said = s.said()
    assert said == [Say(FILLER, filler=True), Say("The answer is 42.")]


async def test_failures_go_back_to_the_model_and_silence_is_never_the_answer() -> None:
    clock = FakeClock()

    # Async: a sync tool runs in a thread, in real time, while this test's clock is fake.
    @tool
    async def broken(order: str) -> str:
        """Broken."""
        raise RuntimeError("database down")

    @tool
    async def refuses() -> str:
        """Refuses."""
        raise ToolError("no such order")

    llm = ToolScriptLlm(
        [
            call("broken", id="a", order="A1"),
            call("nope", id="b"),
            ToolCall("c", "broken", "{oops"),
            call("refuses", id="d"),
        ],
        [],  # the model has nothing to say about it
    )
    s = Setup(llm, Toolbox([broken, refuses]), clock)
    await run(s)
    results = {m.tool_call_id: json.loads(m.content) for m in llm.requests[1] if m.tool_call_id}
    assert results == {
        "a": {"error": "the tool failed"},
        "b": {"error": "there is no tool named 'nope'"},
        "c": {"error": "bad arguments: the arguments are not valid JSON"},
        "d": {"error": "no such order"},
    }
    assert [e["error"] for e in s.tools()][:2] == [
        "the tool failed",
        "there is no tool named 'nope'",
    ]
    assert s.said() == [Say(TOOL_FAILED)]


async def test_a_model_that_loops_on_tools_is_stopped() -> None:
    clock = FakeClock()
    runs: list[int] = []

    @tool
    async def again() -> str:
        """Again."""
        runs.append(1)
        return "ok"

    llm = ToolScriptLlm(*[[call("again", id=f"c{i}")] for i in range(20)])
    s = Setup(llm, Toolbox([again]), clock)
    await run(s, seconds=3)
    assert len(runs) == MAX_TOOL_ROUNDS and len(llm.requests) == MAX_TOOL_ROUNDS
    assert s.said() == [Say(TOOL_FAILED)]
    assert {"type": "error", "engine": "llm", "message": "too many tool calls"} in s.events


async def test_a_speculative_reply_runs_no_tool_before_it_is_committed() -> None:
    clock = FakeClock()
    runs: list[str] = []

    @tool
    async def book(day: str) -> str:
        """Book."""
        runs.append(day)
        return "booked"

    llm = ToolScriptLlm([call("book", day="Friday")], ["Booked for Friday."])
    s = Setup(llm, Toolbox([book]), clock)
    committed = asyncio.Event()
    task = s.start(committed)
    await clock.advance(1.0, step=0.05)
    assert runs == [] and len(llm.requests) == 1, "the first request runs ahead, the tool waits"
    committed.set()
    await clock.advance(1.0, step=0.05)
    await task
    assert runs == ["Friday"]
    assert [u.text for u in s.said()] == ["Booked for Friday."]


async def test_end_call_ends_the_turn_and_says_goodbye_if_nothing_was_said() -> None:
    from agent.conversation.tools import END_CALL

    clock = FakeClock()
    llm = ToolScriptLlm([call("end_call")])
    s = Setup(llm, Toolbox([END_CALL]), clock)
    await run(s)
    assert s.control.ending
    assert len(llm.requests) == 1, "nothing more is asked once the call is ending"
    assert s.said() == [Say(GOODBYE)]

    llm = ToolScriptLlm(["Bye, see you soon!", call("end_call")])
    s = Setup(llm, Toolbox([END_CALL]), clock)
    await run(s)
    assert s.control.ending and s.said() == [Say("Bye, see you soon!")]


async def test_barge_in_cancels_a_running_tool() -> None:
    clock = FakeClock()
    state: list[str] = []

    @tool(timeout_s=60)
    async def long() -> str:
        """Long."""
        state.append("started")
        try:
            await clock.sleep(30)
        except asyncio.CancelledError:
            state.append("cancelled")
            raise
        return "never"

    s = Setup(ToolScriptLlm([call("long")]), Toolbox([long]), clock)
    task = s.start()
    await clock.advance(1.0, step=0.05)
    assert state == ["started"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state == ["started", "cancelled"]


async def test_a_retried_request_does_not_run_the_tools_again() -> None:
    clock = FakeClock()
    runs: list[int] = []

    @tool
    async def count() -> int:
        """Count."""
        runs.append(1)
        return len(runs)

    llm = ToolScriptLlm([call("count")], EngineError("dropped", retryable=True), ["One."])
    s = Setup(llm, Toolbox([count]), clock)
    await run(s)
    assert runs == [1]
    assert [u.text for u in s.said()] == ["One."]
    assert llm.requests[2][-1] == Message(Role.TOOL, "1", tool_call_id="c1")


# --- faults with a real streamed response (OpenAiLlm ← a local OpenAI-compatible server) ------


async def test_bad_tool_calls_from_a_real_stream_get_a_bounded_spoken_outcome() -> None:
    from agent.clock import MonotonicClock
    from agent.engines.openai_llm import OpenAiLlm
    from harness.fake_openai import Call, FakeOpenAi, Text, tool_results

    @tool
    async def lookup(order: str) -> str:
        """Look up an order."""
        return f"order {order} shipped"

    def answer(body: dict[str, Any]) -> list[Text | Call]:
        results = tool_results(body)
        if not results:  # an unknown tool and malformed arguments in one response
            return [Call("teleport", {"to": "Mars"}), Call("lookup", '{"order": "A7"')]
        return [Call("lookup", {"order": "A7"})]  # right now, but it never stops asking

    clock = MonotonicClock()
    async with FakeOpenAi(answer) as fake:
        llm = OpenAiLlm(fake.base_url, "m", None)
        events: list[dict[str, Any]] = []
        answerer = Answerer(
            llm, clock, events.append, LlmTimeouts(), ChunkerConfig(), Toolbox([lookup])
        )
        units = Units()
        messages = [Message(Role.SYSTEM, "s"), Message(Role.USER, "where is my order")]
        try:
            async with asyncio.timeout(10):
                await answerer.answer(1, lambda: messages, TurnMetrics(turn=1), units)
        finally:
            await llm.aclose()
    said = []
    while (unit := units.get_nowait()) is not None:
        said.append(unit)
    assert said == [Say(TOOL_FAILED)], "a looping model ends the turn, spoken"
    assert len(fake.requests) == MAX_TOOL_ROUNDS
    errors = {
        m["tool_call_id"]: json.loads(m["content"])["error"]
        for m in fake.requests[1]["messages"]
        if m["role"] == "tool"
    }
    assert sorted(errors.values()) == [
        "bad arguments: the arguments are not valid JSON",
        "there is no tool named 'teleport'",
    ]
    tools = [e for e in events if e["type"] == "tool"]
    assert [e.get("error") for e in tools[:2]] == [
        "there is no tool named 'teleport'",
        "bad arguments: the arguments are not valid JSON",
    ]
    assert tools[2]["result"] == "order A7 shipped"
