"""Admission by measured headroom through the real aiohttp app (create_app, real engines, real
aiortc offers): no headroom → 503 + Retry-After + retry_after_ms, fast, before any peer
connection exists; headroom back → admitted; a resume is never refused for headroom."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection

from agent.call.config import AgentConfig
from agent.conversation.speech_detector import SpeechDetectorConfig
from agent.engines.pocketsphinx_asr import AsrPoolConfig
from agent.engines.tts_pool import TtsPoolConfig
from signaling import peers
from signaling.app import HEADROOM, create_app
from signaling.config import ServerConfig
from signaling.headroom import HeadroomConfig
from tests.test_signaling import make_offer_sdp

pytestmark = pytest.mark.e2e

# Short windows so that headroom comes back within the test; the loop-lag limit well above
# what this (shared, loaded) machine's own event loop shows, far below what is injected.
# min_calls=0: the test has no calls in progress, and still wants to be refused.
HEADROOM_CONFIG = HeadroomConfig(
    loop_lag_p99_s=0.2, window_s=1.5, hold_s=0.5, retry_min_s=0.3, warmup_s=0.0, min_calls=0
)
INJECTED_LAG_S = 1.0


def config() -> ServerConfig:
    return ServerConfig(
        max_sessions=4,
        ice_host_addresses=("127.0.0.1",),
        headroom=HEADROOM_CONFIG,
        agent=AgentConfig(
            asr="pocketsphinx",
            asr_pool=AsrPoolConfig(processes=1, preload=0),
            tts=TtsPoolConfig(workers=1),
            speech=SpeechDetectorConfig(kind="webrtcvad"),
            greeting="none",
        ),
    )


async def post_offer(
    client: TestClient[Any, Any], **extra: Any
) -> tuple[int, Any, dict[str, str], float]:
    sdp = await make_offer_sdp("audio")
    started = time.perf_counter()
    async with client.post("/offer", json={"sdp": sdp, "type": "offer", **extra}) as resp:
        body = await resp.json()
        return resp.status, body, dict(resp.headers), time.perf_counter() - started


def exhaust(client: TestClient[Any, Any]) -> None:
    """Two seconds' worth of an event loop a second late: no room for another call."""
    client.app[HEADROOM].observe_loop_lag(time.monotonic(), [INJECTED_LAG_S] * 40)


async def test_no_headroom_refuses_fast_then_admits_and_resumes_pass(
    aiohttp_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(config())
    client: TestClient[Any, Any] = await aiohttp_client(app)
    created: list[object] = []
    real_pc = RTCPeerConnection  # what signaling.peers imports, before it is replaced

    def counted_pc(*args: Any, **kwargs: Any) -> Any:
        pc = real_pc(*args, **kwargs)
        created.append(pc)
        return pc

    monkeypatch.setattr(peers, "RTCPeerConnection", counted_pc)

    exhaust(client)
    status, body, headers, elapsed_s = await post_offer(client)
    assert status == 503, body
    assert elapsed_s < 0.05, f"refused in {1000 * elapsed_s:.0f} ms"
    assert int(headers["Retry-After"]) >= 1
    assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] >= 300, body
    assert int(headers["Retry-After"]) == -(-body["retry_after_ms"] // 1000)
    assert created == [], "refused before any peer connection"
    # WHIP is refused the same way.
    async with client.post(
        "/whip", data=await make_offer_sdp("audio"), headers={"Content-Type": "application/sdp"}
    ) as resp:
        assert resp.status == 503 and "Retry-After" in resp.headers
        assert (await resp.json())["retry_after_ms"] > 0
    assert created == []
    async with client.get("/metrics") as resp:
        metrics = await resp.text()
    assert 'ringback_admission_refused_total{reason="headroom"} 2.0' in metrics
    assert 'ringback_admission_headroom_signal{signal="loop_lag_p99_seconds"} 1.0' in metrics

    # Headroom back (the injected lag leaves the window): the next offer is admitted.
    deadline = time.monotonic() + 15
    refused = 2
    while True:
        status, body, _, _ = await post_offer(client)
        if status != 503 or time.monotonic() > deadline:
            break
        refused += 1
        assert created == []
        await asyncio.sleep(body["retry_after_ms"] / 1000)
    assert status == 200, body
    assert len(created) == 1
    call = {"session_id": body["session_id"], "session_secret": body["session_secret"]}

    # No headroom again: a new call is refused, but the admitted one may resume.
    exhaust(client)
    status, body, _, _ = await post_offer(client)
    assert status == 503, body
    status, body, _, _ = await post_offer(client, resume=call)
    assert status == 200, body
    assert body["resumed"] is True and body["session_id"] == call["session_id"]
    async with client.get("/metrics") as resp:
        metrics = await resp.text()
    assert f'ringback_admission_refused_total{{reason="headroom"}} {refused + 1}.0' in metrics
    assert "ringback_admission_headroom_admitting 0.0" in metrics
