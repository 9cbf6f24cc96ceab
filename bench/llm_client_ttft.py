"""Time to first token: our hand-written SSE client (OpenAiLlm) vs the official `openai` SDK.

Both stream the same responses from one local OpenAI-compatible aiohttp server
(harness/fake_openai.py), alternating request by request so both see the same machine load;
each client keeps its connection pool (as the server does). The `openai` package is not a
dependency: install it anywhere on PYTHONPATH to include it (`pip install --target DIR openai`),
else only our client is measured.

    python -m bench.llm_client_ttft [--requests 200] [--json out.json]

Measured on the 2-core dev box under other helpers' load (load average ~7; openai 1.109.1,
httpx 0.29), ms from the request to the first text delta, p50 / p90 / p99, two runs:
    hand-written (aiohttp)  0.81 / 4.87 / 9.33    0.66 / 0.93 /  5.00   (200, 300 requests)
    openai SDK (httpx)      6.88 / 11.46 / 19.93  2.63 / 6.77 / 11.17
The SDK is 2-4 ms slower to the first token on a local server (its httpx stack and per-chunk
pydantic models), so the server keeps the hand-written client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.engines.interfaces import Message, Role
from agent.engines.openai_llm import OpenAiLlm
from agent.metrics import summarize
from harness.fake_openai import FakeOpenAi, Text

MESSAGES = [Message(Role.SYSTEM, "Be brief."), Message(Role.USER, "Say hello.")]
REPLY = "Hello there, how can I help you today?"

FirstToken = Callable[[], Awaitable[float]]


def ours(base_url: str) -> tuple[FirstToken, Callable[[], Awaitable[None]]]:
    llm = OpenAiLlm(base_url, "fake", "sk-bench")

    async def first() -> float:
        t0 = time.perf_counter()
        got = None
        stream = llm.complete(MESSAGES)
        async for _ in stream:
            got = time.perf_counter() - t0
            break
        await stream.aclose()
        assert got is not None
        return got

    return first, llm.aclose


def sdk(base_url: str) -> tuple[FirstToken, Callable[[], Awaitable[None]]] | None:
    try:
        import openai  # type: ignore[import-not-found]  # optional, measured only when present
    except ImportError:
        return None
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    payload: Any = [m.as_dict() for m in MESSAGES]

    async def first() -> float:
        t0 = time.perf_counter()
        got = None
        stream = await client.chat.completions.create(
            model="fake", messages=payload, stream=True, max_tokens=200
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got = time.perf_counter() - t0
                break
        await stream.close()
        assert got is not None
        return got

    async def close() -> None:
        await client.close()

    return first, close


async def run(requests: int) -> dict[str, Any]:
    async with FakeOpenAi(lambda body: [Text(REPLY)]) as fake:
        clients: dict[str, tuple[FirstToken, Callable[[], Awaitable[None]]]] = {
            "hand-written (aiohttp)": ours(fake.base_url)
        }
        made = sdk(fake.base_url)
        if made is not None:
            clients["openai SDK (httpx)"] = made
        times: dict[str, list[float]] = {name: [] for name in clients}
        for first, _ in clients.values():  # warm up: connection pools, imports
            for _ in range(5):
                await first()
        for _ in range(requests):
            for name, (first, _) in clients.items():
                times[name].append((await first()) * 1000)
        for _, close in clients.values():
            await close()
    return {name: summarize(values, "ttft_ms") for name, values in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    results = asyncio.run(run(a.requests))
    print(f"{'client':26} {'p50':>6} {'p90':>6} {'p99':>6}  (ms to first token)")
    for name, r in results.items():
        p50, p90, p99 = (r[f"ttft_ms_p{p}"] or 0.0 for p in (50, 90, 99))
        print(f"{name:26} {p50:6.2f} {p90:6.2f} {p99:6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
