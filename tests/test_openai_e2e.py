"""The `openai` LLM engine end to end: real server process → a local OpenAI-compatible SSE server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from harness.peer import Caller
from tests.conftest import free_port, run_server

pytestmark = pytest.mark.e2e

ANSWERS = ["Paris is lovely in the spring.", "I remember: you asked about the time."]


async def test_openai_engine_streams_replies_and_keeps_history(
    tmp_path: Path, speech: dict[str, Any]
) -> None:
    requests: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        requests.append({"body": body, "auth": request.headers.get("Authorization")})
        # Answer by content: speculative requests may be discarded and repeated.
        asked = body["messages"][-1]["content"]
        answer = ANSWERS[0] if "time" in asked else ANSWERS[1]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(answer.split(" ")):
            delta = {"content": word if i == 0 else " " + word}
            chunk = {"choices": [{"index": 0, "delta": delta}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    env = {
        "RINGBACK_OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "RINGBACK_OPENAI_MODEL": "test-model",
        "RINGBACK_OPENAI_API_KEY": "sk-test",
    }
    try:
        with run_server(tmp_path, "--llm", "openai", env=env) as server:
            caller = Caller(server.url)
            try:
                await caller.connect()
                first = await caller.say("time", speech["What time is it?"])
                second = await caller.say("name", speech["What is your name?"])
            finally:
                await caller.close()
    finally:
        await runner.cleanup()

    assert first.reply == ANSWERS[0]
    assert second.reply == ANSWERS[1]
    assert first.v2v_ms is not None and second.v2v_ms is not None
    assert len(requests) >= 2
    last = requests[-1]
    assert last["auth"] == "Bearer sk-test"
    body = last["body"]
    assert body["model"] == "test-model" and body["stream"] is True
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert body["messages"][2]["content"] == ANSWERS[0], "history keeps the heard reply"
    assert "time" in body["messages"][1]["content"]
