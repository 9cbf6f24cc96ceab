"""Tier 3 survival: bad input never gets a 5xx, nobody can squat or hijack calls, dropped
calls are freed fast and can be resumed, logs say little.

Real `ringback serve` processes, real HTTP (raw sockets where a client library would refuse
to send the request), real aiortc peers on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc.mediastreams import MediaStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.peer import Caller
from tests.conftest import ROOT, Server, run_server
from tests.test_signaling import (
    health,
    make_offer_sdp,
    peer_gone,
    request,
    wait_sessions,
    wait_until,
    without_lines,
)

pytestmark = pytest.mark.e2e

TOKEN = "test-token-0123456789abcdef"
ORIGIN = "https://app.example.test"


# --- helpers ---------------------------------------------------------------------------------


def raw_http(url: str, payload: bytes, read_s: float = 10.0) -> bytes:
    """Send bytes as they are and return everything the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_s) as sock:
        sock.sendall(payload)
        chunks = []
        with contextlib.suppress(TimeoutError):  # a kept-alive connection: read until idle
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def post(
    url: str, path: str, body: bytes, headers: dict[str, str], timeout_s: float = 20
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP POST that sends exactly the headers given (no client-side validation)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def json_error_of(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers.get("Content-Type", "").startswith("application/json"), (status, body[:200])
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and parsed["error"], parsed
    return str(parsed["error"])


def hang_up(url: str, answer: dict[str, Any]) -> None:
    """DELETE an answered call (with its secret) so that fuzzing leaks no session."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(
            "DELETE",
            f"/session/{answer['session_id']}",
            headers={"X-Session-Secret": answer["session_secret"]},
        )
        conn.getresponse().read()
    finally:
        conn.close()


async def post_from(
    source_ip: str, url: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST /offer from another loopback address (another 'client IP')."""
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http_session,
        http_session.post(url + "/offer", json=body, headers=headers or {}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json()


class NoMedia(MediaStreamTrack):
    """A microphone that never produces a frame: the peer connects and then sends no RTP."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


async def silence_mic(caller: Caller) -> None:
    """The caller's network goes away: no more RTP leaves it (no DTLS close either)."""
    for sender in caller.pc.getSenders():
        if sender.track is not None and sender.track.kind == "audio":
            sender.replaceTrack(NoMedia())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Admission limits lifted: the fuzzer's answered offers must not trip them."""
    args = ["--offers-per-minute", "100000", "--offer-burst", "100000"]
    args += ["--max-pending", "64", "--max-pending-per-client", "64", "--max-sessions", "64"]
    with run_server(tmp_path_factory.mktemp("fuzz"), *args) as s:
        yield s


@pytest.fixture(scope="module")
def offer_sdp() -> str:
    return asyncio.run(make_offer_sdp("audio"))


# --- finding 4: input classes that used to be 500s ---------------------------------------------


def test_each_old_500_is_now_a_json_4xx(fuzz_server: Server, offer_sdp: str) -> None:
    url = fuzz_server.url
    json_ct = {"Content-Type": "application/json"}
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "deep JSON": (b"[" * 1000 + b"]" * 1000, json_ct),
        "5,000-digit integer": (b'{"sdp": ' + b"9" * 5000 + b', "type": "offer"}', json_ct),
        "gzip that is not": (b'{"sdp": "v=0"}', {**json_ct, "Content-Encoding": "gzip"}),
        "deflate that is not": (b'{"sdp": "v=0"}', {**json_ct, "Content-Encoding": "deflate"}),
    }
    mismatched = offer_sdp.replace("a=mid:0", "a=mid:7")  # BUNDLE still names mid 0
    assert mismatched != offer_sdp
    cases["BUNDLE names a mid no m-line has"] = (
        json.dumps({"sdp": mismatched, "type": "offer"}).encode(),
        json_ct,
    )
    for name, (body, headers) in cases.items():
        status, resp_headers, resp_body = post(url, "/offer", body, headers)
        assert 400 <= status < 500, (name, status, resp_body[:300])
        json_error_of(status, resp_headers, resp_body)
    # A real gzip body is read as such.
    body = gzip.compress(json.dumps({"sdp": offer_sdp, "type": "offer"}).encode())
    status, _, resp_body = post(url, "/offer", body, {**json_ct, "Content-Encoding": "gzip"})
    assert status == 200, resp_body[:300]
    hang_up(url, json.loads(resp_body))

    huge = b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    huge += b"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
    answer = raw_http(url, huge, read_s=5)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"100 Continue" not in answer
    assert health_sync(url)["sessions"] == 0


def health_sync(url: str) -> dict[str, Any]:
    return asyncio.run(health(url))


SDP_LINE_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["drop", "dup", "garble", "swap"]),
        st.integers(min_value=0, max_value=200),
        st.text(max_size=40),
    ),
    max_size=4,
)


def mutate_sdp(sdp: str, edits: list[tuple[str, int, str]]) -> str:
    lines = sdp.split("\r\n")
    for op, index, text in edits:
        i = index % max(1, len(lines))
        if op == "drop" and lines:
            del lines[i]
        elif op == "dup" and lines:
            lines.insert(i, lines[i])
        elif op == "garble" and lines:
            head, _, _ = lines[i].partition(":")
            lines[i] = f"{head}:{text}"
        elif op == "swap" and len(lines) > 1:
            j = (i + 1) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
    return "\r\n".join(lines)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn, sdp: str) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(["/offer", "/whip"]))
    kind = draw(st.sampled_from(["offer", "whip-sdp", "json", "bytes", "deep"]))
    mutated = mutate_sdp(sdp, draw(SDP_LINE_EDITS))
    if kind == "offer":
        body_obj: dict[str, Any] = {
            "sdp": mutated,
            "type": draw(st.sampled_from(["offer", "answer", 1])),
        }
        if draw(st.booleans()):
            body_obj["resume"] = draw(JSON_VALUES)
        body = json.dumps(body_obj).encode()
    elif kind == "whip-sdp":
        body = mutated.encode()
    elif kind == "json":
        body = json.dumps(draw(JSON_VALUES)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=300))
    else:
        depth = draw(st.integers(min_value=100, max_value=5000))
        body = b"[" * depth + b"]" * draw(st.integers(min_value=0, max_value=depth))
    headers = {
        "Content-Type": draw(
            st.sampled_from(
                ["application/json", "application/sdp", "text/plain", "application/json; charset=x"]
            )
        )
    }
    encoding = draw(st.sampled_from([None, None, "gzip", "deflate", "br", "x-bogus"]))
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return path, body, headers


def test_fuzzed_offers_never_get_a_5xx_nor_leak_a_session(
    fuzz_server: Server, offer_sdp: str
) -> None:
    url = fuzz_server.url
    before = health_sync(url)["calls_started"]
    answered = 0

    @settings(
        max_examples=250,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(offer_sdp))
    def check(request_: tuple[str, bytes, dict[str, str]]) -> None:
        nonlocal answered
        path, body, headers = request_
        status, resp_headers, resp_body = post(url, path, body, headers)
        assert status < 500, (path, headers, body[:200], status, resp_body[:300])
        if status in (200, 201):
            answered += 1
            if path == "/offer":
                hang_up(url, json.loads(resp_body))
            else:
                location = resp_headers["Location"]
                host, port = url.removeprefix("http://").split(":")
                conn = http.client.HTTPConnection(host, int(port))
                conn.request("DELETE", location)
                assert conn.getresponse().status == 200
                conn.close()
        elif not (status == 400 and resp_headers["Content-Type"].startswith("text/plain")):
            # Everything the app sees is answered in JSON; only a request aiohttp's HTTP
            # parser refuses before routing (e.g. Content-Encoding: br, which it cannot
            # decode) gets its plain-text 400.
            json_error_of(status, resp_headers, resp_body)

    check()
    asyncio.run(wait_sessions(url, 0, timeout_s=15))
    after = health_sync(url)["calls_started"]
    assert after - before == answered
    assert "Traceback" not in fuzz_server.log()


def test_malformed_http_is_one_info_line(fuzz_server: Server) -> None:
    before = fuzz_server.log().count("\n")
    bad_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: twelve\r\n\r\n"
    answer = raw_http(fuzz_server.url, bad_header, read_s=3)
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:100]
    time.sleep(0.3)
    new = fuzz_server.log().splitlines()[before:]
    lines = [line for line in new if "malformed HTTP request" in line]
    assert len(lines) == 1 and " INFO " in lines[0], new
    assert not any("Traceback" in line or " ERROR " in line for line in new), new


def test_a_trickling_request_is_cut_off(fuzz_server: Server) -> None:
    host, port = fuzz_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        t0 = time.monotonic()
        sock.sendall(b"POST /offer HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):
            for _ in range(40):  # one header byte a second, never a complete request
                time.sleep(1)
                sock.sendall(b"X")
        with contextlib.suppress(OSError):
            assert sock.recv(100) == b""
        assert time.monotonic() - t0 < 15, "a slowloris connection was held"


# --- findings 2 and 5: squatting, rate, vanished callers ----------------------------------------


async def test_fifty_squatting_offers_do_not_lock_out_a_caller(tmp_path: Path) -> None:
    with run_server(tmp_path, "--max-sessions", "3") as srv:
        sdp = without_lines(await make_offer_sdp("audio"), "a=candidate:", "a=end-of-candidates")
        statuses = []
        for i in range(50):  # two squatting addresses; these offers can never connect
            status, headers, body = await post_from(
                f"127.0.0.{2 + i % 2}", srv.url, {"sdp": sdp, "type": "offer"}
            )
            statuses.append(status)
            if status == 429:
                assert int(headers["Retry-After"]) >= 1 and body["error"], body
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 4, statuses  # per-client budget: 2 pending each
        caller = Caller(srv.url)
        try:
            await caller.connect()
            assert (await health(srv.url))["sessions"] >= 1
            assert caller.pc.connectionState == "connected"
        finally:
            await caller.close()
        # The squatters' offers are all gone by the connect timeout (10 s).
        await wait_sessions(srv.url, 0, timeout_s=15)


async def test_offer_rate_per_client_gets_429_with_retry_after(tmp_path: Path) -> None:
    args = ["--offers-per-minute", "6", "--offer-burst", "2", "--max-pending-per-client", "9"]
    with run_server(tmp_path, *args) as srv:
        sdp = await make_offer_sdp("audio")
        replies = [
            await post_from("127.0.0.5", srv.url, {"sdp": sdp, "type": "offer"}) for _ in range(3)
        ]
        assert [r[0] for r in replies] == [200, 200, 429], [r[0] for r in replies]
        assert 1 <= int(replies[2][1]["Retry-After"]) <= 10
        assert "slow down" in replies[2][2]["error"]
        # Another address is not affected.
        other = await post_from("127.0.0.6", srv.url, {"sdp": sdp, "type": "offer"})
        assert other[0] == 200
        for _status, _, body in [*replies[:2], other]:
            secret = {"X-Session-Secret": body["session_secret"]}
            await request("DELETE", f"{srv.url}/session/{body['session_id']}", headers=secret)
        await wait_sessions(srv.url, 0, timeout_s=5)


async def test_a_caller_that_sends_no_media_is_ended(tmp_path: Path) -> None:
    with run_server(tmp_path, "--media-timeout-s", "3") as srv:
        caller = Caller(srv.url)
        try:
            await caller.connect()
            assert (await health(srv.url))["sessions"] == 1
            t0 = time.monotonic()
            await silence_mic(caller)
            await wait_sessions(srv.url, 0, timeout_s=10)
            assert time.monotonic() - t0 < 3 + 3, "ended too late"
        finally:
            await caller.close()
        assert "call ended: no media" in srv.log()


VANISHING_CALLER = """
import asyncio, sys
from harness.peer import Caller

async def main() -> None:
    caller = Caller(sys.argv[1])
    await caller.connect()
    print("connected", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_sigkilled_caller_is_freed_within_ten_seconds(server: Server) -> None:
    asyncio.run(wait_sessions(server.url, 0, timeout_s=10))
    proc = subprocess.Popen(
        [sys.executable, "-c", VANISHING_CALLER, server.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "connected"
        assert health_sync(server.url)["sessions"] == 1
        t0 = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        freed_s = asyncio.run(wait_sessions(server.url, 0, timeout_s=12))
        assert freed_s <= 10, f"freed after {freed_s:.1f} s"
        print(f"SIGKILLed caller freed after {time.monotonic() - t0:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- finding 7 and resume: acting on a call needs its secret ------------------------------------


async def test_resume_continues_the_conversation(server: Server, speech: dict[str, Any]) -> None:
    question = "What time is it?"
    first = Caller(server.url)
    second = Caller(server.url)
    stranger = Caller(server.url)
    try:
        await first.connect()
        result = await first.say(question, speech[question])
        assert result.reply, result
        assert first.session_id

        # A wrong secret gets a fresh call, not someone else's conversation.
        await stranger.connect(resume=(first.session_id, "not-the-secret"))
        assert stranger.session_id != first.session_id
        await stranger.close()

        # The caller's network changed: a new peer connection presents the secret.
        await second.connect(resume=(first.session_id, first.session_secret))
        assert second.session_id == first.session_id
        # The secret stays: a page whose resume attempt fails can present it again.
        assert second.session_secret == first.session_secret
        resumed = await second.wait_event(lambda d: d.get("type") == "resumed", 0.0, 5)
        assert resumed is not None and resumed.data["history_turns"] == 1, second.events
        assert await wait_until(lambda: peer_gone(first), 10), "the old connection stayed up"
        assert (await health(server.url))["sessions"] == 1
        again = await second.say(question, speech[question])
        assert again.reply, again
    finally:
        for caller in (first, second, stranger):
            await caller.close()
    await wait_sessions(server.url, 0, timeout_s=5)


async def test_a_dropped_call_is_parked_and_resumed(tmp_path: Path, speech: dict[str, Any]) -> None:
    question = "What time is it?"
    with run_server(tmp_path, "--media-timeout-s", "2") as srv:
        first = Caller(srv.url)
        second = Caller(srv.url)
        try:
            await first.connect()
            assert (await first.say(question, speech[question])).reply
            await silence_mic(first)  # the network drops; the server ends the call
            await wait_sessions(srv.url, 0, timeout_s=8)
            assert first.session_id
            await second.connect(resume=(first.session_id, first.session_secret))
            assert second.session_id == first.session_id
            resumed = await second.wait_event(lambda d: d.get("type") == "resumed", 0.0, 5)
            assert resumed is not None and resumed.data["history_turns"] == 1
        finally:
            await first.close()
            await second.close()
        assert "call ended: no media" in srv.log()


async def test_authentication_cors_and_whip_options(tmp_path: Path) -> None:
    args = ["--auth-tokens", TOKEN, "--cors-origins", ORIGIN]
    with run_server(tmp_path, *args, log_transcripts=False) as srv:
        sdp = await make_offer_sdp("audio")
        offer = {"sdp": sdp, "type": "offer"}
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            denied = await request("POST", srv.url + "/offer", json=offer, headers=headers)
            assert denied.status == 401, denied
            assert "Bearer" in denied.headers["WWW-Authenticate"]
            assert "authentication" in denied.error
        metrics = await request("GET", srv.url + "/metrics")
        assert metrics.status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await request("GET", srv.url + "/metrics", headers=bearer)).status == 200
        assert (await request("GET", srv.url + "/healthz")).status == 200
        assert (await request("GET", srv.url + "/")).status == 200

        answer = await request("POST", srv.url + "/offer", json=offer, headers=bearer)
        assert answer.status == 200, answer
        session = f"{srv.url}/session/{answer.body['session_id']}"
        assert (await request("DELETE", session, headers=bearer)).status == 404  # not the secret
        ok = await request(
            "DELETE", session, headers={"X-Session-Secret": answer.body["session_secret"]}
        )
        assert ok.status == 200

        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        allowed = await request("OPTIONS", srv.url + "/offer", headers=preflight)
        assert allowed.status == 204 and allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
        other = {**preflight, "Origin": "https://evil.example.test"}
        refused = await request("OPTIONS", srv.url + "/offer", headers=other)
        assert "Access-Control-Allow-Origin" not in refused.headers

        options = await request("OPTIONS", srv.url + "/whip")
        assert options.status == 204 and options.headers["Accept-Post"] == "application/sdp"
        whip_headers = {**bearer, "Content-Type": "application/sdp"}
        created = await request("POST", srv.url + "/whip", data=sdp, headers=whip_headers)
        assert created.status == 201, created
        location = created.headers["Location"]
        session_id = location.split("/")[2]
        patch = await request("PATCH", srv.url + location, headers=bearer)
        assert patch.status == 405 and "DELETE" in patch.headers["Allow"], patch
        wrong = await request("DELETE", f"{srv.url}/whip/{session_id}/guess")
        assert wrong.status == 404
        assert (await request("DELETE", srv.url + location)).status == 200
        await wait_sessions(srv.url, 0, timeout_s=5)
        # The secret never reaches the log; neither does anything a caller said.
        log = srv.log()
        assert location.split("/")[3] not in log
        assert answer.body["session_secret"] not in log
        assert not re.search(r"turn \d+ heard", log)


# --- finding 1: SIGTERM mid-reply ---------------------------------------------------------------

SIGTERM_TRIALS = int(os.environ.get("RINGBACK_SIGTERM_TRIALS", "5"))


def test_the_client_ip_is_the_hop_our_proxy_appended() -> None:
    """Behind a trusted proxy the last X-Forwarded-For hop counts, over every header line: a
    client's own header (sent first) cannot buy it a fresh rate-limit bucket."""
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from signaling.offer import client_address

    spoofed = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.7")])
    request = make_mocked_request("POST", "/offer", headers=spoofed)
    assert client_address(request, trust_forwarded=True) == "203.0.113.7"
    chained = CIMultiDict([("X-Forwarded-For", "6.6.6.6, 203.0.113.8")])
    assert client_address(make_mocked_request("POST", "/offer", headers=chained), True) == (
        "203.0.113.8"
    )
    # Not trusted: the header is ignored altogether.
    assert client_address(request, trust_forwarded=False) != "203.0.113.7"
