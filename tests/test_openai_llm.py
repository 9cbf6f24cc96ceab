"""Tests for OpenAiLlm against a real fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from agent.engines.interfaces import LLM, EngineError, Message, Role
from agent.engines.openai_llm import OpenAiLlm

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MakeLlm = Callable[..., Awaitable[OpenAiLlm]]

MESSAGES = [Message(Role.SYSTEM, "Be brief."), Message(Role.USER, "Say hello.")]
API_KEY = "sk-test-123"


def chunk(content: str | None, role: str | None = None) -> bytes:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


def sse_handler(*parts: bytes, then_stall: bool = False) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_stream(request)
        for part in parts:
            await resp.write(part)
        if then_stall:
            await asyncio.sleep(30)
        return resp

    return handler


@pytest.fixture
async def make_llm(aiohttp_server: AiohttpServer) -> AsyncIterator[MakeLlm]:
    """Start a fake server with `handler` and return an engine pointed at it."""
    engines: list[OpenAiLlm] = []

    async def make(handler: Handler, **kwargs: Any) -> OpenAiLlm:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        server = await aiohttp_server(app)
        kwargs.setdefault("api_key", API_KEY)
        llm = OpenAiLlm(str(server.make_url("/v1/")), "test-model", **kwargs)
        engines.append(llm)
        return llm

    yield make
    for llm in engines:
        await llm.aclose()


async def collect(llm: OpenAiLlm, messages: list[Message] = MESSAGES) -> list[str]:
    return [delta async for delta in llm.complete(messages)]


def test_satisfies_llm_protocol() -> None:
    llm: LLM = OpenAiLlm("http://127.0.0.1:1/v1", "m", None)
    assert llm.name == "openai"


async def test_streams_deltas_in_order_and_sends_request(make_llm: MakeLlm) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["path"] = request.path
        seen["headers"] = dict(request.headers)
        seen["body"] = await request.json()
        resp = await open_stream(request)
        await resp.write(chunk("", role="assistant"))
        for piece in ["Hel", "lo", ", wor", "ld!"]:
            await resp.write(chunk(piece))
        await resp.write(chunk(None))
        # A usage-only chunk, as sent with stream_options.include_usage.
        await resp.write(b'data: {"choices": [], "usage": {"total_tokens": 9}}\n\n')
        await resp.write(DONE)
        return resp

    llm = await make_llm(handler, temperature=0.2, max_tokens=50)
    deltas = await collect(llm)

    assert deltas == ["Hel", "lo", ", wor", "ld!"]
    assert "".join(deltas) == "Hello, world!"
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert seen["headers"]["Accept"] == "text/event-stream"
    assert seen["body"] == {
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."},
        ],
        "stream": True,
        "temperature": 0.2,
        "max_tokens": 50,
    }


async def test_no_authorization_header_without_key(make_llm: MakeLlm) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["headers"] = dict(request.headers)
        return await sse_handler(chunk("ok"), DONE)(request)

    llm = await make_llm(handler, api_key=None)
    assert await collect(llm) == ["ok"]
    assert "Authorization" not in seen["headers"]


async def test_done_ends_stream_even_if_connection_stays_open(make_llm: MakeLlm) -> None:
    handler = sse_handler(chunk("a"), DONE, chunk("after done"), then_stall=True)
    llm = await make_llm(handler, timeout_s=10)
    started = time.monotonic()
    assert await collect(llm) == ["a"]
    assert time.monotonic() - started < 5


async def test_end_of_stream_without_done_is_a_cut_off_reply(make_llm: MakeLlm) -> None:
    llm = await make_llm(sse_handler(chunk("a"), chunk("b")))
    got: list[str] = []
    with pytest.raises(EngineError, match="ended before the reply was complete") as err:
        async for delta in llm.complete(MESSAGES):
            got.append(delta)
    assert got == ["a", "b"] and err.value.retryable


async def test_end_of_stream_after_finish_reason_without_done_is_complete(
    make_llm: MakeLlm,
) -> None:
    last = chunk("b").replace(b'"finish_reason": null', b'"finish_reason": "stop"')
    llm = await make_llm(sse_handler(chunk("a"), last))
    assert await collect(llm) == ["a", "b"]


async def test_chunks_split_at_odd_byte_boundaries(make_llm: MakeLlm) -> None:
    texts = ["Grüß ", "dich, ", "☎ ", "🙂", " fin"]
    stream = b"".join(chunk(t) for t in texts).replace(b"\n", b"\r\n") + b": bye\r\n" + DONE

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_stream(request)
        sizes = [1, 2, 3, 5, 7, 11]
        pos = i = 0
        while pos < len(stream):
            size = sizes[i % len(sizes)]
            # write() drains the transport itself (resp.drain() is deprecated).
            await resp.write(stream[pos : pos + size])
            # Yield to the loop so pieces leave as separate writes rather than coalescing.
            await asyncio.sleep(0)
            pos += size
            i += 1
        return resp

    llm = await make_llm(handler)
    assert "".join(await collect(llm)) == "".join(texts)


@pytest.mark.parametrize(
    ("status", "body", "retryable", "excerpt"),
    [
        (500, "upstream exploded", True, "upstream exploded"),
        (502, "<html>bad gateway</html>", True, "bad gateway"),
        (503, '{"error": {"message": "overloaded"}}', True, "overloaded"),
        (429, '{"error": {"message": "Rate limit reached"}}', True, "Rate limit reached"),
        (
            401,
            '{"error": {"message": "Incorrect API key provided: sk-***", '
            '"type": "invalid_request_error", "code": "invalid_api_key"}}',
            False,
            "Incorrect API key provided",
        ),
        (400, '{"error": {"message": "max_tokens is too large"}}', False, "max_tokens"),
        (404, "model not found", False, "model not found"),
    ],
)
async def test_http_errors(
    make_llm: MakeLlm, status: int, body: str, retryable: bool, excerpt: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=body)

    llm = await make_llm(handler)
    with pytest.raises(EngineError) as info:
        await collect(llm)
    assert info.value.retryable is retryable
    assert str(status) in str(info.value)
    assert excerpt in str(info.value)


async def test_error_body_excerpt_is_bounded(make_llm: MakeLlm) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, text="x" * 100_000)

    llm = await make_llm(handler)
    with pytest.raises(EngineError) as info:
        await collect(llm)
    assert len(str(info.value)) < 500


async def test_retry_after_reported(make_llm: MakeLlm) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, text="slow down", headers={"Retry-After": "7"})

    llm = await make_llm(handler)
    with pytest.raises(EngineError, match="retry after 7") as info:
        await collect(llm)
    assert info.value.retryable


async def test_stall_before_headers_times_out(make_llm: MakeLlm) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    llm = await make_llm(handler, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        await collect(llm)
    assert info.value.retryable
    assert "sent nothing for 0.3s" in str(info.value)
    assert time.monotonic() - started < 5


async def test_stall_mid_stream_times_out(make_llm: MakeLlm) -> None:
    llm = await make_llm(sse_handler(chunk("first"), then_stall=True), timeout_s=0.3)
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        async for delta in llm.complete(MESSAGES):
            got.append(delta)
    assert got == ["first"]
    assert info.value.retryable
    assert "0.3s" in str(info.value)
    assert time.monotonic() - started < 5


async def test_slow_but_flowing_stream_is_not_a_timeout(make_llm: MakeLlm) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_stream(request)
        for i in range(6):
            await resp.write(chunk(str(i)))
            await asyncio.sleep(0.1)
        await resp.write(DONE)
        return resp

    # The whole reply takes twice timeout_s, but no single gap does.
    llm = await make_llm(handler, timeout_s=0.3)
    assert await collect(llm) == ["0", "1", "2", "3", "4", "5"]


def disconnect_watcher() -> tuple[Handler, asyncio.Event]:
    """A handler that streams forever and records when the client goes away."""
    disconnected = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_stream(request)
        try:
            await resp.write(chunk("first"))
            for i in range(200):
                await asyncio.sleep(0.05)
                await resp.write(chunk(f" more{i}"))
        except asyncio.CancelledError:
            # The test server cancels handlers whose client disconnected.
            disconnected.set()
            raise
        except ConnectionResetError:
            disconnected.set()
        return resp

    return handler, disconnected


async def test_closing_iterator_early_closes_connection(make_llm: MakeLlm) -> None:
    handler, disconnected = disconnect_watcher()
    llm = await make_llm(handler)
    stream = llm.complete(MESSAGES)
    assert await anext(stream) == "first"
    await stream.aclose()
    await asyncio.wait_for(disconnected.wait(), timeout=5)


async def test_break_inside_aclosing_closes_connection(make_llm: MakeLlm) -> None:
    handler, disconnected = disconnect_watcher()
    llm = await make_llm(handler)
    async with aclosing(llm.complete(MESSAGES)) as stream:
        async for delta in stream:
            assert delta == "first"
            break
    await asyncio.wait_for(disconnected.wait(), timeout=5)


async def test_cancellation_propagates_and_closes_connection(make_llm: MakeLlm) -> None:
    handler, disconnected = disconnect_watcher()
    llm = await make_llm(handler)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in llm.complete(MESSAGES):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(disconnected.wait(), timeout=5)


async def test_caller_timeout_is_not_turned_into_llm_error(make_llm: MakeLlm) -> None:
    llm = await make_llm(sse_handler(chunk("a"), then_stall=True), timeout_s=10)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await collect(llm)


async def test_malformed_json_chunk(make_llm: MakeLlm) -> None:
    llm = await make_llm(sse_handler(chunk("ok"), b'data: {"choices": [\n\n', DONE))
    got: list[str] = []
    with pytest.raises(EngineError, match="invalid JSON") as info:
        async for delta in llm.complete(MESSAGES):
            got.append(delta)
    assert got == ["ok"]
    assert not info.value.retryable


@pytest.mark.parametrize(
    "bad",
    [b'data: ["not", "an", "object"]\n\n', b'data: {"choices": [1]}\n\n'],
)
async def test_unexpected_chunk_shape(make_llm: MakeLlm, bad: bytes) -> None:
    llm = await make_llm(sse_handler(bad, DONE))
    with pytest.raises(EngineError, match="unexpected stream chunk"):
        await collect(llm)


async def test_error_object_mid_stream(make_llm: MakeLlm) -> None:
    err = b'data: {"error": {"message": "upstream provider failed"}}\n\n'
    llm = await make_llm(sse_handler(chunk("a"), err))
    with pytest.raises(EngineError, match="upstream provider failed") as info:
        await collect(llm)
    assert info.value.retryable


async def test_json_instead_of_stream(make_llm: MakeLlm) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": [{"message": {"content": "hi"}}]})

    llm = await make_llm(handler)
    with pytest.raises(EngineError, match="expected an event stream") as info:
        await collect(llm)
    assert not info.value.retryable


async def test_oversized_line_is_an_error(make_llm: MakeLlm) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_stream(request)
        piece = b"x" * 65536
        for _ in range(20):  # 1.25 MiB with no line break
            await resp.write(piece)
        return resp

    llm = await make_llm(handler)
    with pytest.raises(EngineError, match="bad event stream"):
        await collect(llm)


async def test_server_drops_connection_mid_stream(make_llm: MakeLlm) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await open_stream(request)
        await resp.write(chunk("a"))
        assert request.transport is not None
        request.transport.close()
        return resp

    llm = await make_llm(handler)
    with pytest.raises(EngineError) as info:
        await collect(llm)
    assert info.value.retryable


async def test_connection_refused_is_retryable() -> None:
    # Bind then close to get a local port that nothing listens on.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = OpenAiLlm(f"http://127.0.0.1:{port}/v1", "m", None, connect_timeout_s=2)
    try:
        with pytest.raises(EngineError) as info:
            await collect(llm)
        assert info.value.retryable
    finally:
        await llm.aclose()


async def test_owned_session_closed_by_aclose(make_llm: MakeLlm) -> None:
    llm = await make_llm(sse_handler(chunk("a"), DONE))
    await collect(llm)
    session = llm._session
    assert session is not None and not session.closed
    await llm.aclose()
    assert session.closed


async def test_external_session_used_and_left_open(aiohttp_server: AiohttpServer) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", sse_handler(chunk("a"), DONE))
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        llm = OpenAiLlm(str(server.make_url("/v1")), "m", None, session=session)
        assert await collect(llm) == ["a"]
        assert await collect(llm) == ["a"]
        await llm.aclose()
        assert not session.closed


async def test_aclose_without_use_is_harmless() -> None:
    llm = OpenAiLlm("http://127.0.0.1:1/v1", "m", None)
    await llm.aclose()
    await llm.aclose()
    assert llm._session is None, "closing must not open an HTTP session"
    # Still usable: a fresh session is made, and a refused port is a clear EngineError.
    with pytest.raises(EngineError, match=r"connection to .* failed"):
        async for _ in llm.complete([Message(Role.USER, "hi")]):
            pass
    session = llm._session
    assert session is not None
    await llm.aclose()
    assert session.closed and llm._session is None


def test_url_joining() -> None:
    for base in ["http://h/v1", "http://h/v1/", "http://h/v1//"]:
        assert OpenAiLlm(base, "m", None).url == "http://h/v1/chat/completions"


def test_repr_hides_key() -> None:
    assert API_KEY not in repr(OpenAiLlm("http://h/v1", "m", API_KEY))


def test_from_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [
        "RINGBACK_OPENAI_BASE_URL",
        "RINGBACK_OPENAI_MODEL",
        "RINGBACK_OPENAI_API_KEY",
        "OPENAI_API_KEY",
    ]:
        monkeypatch.delenv(var, raising=False)
    llm = OpenAiLlm.from_env()
    assert llm.url == "https://api.openai.com/v1/chat/completions"
    assert llm.model == "gpt-4o-mini"
    assert llm._api_key is None


def test_from_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGBACK_OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("RINGBACK_OPENAI_MODEL", "llama")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")
    monkeypatch.delenv("RINGBACK_OPENAI_API_KEY", raising=False)
    llm = OpenAiLlm.from_env()
    assert llm.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert llm.model == "llama"
    assert llm._api_key == "sk-fallback"
    monkeypatch.setenv("RINGBACK_OPENAI_API_KEY", "sk-ringback")
    assert OpenAiLlm.from_env()._api_key == "sk-ringback"
