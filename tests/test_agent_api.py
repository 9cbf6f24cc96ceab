"""The agent API (agent/api.py), the built-in tools and the local responder driving them."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from agent.api import Agent, AgentLoadError, load_agent
from agent.conversation.builtins import make_time_in, set_timer, zone_of
from agent.conversation.tools import CallControl, ToolError, tool
from agent.engines.interfaces import Message, Role, ToolCall, ToolCalls, ToolSpec
from agent.engines.local_llm import FAREWELL, TOOL_ERROR_REPLY, LocalLlm
from signaling.offer import MAX_CONTEXT_BYTES, OfferError, parse_context

ROOT = Path(__file__).resolve().parent.parent
UTC_NOON = datetime.datetime(2024, 3, 5, 12, 0, tzinfo=datetime.UTC)


async def test_time_in_a_city() -> None:
    time_in = make_time_in(lambda: UTC_NOON)
    assert zone_of("Tokyo") == "Asia/Tokyo" and zone_of("new york") == "America/New_York"
    assert zone_of("San Francisco") == "America/Los_Angeles" and zone_of("Atlantis") is None
    assert (
        await time_in.invoke({"city": "tokyo"}, _clock())
        == "It's 9 o'clock in the evening in Tokyo."
    )
    assert await time_in.invoke({"city": "New York"}, _clock()) == (
        "It's 7 o'clock in the morning in New York."
    )
    with pytest.raises(ToolError):
        await time_in.invoke({"city": "Atlantis"}, _clock())


async def test_set_timer_announces_through_the_call() -> None:
    said: list[tuple[float, str]] = []
    control = CallControl("s", announcer=lambda delay, text: said.append((delay, text)))
    assert await set_timer(10, control) == "Timer set for 10 seconds."
    assert await set_timer(120, control, label="pasta") == "Timer set for 2 minutes."
    assert said == [(10, "Your 10 second timer is done."), (120, "Your pasta timer is done.")]
    with pytest.raises(ToolError):
        await set_timer(0, control)
    with pytest.raises(ToolError):
        await set_timer(5, CallControl())  # no session to speak


def _clock() -> Any:
    from agent.clock import MonotonicClock

    return MonotonicClock()


async def stream(llm: LocalLlm, messages: Sequence[Message], tools: Sequence[str]) -> list[Any]:
    specs = [ToolSpec(n, "", {"type": "object", "properties": {}}) for n in tools]
    async with aclosing(llm.complete_with_tools(messages, specs)) as s:
        return [x async for x in s]


BUILTINS = ("end_call", "time_in", "set_timer")


@pytest.mark.parametrize(
    ("said", "text", "calls"),
    [
        ("Goodbye.", FAREWELL, [("end_call", {})]),
        ("What time is it in Tokyo?", "", [("time_in", {"city": "tokyo"})]),
        ("what's the time in new york", "", [("time_in", {"city": "new york"})]),
        ("Set a timer for ten seconds.", "", [("set_timer", {"seconds": 10})]),
        ("set a timer for 2 minutes", "", [("set_timer", {"seconds": 120})]),
        ("What is two plus three?", "2 plus 3 is 5.", []),
    ],
)
async def test_the_local_responder_calls_the_offered_tools(
    said: str, text: str, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    out = await stream(LocalLlm(), [Message(Role.USER, said)], BUILTINS)
    assert "".join(x for x in out if isinstance(x, str)) == text
    got = [x for x in out if isinstance(x, ToolCalls)]
    assert [(c.name, json.loads(c.arguments)) for t in got for c in t.calls] == calls
    # Not offered: the plain answer.
    plain = await stream(LocalLlm(), [Message(Role.USER, said)], ())
    assert not any(isinstance(x, ToolCalls) for x in plain)


async def test_the_local_responder_says_the_results() -> None:
    asked = [Message(Role.USER, "time in Tokyo")]
    calls = (ToolCall("a", "time_in", '{"city": "tokyo"}'),)
    ok = [*asked, Message(Role.ASSISTANT, "", tool_calls=calls)]
    result = [*ok, Message(Role.TOOL, "It's 9 o'clock in the evening in Tokyo.", tool_call_id="a")]
    assert "".join(await stream(LocalLlm(), result, BUILTINS)) == (
        "It's 9 o'clock in the evening in Tokyo."
    )
    failed = [*ok, Message(Role.TOOL, '{"error": "unknown"}', tool_call_id="a")]
    assert "".join(await stream(LocalLlm(), failed, BUILTINS)) == TOOL_ERROR_REPLY


def test_agent_prompt_and_tools() -> None:
    @tool
    def time_in(city: str) -> str:
        """Mine."""
        return "always noon"

    agent = Agent(prompt="Be a shop.", tools=[time_in])
    assert agent.toolbox.tools["time_in"] is time_in, "the agent's own tool wins"
    assert set(agent.toolbox.tools) == {"time_in", "end_call", "set_timer"}
    assert Agent(builtins=False).toolbox.tools == {}
    assert agent.system_prompt({}, "default") == "Be a shop."
    with_context = agent.system_prompt({"name": "Ada"}, "default")
    assert with_context.startswith("Be a shop.") and '{"name": "Ada"}' in with_context
    assert Agent().system_prompt({}, "default") == "default"
    assert Agent(prompt=lambda c: f"Hi {c['name']}").system_prompt({"name": "Bo"}, "d") == "Hi Bo"


def test_load_agent_from_a_file_or_a_module(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(
        "from agent.api import Agent\nagent = Agent(prompt='x')\nother = Agent(prompt='y')\n"
    )
    assert load_agent(str(path)).prompt == "x"
    assert load_agent(f"{path}:other").prompt == "y"
    assert isinstance(load_agent(str(ROOT / "examples" / "hello_tool.py")), Agent)
    for bad in (f"{path}:nope", str(tmp_path / "missing.py"), "no_such_module_xyz"):
        with pytest.raises(AgentLoadError):
            load_agent(bad)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(AgentLoadError, match="boom"):
        load_agent(str(broken))


def test_offer_context_is_a_small_json_object() -> None:
    assert parse_context({}) is None
    assert parse_context({"context": {"name": "Ada", "order": 7}}) == {"name": "Ada", "order": 7}
    for bad in ("text", [1], 3):
        with pytest.raises(OfferError) as err:
            parse_context({"context": bad})
        assert err.value.status == 400
    with pytest.raises(OfferError, match="limit"):
        parse_context({"context": {"x": "a" * MAX_CONTEXT_BYTES}})
