"""Offer/answer endpoints: validate the offer, answer it, or say clearly what is wrong.

    POST /offer   {"sdp": "...", "type": "offer"[, "resume": {"session_id", "session_secret"}]
                   [, "context": {...}]}   (a JSON object of at most 4 KiB, for the agent)
                  →  200 {"sdp", "type": "answer", "session_id", "session_secret", "resumed"}
    POST /whip    application/sdp offer (WHIP, RFC 9725) →  201 application/sdp answer,
                  Location: /whip/{session_id}/{session_secret} (DELETE it to hang up)

Errors are JSON {"error": "..."}: 400 malformed JSON / body / missing fields / unparsable
SDP, 408 body not received within 5 s, 413 body over the limit, 415 wrong content type,
422 no audio m-line or no common audio codec, 429 + Retry-After for a client over its offer
rate or its calls still connecting, 503 + Retry-After at capacity or while shutting down, and
503 + Retry-After + {"retry_after_ms"} when the measured headroom has no room for one more call
(signaling/headroom.py) — decided before any peer connection exists; the resume of a call is
never refused for headroom (it was admitted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription

from agent.call import logctx
from agent.call.logctx import escape
from signaling.admission import Refused
from signaling.guard import BODY_TIMEOUT_S, json_error
from signaling.headroom import Decision, Headroom
from signaling.peers import (
    Call,
    CallRegistry,
    CapacityError,
    OfferRejected,
    Resume,
    ShuttingDown,
)

log = logging.getLogger(__name__)

SUPPORTED_AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722"})
MAX_CONTEXT_BYTES = 4096  # the offer's `context` object, as compact JSON
CONTEXT_KEY = "context"  # where parse_offer leaves it on the request


class OfferError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_offer_sdp(sdp: str) -> None:
    """Reject offers aiortc cannot serve as a voice call, with a reason a developer can act on."""
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError(400, "unparsable SDP: it must start with 'v=0'")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferError(400, f"unparsable SDP: {exc}") from exc
    mids = {m.rtp.muxId for m in desc.media}
    for group in desc.group:
        bundled = {str(item) for item in group.items}
        if group.semantic == "BUNDLE" and not bundled <= mids:
            missing = sorted(bundled - mids)
            raise OfferError(400, f"a=group:BUNDLE names mids no m-line has: {missing}")
    audio = [m for m in desc.media if m.kind == "audio" and m.port != 0]
    if not audio:
        raise OfferError(422, "the offer has no (enabled) audio m-line")
    for m in desc.media:
        # aiortc checks these only once ICE/DTLS start, failing the call long after answering.
        ice = m.ice
        if not (ice and ice.usernameFragment and ice.password):
            raise OfferError(
                400, f"SDP {m.kind} m-line has no ICE credentials (a=ice-ufrag/ice-pwd)"
            )
        if m.dtls is None:  # aiortc drops the DTLS parameters when a=setup is missing
            raise OfferError(400, f"SDP {m.kind} m-line has no DTLS role (a=setup)")
        if not m.dtls.fingerprints:
            raise OfferError(400, f"SDP {m.kind} m-line has no DTLS fingerprint (a=fingerprint)")
    if all(m.direction in ("inactive", "recvonly") for m in audio):
        raise OfferError(
            422, "the offer sends no audio: its audio direction must be sendrecv or sendonly"
        )
    offered = {c.mimeType.split("/")[-1].lower() for m in audio for c in m.rtp.codecs}
    if not offered & SUPPORTED_AUDIO_CODECS:
        raise OfferError(
            422,
            f"no common audio codec: offered {sorted(offered) or 'none'}, "
            f"supported {sorted(SUPPORTED_AUDIO_CODECS)}",
        )


async def read_body(request: web.Request) -> bytes:
    """The request body, or an OfferError for one that cannot be read (413 past the limit)."""
    try:
        # Bounded: a client that trickles its body (or a body aiohttp's decoder stalls on,
        # like a long non-deflate body sent as deflate) must not hold the handler.
        async with asyncio.timeout(BODY_TIMEOUT_S):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise
    except RequestPayloadError as exc:  # e.g. Content-Encoding: gzip over a body that is not
        raise OfferError(400, f"unreadable body: {' '.join(str(exc).split())}") from exc
    except TimeoutError:
        raise OfferError(408, f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s") from None


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise OfferError(400, "malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit integer
        raise OfferError(400, f"malformed JSON: {str(exc)[:200]}") from None


async def parse_offer(request: web.Request) -> tuple[RTCSessionDescription, Resume | None]:
    if request.content_type != "application/json":
        raise OfferError(415, "send the offer as application/json")
    body = parse_json(await read_body(request))
    if not isinstance(body, dict):
        raise OfferError(400, "the body must be a JSON object with 'sdp' and 'type'")
    sdp, kind = body.get("sdp"), body.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError(400, "missing field 'sdp' (a string)")
    if kind != "offer":
        raise OfferError(400, "field 'type' must be 'offer'")
    check_offer_sdp(sdp)
    request[CONTEXT_KEY] = parse_context(body)
    return RTCSessionDescription(sdp=sdp, type="offer"), parse_resume(body)


def parse_context(body: dict[str, Any]) -> dict[str, Any] | None:
    """The offer's `context`: a JSON object for the agent's prompt and tools (or None)."""
    context = body.get("context")
    if context is None:
        return None
    if not isinstance(context, dict):
        raise OfferError(400, "'context' must be a JSON object")
    size = len(json.dumps(context, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_CONTEXT_BYTES:
        raise OfferError(400, f"'context' is {size} bytes, over the {MAX_CONTEXT_BYTES} limit")
    return context


async def parse_whip_offer(request: web.Request) -> RTCSessionDescription:
    if request.content_type != "application/sdp":
        raise OfferError(415, "send the offer as application/sdp (WHIP, RFC 9725)")
    raw = await read_body(request)
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OfferError(400, f"unparsable SDP: not UTF-8 ({exc})") from exc
    check_offer_sdp(sdp)
    return RTCSessionDescription(sdp=sdp, type="offer")


def client_address(request: web.Request, trust_forwarded: bool) -> str:
    """The caller's IP: the peer's address, or the nearest X-Forwarded-For hop behind a proxy."""
    if trust_forwarded:
        # The last hop is the one our own proxy appended; anything before it came from the
        # client (every X-Forwarded-For line counts: a client may send its own).
        chain = ",".join(request.headers.getall("X-Forwarded-For", []))
        hops = [h.strip() for h in chain.split(",")]
        if hops[-1]:
            return hops[-1]
    return request.remote or "unknown"


def parse_resume(body: dict[str, Any]) -> Resume | None:
    resume = body.get("resume")
    if resume is None:
        return None
    if not isinstance(resume, dict):
        raise OfferError(400, "'resume' must be an object with 'session_id' and 'session_secret'")
    session_id, secret = resume.get("session_id"), resume.get("session_secret")
    if not (isinstance(session_id, str) and isinstance(secret, str) and session_id and secret):
        raise OfferError(400, "'resume' needs 'session_id' and 'session_secret' (strings)")
    return Resume(session_id, secret)


class NoHeadroom(Exception):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


def check_headroom(headroom: Headroom, registry: CallRegistry, resume: Resume | None) -> None:
    """Raise NoHeadroom if one more call would push the admitted ones over their budget."""
    # A resume that names a live or parked call continues an admitted call: no new load.
    if resume is not None and registry._resumable(resume) is not None:
        return
    now = registry.clock.now()
    decision = headroom.decide(now, len(registry.calls))
    if decision.admit:
        return
    headroom.refuse()
    if unlogged := headroom.refusals_to_log(now):
        log.info(
            "offers refused (503, no headroom): %d since the last line; %s; retry after %.1f s",
            unlogged,
            decision.reason,
            decision.retry_after_s,
        )
    raise NoHeadroom(decision)


async def handle_offer(
    request: web.Request, registry: CallRegistry, headroom: Headroom | None = None
) -> web.Response:
    def respond(answer: RTCSessionDescription, call: Call) -> web.Response:
        return web.json_response(
            {
                "sdp": answer.sdp,
                "type": answer.type,
                "session_id": call.id,
                "session_secret": call.secret,
                "resumed": call.resumed,
            }
        )

    return await _negotiate(request, registry, parse_offer, respond, headroom)


async def handle_whip(
    request: web.Request, registry: CallRegistry, headroom: Headroom | None = None
) -> web.Response:
    def respond(answer: RTCSessionDescription, call: Call) -> web.Response:
        return web.Response(
            status=201,
            text=answer.sdp,
            content_type="application/sdp",
            # The resource URL is the call's capability: its secret is part of it.
            headers={"Location": whip_resource(call)},
        )

    async def parse(request: web.Request) -> tuple[RTCSessionDescription, Resume | None]:
        return await parse_whip_offer(request), None

    return await _negotiate(request, registry, parse, respond, headroom)


def whip_resource(call: Call) -> str:
    return f"/whip/{call.id}/{call.secret}"


async def _negotiate(
    request: web.Request,
    registry: CallRegistry,
    parse: Callable[[web.Request], Awaitable[tuple[RTCSessionDescription, Resume | None]]],
    respond: Callable[[RTCSessionDescription, Call], web.Response],
    headroom: Headroom | None = None,
) -> web.Response:
    retry_after = str(registry.config.retry_after_s)
    client = client_address(request, registry.config.trust_forwarded)
    refused = registry.stats.admission_refused
    try:
        offer, resume = await parse(request)
        registry.admit(client)
        if headroom is not None:
            check_headroom(headroom, registry, resume)
        answer, call = await registry.open(offer, client, resume, request.get(CONTEXT_KEY))
    except OfferError as exc:
        log.info("offer rejected (%d): %s", exc.status, escape(exc))
        return json_error(exc.status, str(exc))
    except Refused as exc:
        refused.labels("rate").inc()
        log.info("offer refused (429) for %s: %s", escape(client, 60), exc)
        return json_error(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    except ShuttingDown:
        refused.labels("draining").inc()
        return json_error(
            503, "server shutting down: call again shortly", headers={"Retry-After": retry_after}
        )
    except NoHeadroom as exc:
        refused.labels("headroom").inc()
        wait_s = exc.decision.retry_after_s
        return web.json_response(
            {
                "error": "server busy: no room for another call right now",
                "retry_after_ms": math.ceil(wait_s * 1000),
            },
            status=503,
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )
    except CapacityError:
        refused.labels("capacity").inc()
        log.warning("offer rejected: at capacity (%d sessions)", len(registry.calls))
        return json_error(503, "server busy: too many calls", headers={"Retry-After": retry_after})
    except OfferRejected as exc:
        log.info("offer rejected by the WebRTC stack: %s", escape(exc))
        return json_error(400, f"SDP rejected by the WebRTC stack: {exc}")
    logctx.bind(call.id)  # the rest of this request (its access log line) names the call
    return respond(answer, call)
