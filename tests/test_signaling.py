"""Tier 3 signaling: bad offers get precise JSON errors, limits hold, every call is cleaned up.

Real HTTP against the real `ringback serve` process, real aiortc peers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from harness.peer import Caller, caller_patches
from tests.conftest import Server, run_server

pytestmark = pytest.mark.e2e

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)


# --- helpers ---------------------------------------------------------------------------------


async def make_offer_sdp(*kinds: str) -> str:
    """A real aiortc offer with one transceiver per kind (the peer is closed right away)."""
    with caller_patches():  # loopback host candidates: aioice never offers them by itself
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            for kind in kinds:
                pc.addTransceiver(kind, direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            return str(pc.localDescription.sdp)
        finally:
            await pc.close()


def only_ilbc(sdp: str) -> str:
    """Rename every offered codec to iLBC, which the server does not support."""
    return re.sub(r"^(a=rtpmap:\d+ )[^/\r\n]+/", r"\1iLBC/", sdp, flags=re.MULTILINE)


def without_lines(sdp: str, *prefixes: str) -> str:
    return "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith(prefixes))


def without_security(sdp: str) -> str:
    """Drop the ICE credentials and DTLS fingerprints aiortc needs to answer."""
    return without_lines(sdp, "a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it is not JSON

    @property
    def error(self) -> str:
        assert isinstance(self.body, dict), f"not a JSON object: {self.body!r}"
        assert set(self.body) == {"error"}, self.body
        assert isinstance(self.body["error"], str) and self.body["error"], self.body
        return str(self.body["error"])


async def request(method: str, url: str, **kwargs: Any) -> Reply:
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
        http.request(method, url, **kwargs) as resp,
    ):
        text = await resp.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return Reply(resp.status, dict(resp.headers), body)


def post_json(url: str, body: object) -> Awaitable[Reply]:
    return request("POST", url + "/offer", json=body)


def post_raw(
    url: str, data: str | bytes, content_type: str = "application/json"
) -> Awaitable[Reply]:
    return request("POST", url + "/offer", data=data, headers={"Content-Type": content_type})


async def health(url: str) -> dict[str, Any]:
    reply = await request("GET", url + "/healthz")
    assert reply.status == 200, reply
    assert isinstance(reply.body, dict)
    return reply.body


async def wait_sessions(url: str, n: int, timeout_s: float) -> float:
    """Poll /healthz until it reports `n` sessions; returns how long that took."""
    t0 = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - t0 < timeout_s:
        last = await health(url)
        if last["sessions"] == n:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"sessions never reached {n} within {timeout_s} s: {last}")


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def peer_gone(caller: Caller) -> bool:
    """The caller saw the server end the call: connection closed/failed or remote track ended."""
    if caller.pc.connectionState in ("closed", "failed"):
        return True
    return any(
        r.track is not None and r.track.readyState == "ended" for r in caller.pc.getReceivers()
    )


# --- bad offers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadOffer:
    name: str
    status: int
    keyword: str  # must appear (case-insensitively) in the JSON error message
    send: Callable[[str], Awaitable[Reply]]


async def _oversized(url: str) -> Reply:
    sdp = await make_offer_sdp("audio")
    return await post_json(
        url, {"sdp": sdp + "a=x-padding:" + "x" * 100 * 1024 + "\r\n", "type": "offer"}
    )


async def _wrong_type(url: str) -> Reply:
    return await post_json(url, {"sdp": await make_offer_sdp("audio"), "type": "answer"})


async def _wrong_content_type(url: str) -> Reply:
    body = json.dumps({"sdp": await make_offer_sdp("audio"), "type": "offer"})
    return await post_raw(url, body, "text/plain")


async def _video_only(url: str) -> Reply:
    return await post_json(url, {"sdp": await make_offer_sdp("video"), "type": "offer"})


async def _ilbc_only(url: str) -> Reply:
    return await post_json(url, {"sdp": only_ilbc(await make_offer_sdp("audio")), "type": "offer"})


async def _no_ice_credentials(url: str) -> Reply:
    sdp = without_security(await make_offer_sdp("audio"))
    return await post_json(url, {"sdp": sdp, "type": "offer"})


async def _recvonly_audio(url: str) -> Reply:
    sdp = (await make_offer_sdp("audio")).replace("a=sendrecv", "a=recvonly")
    return await post_json(url, {"sdp": sdp, "type": "offer"})


async def _audio_port_zero(url: str) -> Reply:
    sdp = re.sub(r"^m=audio \d+", "m=audio 0", await make_offer_sdp("audio"), flags=re.MULTILINE)
    return await post_json(url, {"sdp": sdp, "type": "offer"})


BAD_OFFERS = [
    BadOffer("malformed-json", 400, "json", lambda url: post_raw(url, '{"sdp": "v=0", ')),
    BadOffer("json-not-object", 400, "object", lambda url: post_json(url, ["offer", "v=0"])),
    BadOffer("missing-sdp", 400, "sdp", lambda url: post_json(url, {"type": "offer"})),
    BadOffer("type-not-offer", 400, "type", _wrong_type),
    BadOffer("text-plain", 415, "application/json", _wrong_content_type),
    BadOffer("too-large", 413, "limit is 65536 bytes", _oversized),
    BadOffer("not-sdp", 400, "sdp", lambda url: post_json(url, {"sdp": "hello", "type": "offer"})),
    BadOffer("video-only", 422, "audio", _video_only),
    BadOffer("no-common-codec", 422, "codec", _ilbc_only),
    BadOffer("no-ice-credentials", 400, "ice", _no_ice_credentials),
    BadOffer("audio-recvonly", 422, "sends no audio", _recvonly_audio),
    BadOffer("audio-port-zero", 422, "audio", _audio_port_zero),
]


def check_bad_offer(case: BadOffer, reply: Reply) -> None:
    assert reply.status == case.status, (case.name, reply)
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply
    assert case.keyword.lower() in reply.error.lower(), (case.name, reply.error)


@pytest.mark.parametrize("case", BAD_OFFERS, ids=[c.name for c in BAD_OFFERS])
async def test_bad_offer_gets_a_specific_json_error(server: Server, case: BadOffer) -> None:
    before = await health(server.url)
    reply = await case.send(server.url)
    check_bad_offer(case, reply)
    # No session leaks, and a rejected offer never counts as a started call.
    await wait_sessions(server.url, 0, timeout_s=5)
    assert (await health(server.url))["calls_started"] == before["calls_started"]


async def test_unknown_route_is_a_json_404(server: Server) -> None:
    reply = await request("GET", server.url + "/no/such/route")
    assert reply.status == 404
    assert reply.error


async def test_hang_up_of_an_unknown_session_is_a_json_404(server: Server) -> None:
    reply = await request("DELETE", server.url + "/session/unknown")
    assert reply.status == 404
    assert "session" in reply.error.lower()


async def test_healthz_shape(server: Server) -> None:
    body = await health(server.url)
    assert body["status"] == "ok"
    assert isinstance(body["sessions"], int) and body["sessions"] >= 0
    assert isinstance(body["max_sessions"], int) and body["max_sessions"] >= 1
    assert isinstance(body["calls_started"], int) and body["calls_started"] >= 0
    assert body["sessions"] <= body["max_sessions"]


async def test_page_and_static_assets_are_served(server: Server) -> None:
    page = await request("GET", server.url + "/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "ringback" in page.body.lower()
    script = await request("GET", server.url + "/static/app.js")
    assert script.status == 200
    assert "javascript" in script.headers["Content-Type"]
    assert len(script.body) > 0


# --- robustness ------------------------------------------------------------------------------


async def test_server_keeps_serving_a_call_through_bad_requests(
    server: Server, speech: dict[str, Any]
) -> None:
    caller = Caller(server.url)
    try:
        await caller.connect()
        assert (await health(server.url))["sessions"] == 1
        replies = await asyncio.gather(
            *(case.send(server.url) for case in BAD_OFFERS),
            request("GET", server.url + "/no/such/route"),
            request("DELETE", server.url + "/session/unknown"),
        )
        for case, reply in zip(BAD_OFFERS, replies, strict=False):
            check_bad_offer(case, reply)
        assert [r.status for r in replies[len(BAD_OFFERS) :]] == [404, 404]
        assert (await health(server.url))["sessions"] == 1

        result = await caller.say("What time is it?", speech["What time is it?"])
        assert result.reply is not None and result.reply.startswith("It's"), result
        assert (await health(server.url))["sessions"] == 1
    finally:
        await caller.close()
    await wait_sessions(server.url, 0, timeout_s=2)


# --- limits ----------------------------------------------------------------------------------


async def test_capacity_limit_says_retry_after(tmp_path: Path) -> None:
    with run_server(tmp_path, "--max-sessions", "1") as srv:
        first = Caller(srv.url)
        second: Caller | None = None
        try:
            await first.connect()
            assert (await health(srv.url))["sessions"] == 1
            busy = await post_json(srv.url, {"sdp": await make_offer_sdp("audio"), "type": "offer"})
            assert busy.status == 503, busy
            assert int(busy.headers["Retry-After"]) > 0
            assert "busy" in busy.error.lower()
            assert (await health(srv.url))["sessions"] == 1

            await first.close()
            await wait_sessions(srv.url, 0, timeout_s=2)
            second = Caller(srv.url)
            await second.connect()
            assert (await health(srv.url))["sessions"] == 1
        finally:
            await first.close()
            if second is not None:
                await second.close()
        await wait_sessions(srv.url, 0, timeout_s=2)


# --- lifecycle -------------------------------------------------------------------------------


async def test_max_call_duration_cuts_the_call(tmp_path: Path) -> None:
    with run_server(tmp_path, "--max-call-s", "3") as srv:
        caller = Caller(srv.url)
        try:
            t0 = time.monotonic()
            await caller.connect()
            assert (await health(srv.url))["sessions"] == 1
            await wait_sessions(srv.url, 0, timeout_s=6)
            elapsed = time.monotonic() - t0
            assert elapsed >= 2.9, f"cut after {elapsed:.1f} s, before the 3 s limit"
            assert await wait_until(lambda: peer_gone(caller), 5), caller.pc.connectionState
        finally:
            await caller.close()
        assert "call ended: max duration" in srv.log()


async def test_vanished_peer_frees_its_session(server: Server) -> None:
    await wait_sessions(server.url, 0, timeout_s=5)
    caller = Caller(server.url)
    try:
        await caller.connect()
        assert (await health(server.url))["sessions"] == 1
        await caller.pc.close()  # no DELETE: the peer just goes away
        await wait_sessions(server.url, 0, timeout_s=10)
    finally:
        await caller.close()


async def test_hang_up_frees_the_session_promptly(server: Server) -> None:
    await wait_sessions(server.url, 0, timeout_s=5)
    caller = Caller(server.url)
    try:
        await caller.connect()
        assert (await health(server.url))["sessions"] == 1
        assert caller.session_id
        # The id alone is not enough to end someone's call: it needs the call's secret.
        for secret in ({}, {"X-Session-Secret": "guess"}):
            denied = await request(
                "DELETE", f"{server.url}/session/{caller.session_id}", headers=secret
            )
            assert denied.status == 404, denied
        assert (await health(server.url))["sessions"] == 1
        t0 = time.monotonic()
        reply = await request(
            "DELETE",
            f"{server.url}/session/{caller.session_id}",
            headers={"X-Session-Secret": caller.session_secret},
        )
        assert reply.status == 200, reply
        await wait_sessions(server.url, 0, timeout_s=2)
        assert time.monotonic() - t0 < 2
        again = await request(
            "DELETE",
            f"{server.url}/session/{caller.session_id}",
            headers={"X-Session-Secret": caller.session_secret},
        )
        assert again.status == 404
    finally:
        await caller.close()


async def test_shutdown_closes_every_peer(tmp_path: Path) -> None:
    with run_server(tmp_path) as srv:
        caller = Caller(srv.url)
        try:
            await caller.connect()
            assert (await health(srv.url))["sessions"] == 1
            await asyncio.sleep(0.5)  # past the greeting
            t_term = caller.clock.now()
            srv.proc.terminate()
            assert await wait_until(lambda: srv.proc.poll() is not None, 10), "server still up"
            # An idle caller hears a short spoken goodbye before the call ends.
            goodbye = caller.audio_between(t_term, caller.clock.now())
            assert goodbye.size and int(np.abs(goodbye.astype(np.int32)).max()) > 3000
            assert srv.proc.returncode == 0, srv.log()
            assert await wait_until(lambda: peer_gone(caller), 10), caller.pc.connectionState
            told = [e for e in caller.events if e.data.get("type") == "shutdown"]
            assert told, "the caller was not told the server is shutting down"
        finally:
            await caller.close()
        assert "call ended: shutdown" in srv.log()


# --- known server bugs -----------------------------------------------------------------------


async def post_and_hang_up(url: str, sdp: str) -> Reply:
    """POST an offer; if the server answers it anyway, hang that call up again."""
    reply = await post_json(url, {"sdp": sdp, "type": "offer"})
    if reply.status == 200 and isinstance(reply.body, dict):
        secret = {"X-Session-Secret": reply.body["session_secret"]}
        await request("DELETE", f"{url}/session/{reply.body['session_id']}", headers=secret)
    return reply


async def test_offer_without_dtls_setup_gets_a_json_4xx(server: Server) -> None:
    sdp = without_lines(await make_offer_sdp("audio"), "a=setup:")
    reply = await post_and_hang_up(server.url, sdp)
    assert 400 <= reply.status < 500, reply
    assert "sdp" in reply.error.lower()


async def test_offer_without_fingerprint_is_rejected(server: Server) -> None:
    sdp = without_lines(await make_offer_sdp("audio"), "a=fingerprint:")
    reply = await post_and_hang_up(server.url, sdp)
    assert 400 <= reply.status < 500, reply
    assert "fingerprint" in reply.error.lower()


async def test_offer_that_never_connects_is_dropped(tmp_path: Path) -> None:
    with run_server(tmp_path, "--connect-timeout-s", "3") as srv:
        sdp = without_lines(await make_offer_sdp("audio"), "a=candidate:", "a=end-of-candidates")
        reply = await post_json(srv.url, {"sdp": sdp, "type": "offer"})
        assert reply.status == 200, reply
        assert (await health(srv.url))["sessions"] == 1
        connect_timeout_s = 3
        await wait_sessions(srv.url, 0, timeout_s=connect_timeout_s + 8)


async def test_answer_advertises_opus_in_band_fec(server: Server) -> None:
    """Browsers only send Opus FEC to a receiver that asks for it in the SDP answer."""
    reply = await post_and_hang_up(server.url, await make_offer_sdp("audio"))
    assert reply.status == 200, reply
    sdp = reply.body["sdp"]
    opus_pt = re.search(r"^a=rtpmap:(\d+) opus/48000/2", sdp, flags=re.MULTILINE)
    assert opus_pt is not None, sdp
    fmtp = re.search(rf"^a=fmtp:{opus_pt.group(1)} (.*)$", sdp, flags=re.MULTILINE)
    assert fmtp is not None, sdp
    params = dict(p.split("=") for p in fmtp.group(1).strip().split(";"))
    assert params.get("useinbandfec") == "1" and params.get("minptime") == "10"
