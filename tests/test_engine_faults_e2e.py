"""LLM faults end to end: a real server process, a real caller, and a fake OpenAI-compatible
server that fails in every way. For each failure: the caller hears something within 1.5 s of
the end of its speech, the breaker opens (an `engine` event), the caller's events carry no
internals; then the endpoint heals, the breaker closes again and the next turn is answered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.conversation.engine_faults import FALLBACK_REPLY, MID_REPLY_APOLOGY
from harness.peer import Caller
from tests.conftest import free_port, run_server

pytestmark = pytest.mark.e2e

ANSWER = "I am ringback, your voice agent."
CUT = "Paris is lovely in the spring. And the river at night is"
SECRET = "secret-body-42"
HEARD_WITHIN_MS = 1500
RESET_S = 2.0


class FakeOpenAi:
    """`/v1/chat/completions` that answers `ANSWER`, or fails as `mode` says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await request.json()
        try:
            return await self._answer(request, self.mode)
        except ConnectionError:  # the agent gave up on this request and hung up: fine
            return web.Response(status=499)

    async def _answer(self, request: web.Request, mode: str) -> web.StreamResponse:
        if mode == "hang":  # before the headers
            await asyncio.sleep(3600)
        if mode == "http500":
            return web.Response(
                status=500, text=f"upstream http://10.9.8.7:9999/v1 exploded: {SECRET}"
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if mode == "garbage":
            await resp.write(b"data: {this is not json " + SECRET.encode() + b"\n\n")
            return resp
        if mode == "slow":  # headers at once, first token after 5 s
            await asyncio.sleep(5)
        text = CUT if mode == "cut" else ANSWER
        for i, word in enumerate(text.split(" ")):
            delta = {"content": word if i == 0 else " " + word}
            await resp.write(f"data: {json.dumps({'choices': [{'delta': delta}]})}\n\n".encode())
            await asyncio.sleep(0.01)
        if mode != "cut":  # cut: the stream just ends, mid-sentence
            await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def fake_llm() -> AsyncIterator[tuple[FakeOpenAi, str]]:
    fake = FakeOpenAi()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.completions)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def since(caller: Caller, t: float, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in caller.events if e.t >= t and e.data.get("type") == kind]


MODES = {
    # mode: what the caller hears after the filler (if any)
    "hang": FALLBACK_REPLY,
    "slow": FALLBACK_REPLY,
    "cut": "Paris is lovely in the spring. " + MID_REPLY_APOLOGY,
    "http500": FALLBACK_REPLY,
    "garbage": FALLBACK_REPLY,
}
ERRORS = {
    "hang": "the language model timed out",
    "slow": "the language model timed out",
    "cut": "the language model stopped mid-reply",
    "http500": "the language model failed",
    "garbage": "the language model failed",
}


async def test_every_llm_failure_is_heard_quickly_opens_the_breaker_and_heals(
    tmp_path: Path, speech: dict[str, Any], fake_llm: tuple[FakeOpenAi, str]
) -> None:
    fake, url = fake_llm
    env = {"RINGBACK_OPENAI_BASE_URL": url, "RINGBACK_OPENAI_MODEL": "test-model"}
    args = ["--llm", "openai", "--llm-breaker-failures", "1", "--llm-breaker-reset-s", "2"]
    figures: dict[str, float] = {}
    with run_server(tmp_path, *args, env=env) as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            for mode, heard in MODES.items():
                fake.mode = mode
                t0 = caller.clock.now()
                failed = await caller.say(mode, speech["What is your name?"])
                assert failed.v2v_ms is not None, f"{mode}: the caller heard nothing"
                assert failed.v2v_ms <= HEARD_WITHIN_MS, f"{mode}: dead air {failed.v2v_ms} ms"
                figures[mode] = failed.v2v_ms
                assert failed.reply is not None and failed.reply.endswith(heard), (
                    mode,
                    failed.reply,
                )
                errors = [e["message"] for e in since(caller, t0, "error")]
                assert ERRORS[mode] in errors, (mode, errors)
                states = [e["state"] for e in since(caller, t0, "engine")]
                assert "open" in states, (mode, states)
                # The endpoint heals; after the reset time a trial request closes the breaker.
                fake.mode = "ok"
                await asyncio.sleep(RESET_S + 0.5)
                t1 = caller.clock.now()
                healed = await caller.say(mode + "-healed", speech["What is your name?"])
                assert healed.reply == ANSWER, (mode, healed.reply)
                assert [e["state"] for e in since(caller, t1, "engine")][-1:] == ["closed"]
                assert not since(caller, t1, "error")
        finally:
            await caller.close()
        log = server.log()
    dump = json.dumps([e.data for e in caller.events])
    for internal in (SECRET, "10.9.8.7", url, "http://", "HTTP 500", "Traceback", "Error"):
        assert internal not in dump, f"{internal!r} reached the caller"
    assert "breaker open" in log
    print("heard after end of speech (ms):", figures)


async def test_a_hanging_llm_hands_over_to_the_fallback(
    tmp_path: Path, speech: dict[str, Any], fake_llm: tuple[FakeOpenAi, str]
) -> None:
    """Primary hangs before its headers; the filler plays, then the fallback's answer."""
    fake, url = fake_llm
    fake.mode = "hang"
    env = {"RINGBACK_OPENAI_BASE_URL": url, "RINGBACK_OPENAI_MODEL": "test-model"}
    args = ["--llm", "openai", "--llm-fallback-url", "local", "--llm-breaker-failures", "1"]
    with run_server(tmp_path, *args, env=env) as server:
        caller = Caller(server.url)
        try:
            await caller.connect()
            t0 = caller.clock.now()
            first = await caller.say("fallback", speech["What is your name?"])
            second = await caller.say("open", speech["What is your name?"])
        finally:
            await caller.close()
    assert first.v2v_ms is not None and first.v2v_ms <= HEARD_WITHIN_MS, first.v2v_ms
    spoken = [e["text"] for e in since(caller, t0, "reply")]
    assert spoken[0] == "One moment.", spoken
    assert first.reply and "ringback" in first.reply.lower(), first.reply
    assert not since(caller, t0, "error"), "the fallback answered: nothing failed for the caller"
    engine = [(e["role"], e["state"]) for e in since(caller, t0, "engine")]
    assert ("primary", "open") in engine, engine
    # Breaker open: the next turn goes straight to the fallback, without waiting or filler.
    assert second.reply == first.reply
    assert second.v2v_ms is not None and second.v2v_ms < first.v2v_ms + 500
    assert fake.requests >= 1
