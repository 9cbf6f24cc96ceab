"""WHIP (RFC 9725): an aiortc client offers application/sdp, talks, hears the agent, hangs up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from agent.clock import MonotonicClock
from agent.media.inbound import playout_frames
from agent.media.outbound import OutboundAudioTrack
from harness.peer import LOUD, caller_patches, last_speech_offset
from tests.conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def loopback_peer() -> Iterator[None]:
    """This process's peers run with the Caller's patches (loopback host candidates)."""
    with caller_patches():
        yield


async def test_whip_call_is_answered_heard_and_hung_up(
    server: Server, speech: dict[str, Any], loopback_peer: None
) -> None:
    clock = MonotonicClock()
    started: dict[object, float] = {}
    spoke = asyncio.Event()
    answered = asyncio.Event()  # loud audio from the agent after our question ended
    t_end = float("inf")

    def on_started(mark: object, t: float) -> None:
        started[mark] = t
        spoke.set()

    mic = OutboundAudioTrack(clock, on_mark_started=on_started)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(mic, direction="sendrecv")
    heard: list[tuple[float, np.ndarray]] = []

    async def record(track: MediaStreamTrack) -> None:
        async with contextlib.aclosing(playout_frames(track, clock)) as frames:
            async for frame in frames:
                heard.append((frame.t, frame.pcm))
                if frame.t > t_end and np.abs(frame.pcm.astype(np.int32)).max() > LOUD:
                    answered.set()

    recorder: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: recorder.append(asyncio.ensure_future(record(track))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                server.url + "/whip",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as resp:
                assert resp.status == 201, await resp.text()
                assert resp.content_type == "application/sdp"
                location = resp.headers["Location"]
                answer = await resp.text()
            assert location.startswith("/whip/")
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            assert server.health()["sessions"] == 1

            pcm = speech["What time is it?"]
            await mic.enqueue(pcm, "q")
            mic.end_stream()
            await asyncio.wait_for(spoke.wait(), 5)
            t_end = started["q"] + last_speech_offset(pcm) / 48_000
            # The agent answers out loud (no data channel in WHIP: we listen for its voice).
            await asyncio.wait_for(answered.wait(), 15)
            await asyncio.sleep(0.5)
            reply = [p for t, p in heard if t > t_end]
            assert reply and np.abs(np.concatenate(reply).astype(np.int32)).max() > 3000

            async with http.delete(server.url + location) as resp:
                assert resp.status == 200
        for _ in range(50):
            if server.health()["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert server.health()["sessions"] == 0
        session_id = location.split("/")[2]  # /whip/{id}/{secret}
        heard_lines = [
            line
            for line in server.log().splitlines()
            if f"[{session_id}]" in line and "turn 1 heard" in line
        ]
        assert heard_lines and "time" in heard_lines[0], heard_lines
    finally:
        mic.stop()
        await pc.close()
        for task in recorder:
            task.cancel()
        await asyncio.gather(*recorder, return_exceptions=True)


async def test_whip_errors(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/whip", json={"sdp": "v=0"}) as resp:
            assert resp.status == 415
            assert "application/sdp" in (await resp.json())["error"]
        async with http.post(
            server.url + "/whip", data="hello", headers={"Content-Type": "application/sdp"}
        ) as resp:
            assert resp.status == 400
            assert "sdp" in (await resp.json())["error"].lower()
        async with http.delete(server.url + "/whip/nope") as resp:
            assert resp.status == 404
