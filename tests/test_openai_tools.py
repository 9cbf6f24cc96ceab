"""OpenAiLlm with tools: the request's `tools`, streamed `tool_calls` assembled, tool messages."""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

import pytest

from agent.engines.interfaces import (
    EngineError,
    Message,
    Role,
    ToolCall,
    ToolCalls,
    ToolSpec,
    supports_tools,
)
from agent.engines.openai_llm import OpenAiLlm, ToolCallAssembler
from harness.fake_openai import Call, FakeOpenAi, Text, stream_chunks

SPEC = ToolSpec(
    "weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def test_assembler_joins_pieces_by_index() -> None:
    a = ToolCallAssembler()
    assert not a
    a.feed([{"index": 0, "id": "c0", "type": "function", "function": {"name": "wea"}}])
    a.feed([{"index": 1, "id": "c1", "function": {"name": "time", "arguments": ""}}])
    a.feed([{"index": 0, "function": {"name": "ther", "arguments": '{"ci'}}])
    a.feed([{"index": 1, "function": {"arguments": "{}"}}])
    a.feed([{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}])
    assert a.result() == ToolCalls(
        (ToolCall("c0", "weather", '{"city": "Oslo"}'), ToolCall("c1", "time", "{}"))
    )


def test_assembler_without_index_or_id_and_bad_deltas() -> None:
    a = ToolCallAssembler()
    a.feed([{"function": {"name": "end_call", "arguments": "{}"}}])
    assert a.result().calls == (ToolCall("call_0", "end_call", "{}"),)
    nameless = ToolCallAssembler()
    nameless.feed([{"index": 0, "function": {"arguments": "{}"}}])
    with pytest.raises(EngineError):
        nameless.result()
    for bad in ("x", ["x"], [{"index": "0"}]):
        with pytest.raises(EngineError):
            ToolCallAssembler().feed(bad)


async def collect(llm: OpenAiLlm, messages: list[Message], tools: list[ToolSpec]) -> list[Any]:
    out: list[Any] = []
    async with aclosing(llm.complete_with_tools(messages, tools)) as stream:
        async for item in stream:
            out.append(item)
    return out


async def test_streamed_tool_calls_reach_the_caller_and_results_go_back() -> None:
    def answer(body: dict[str, Any]) -> list[Text | Call]:
        if body["messages"][-1]["role"] == "tool":
            return [Text("It is sunny in Oslo.")]
        return [Text("Let me check."), Call("weather", {"city": "Oslo"}, id="call_w")]

    async with FakeOpenAi(answer) as fake:
        llm = OpenAiLlm(fake.base_url, "m", None)
        assert supports_tools(llm)
        try:
            user = [Message(Role.SYSTEM, "s"), Message(Role.USER, "Weather in Oslo?")]
            first = await collect(llm, user, [SPEC])
            assert "".join(x for x in first if isinstance(x, str)) == "Let me check."
            assert first[-1] == ToolCalls((ToolCall("call_w", "weather", '{"city": "Oslo"}'),))
            assert fake.requests[0]["tools"] == [SPEC.as_dict()]
            calls = first[-1].calls
            followup = [
                *user,
                Message(Role.ASSISTANT, "Let me check.", tool_calls=calls),
                Message(Role.TOOL, "sunny, 21 C", tool_call_id="call_w"),
            ]
            second = await collect(llm, followup, [SPEC])
            assert "".join(second) == "It is sunny in Oslo."
            sent = fake.requests[1]["messages"]
            assert sent[2] == {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "call_w",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            }
            assert sent[3] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_w"}
            # Without tools nothing changes: no `tools` in the request, text only.
            plain = [x async for x in llm.complete(user)]
            assert "tools" not in fake.requests[2] and "".join(plain) == "Let me check."
        finally:
            await llm.aclose()


def test_tool_calls_only_message_sends_null_content() -> None:
    m = Message(Role.ASSISTANT, "", tool_calls=(ToolCall("a", "b", "{}"),))
    assert m.as_dict()["content"] is None
    assert Message(Role.USER, "hi").as_dict() == {"role": "user", "content": "hi"}


def test_fake_server_streams_arguments_in_pieces() -> None:
    chunks = stream_chunks([Call("book", {"day": "Friday", "people": 4})], piece_chars=5)
    pieces = [json.loads(c[6:]) for c in chunks[:-1]]
    arg_pieces = [
        tc["function"].get("arguments", "")
        for p in pieces
        for tc in p["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert len([p for p in arg_pieces if p]) > 3
    assert json.loads("".join(arg_pieces)) == {"day": "Friday", "people": 4}
    assert pieces[-1]["choices"][0]["finish_reason"] == "tool_calls"
