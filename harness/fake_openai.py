"""A scriptable OpenAI-compatible `/v1/chat/completions` server (aiohttp), for tests and bench.

It streams what real servers stream: `chat.completion.chunk` events with a role chunk, text
deltas, `tool_calls` deltas (id, type and function name in the first piece of a call, its JSON
arguments cut into pieces), a `finish_reason`, then `data: [DONE]`. `answer` decides each
response from the request body; every request body is kept in `requests`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any] | str  # a str is sent as it is (malformed JSON, for tests)
    id: str = ""


Response = Sequence[Text | Call]
Answer = Callable[[dict[str, Any]], Response]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def stream_chunks(response: Response, piece_chars: int = 7) -> list[bytes]:
    """The SSE body of one streamed response, chunk by chunk."""
    out = [_chunk({"role": "assistant", "content": ""})]
    calls = 0
    for item in response:
        if isinstance(item, Text):
            for i, word in enumerate(item.text.split(" ")):
                out.append(_chunk({"content": word if i == 0 else " " + word}))
            continue
        index = calls
        calls += 1
        args = item.arguments if isinstance(item.arguments, str) else json.dumps(item.arguments)
        first = {
            "index": index,
            "id": item.id or f"call_{index}_{item.name}",
            "type": "function",
            "function": {"name": item.name, "arguments": ""},
        }
        out.append(_chunk({"tool_calls": [first]}))
        for start in range(0, len(args), piece_chars):
            piece = {"index": index, "function": {"arguments": args[start : start + piece_chars]}}
            out.append(_chunk({"tool_calls": [piece]}))
    out.append(_chunk({}, finish="tool_calls" if calls else "stop"))
    out.append(b"data: [DONE]\n\n")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeOpenAi:
    """`async with FakeOpenAi(answer) as fake:` serves on `fake.base_url` (…/v1)."""

    answer: Answer
    delay_s: float = 0.0  # before the response headers (a model's time to first token)
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in stream_chunks(self.answer(body)):
            await resp.write(part)
        return resp

    async def __aenter__(self) -> FakeOpenAi:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def last_user(body: dict[str, Any]) -> str:
    """The text of the last user message in a request body."""
    for m in reversed(body["messages"]):
        if m["role"] == "user":
            return str(m["content"] or "")
    return ""


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool messages after the last user message (this turn's results so far)."""
    out: list[dict[str, Any]] = []
    for m in reversed(body["messages"]):
        if m["role"] == "user":
            break
        if m["role"] == "tool":
            out.insert(0, m)
    return out
