"""Tier 1: tools from plain functions — schema, argument checking, a call's outcome."""

from __future__ import annotations

import asyncio
import enum
import json
import time
from typing import Any, Literal

import pytest

from agent.clock import MonotonicClock
from agent.conversation.tools import (
    CallControl,
    Tool,
    ToolArgumentsError,
    Toolbox,
    ToolError,
    run_call,
    tool,
)
from agent.engines.interfaces import ToolCall


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


@tool
def book_table(
    day: str,
    people: int,
    time: str = "19:00",
    seating: Literal["inside", "terrace"] = "inside",
    notes: str | None = None,
    dishes: list[str] | None = None,
    budget: float = 0.0,
    vegan: bool = False,
    size: Size = Size.SMALL,
) -> str:
    """Book a table at the restaurant.

    More details that the model does not need.

    Args:
        day: the day, e.g. "Friday"
        people: how many guests,
            children included
        time (str): 24-hour time
    """
    return f"booked {day} {people} {time} {seating} {notes} {dishes} {budget} {vegan} {size}"


def test_schema_from_signature_and_docstring() -> None:
    spec = book_table.spec()
    assert spec.name == "book_table"
    assert spec.description == "Book a table at the restaurant."
    props = spec.parameters["properties"]
    assert props["day"] == {"type": "string", "description": 'the day, e.g. "Friday"'}
    assert props["people"] == {
        "type": "integer",
        "description": "how many guests, children included",
    }
    assert props["time"]["description"] == "24-hour time"
    assert props["seating"] == {"type": "string", "enum": ["inside", "terrace"]}
    assert props["notes"] == {"type": "string"}
    assert props["dishes"] == {"type": "array", "items": {"type": "string"}}
    assert props["budget"] == {"type": "number"}
    assert props["vegan"] == {"type": "boolean"}
    assert props["size"] == {"type": "string", "enum": ["small", "large"]}
    assert spec.parameters["required"] == ["day", "people"]
    assert spec.parameters["additionalProperties"] is False
    # The OpenAI request form.
    assert spec.as_dict()["function"]["name"] == "book_table"


def test_injected_parameters_are_not_in_the_schema() -> None:
    def greet(name: str, context: dict[str, Any], call: CallControl) -> str:
        """Greet."""
        return name

    t = Tool(greet)
    assert list(t.parameters["properties"]) == ["name"]
    assert t.injected == ("context", "call")


def test_unsupported_signatures_are_refused_at_definition() -> None:
    def untyped(x) -> str:  # type: ignore[no-untyped-def]
        return ""

    def union(x: int | str) -> str:
        return ""

    def star(*xs: int) -> str:
        return ""

    for fn in (untyped, union, star):
        with pytest.raises(TypeError):
            Tool(fn)
    with pytest.raises(ValueError):
        Tool(lambda: None, name="has space")
    with pytest.raises(ValueError):
        Toolbox([book_table, book_table])


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"day": "Friday"}', "missing required argument 'people'"),
        ('{"day": "Friday", "people": "four"}', "'people' must be an integer"),
        ('{"day": "Friday", "people": 2.5}', "'people' must be an integer"),
        ('{"day": "Friday", "people": true}', "'people' must be an integer"),
        ('{"day": 5, "people": 2}', "'day' must be a string"),
        ('{"day": "Fri", "people": 2, "seating": "roof"}', 'must be one of ["inside", "terrace"]'),
        ('{"day": "Fri", "people": 2, "size": "huge"}', 'must be one of ["small", "large"]'),
        ('{"day": "Fri", "people": 2, "dishes": ["a", 3]}', "'dishes'[1] must be a string"),
        ('{"day": "Fri", "people": 2, "vegan": "yes"}', "must be true or false"),
        ('{"day": "Fri", "people": 2, "colour": "red"}', "unknown argument(s): colour"),
    ],
)
def test_bad_arguments_say_what_is_wrong(arguments: str, problem: str) -> None:
    with pytest.raises(ToolArgumentsError) as err:
        book_table.bind(arguments)
    assert problem in str(err.value)


def test_good_arguments_are_converted() -> None:
    kwargs = book_table.bind(
        '{"day": "Fri", "people": 4.0, "budget": 30, "notes": null, "size": "large"}'
    )
    assert kwargs == {"day": "Fri", "people": 4, "budget": 30.0, "notes": None, "size": Size.LARGE}
    assert isinstance(kwargs["budget"], float) and isinstance(kwargs["people"], int)
    with pytest.raises(ToolArgumentsError):
        book_table.bind("")
    # A decorated tool is still the plain function.
    assert book_table("Fri", 2).startswith("booked Fri 2 19:00")


def call(name: str, arguments: dict[str, Any] | str) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall("call_1", name, text)


async def test_run_call_outcomes() -> None:
    clock = MonotonicClock()
    seen: dict[str, Any] = {}

    @tool
    async def lookup(order: str, context: dict[str, Any], call: CallControl) -> dict[str, Any]:
        """Look up an order."""
        seen["context"] = dict(context)
        seen["session"] = call.session_id
        return {"order": order, "status": "shipped"}

    @tool
    def broken() -> str:
        """Always fails."""
        raise RuntimeError("db password is hunter2")

    @tool
    def refuses() -> str:
        """Says no."""
        raise ToolError("no table left on Friday")

    @tool(timeout_s=0.05)
    async def slow() -> str:
        """Too slow."""
        await asyncio.sleep(10)
        return "never"

    @tool(timeout_s=0.05)
    def slow_sync() -> str:
        """Too slow, in a thread."""
        time.sleep(0.2)
        return "never"

    box = Toolbox([lookup, broken, refuses, slow, slow_sync])
    control = CallControl("s1", {"caller": "Ada"})
    ok = await run_call(box, call("lookup", {"order": "A7"}), control, clock)
    assert ok.error is None
    assert json.loads(ok.content) == {"order": "A7", "status": "shipped"}
    assert seen == {"context": {"caller": "Ada"}, "session": "s1"}
    assert ok.event()["result"] == ok.content and ok.event()["arguments"] == {"order": "A7"}

    unknown = await run_call(box, call("nope", {}), control, clock)
    assert unknown.error == "there is no tool named 'nope'"
    assert json.loads(unknown.content) == {"error": unknown.error}
    bad = await run_call(box, call("lookup", "{"), control, clock)
    assert bad.error is not None and "not valid JSON" in bad.error
    assert bad.event()["arguments"] == "{"
    crashed = await run_call(box, call("broken", {}), control, clock)
    assert crashed.error == "the tool failed"  # the exception's text stays in the log
    refused = await run_call(box, call("refuses", {}), control, clock)
    assert refused.error == "no table left on Friday"
    for name in ("slow", "slow_sync"):
        t0 = time.monotonic()
        late = await run_call(box, call(name, {}), control, clock)
        assert late.error == "the tool timed out after 0.05 s"
        assert time.monotonic() - t0 < 0.15


async def test_a_running_tool_is_cancelled() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @tool
    async def wait() -> str:
        """Waits."""
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    task = asyncio.ensure_future(
        run_call(Toolbox([wait]), call("wait", {}), CallControl(), MonotonicClock())
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


def test_context_is_read_only() -> None:
    control = CallControl("s", {"name": "Ada"})
    with pytest.raises(TypeError):
        control.context["name"] = "Bob"  # type: ignore[index]
    assert not control.ending
    control.end_call()
    assert control.ending
