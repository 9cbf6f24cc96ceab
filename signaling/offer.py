"""Offer/answer endpoints: validate the offer, answer it, or say clearly what is wrong.

    POST /offer   {"sdp": "...", "type": "offer"}  →  200 {"sdp", "type": "answer", "session_id"}
    POST /whip    application/sdp offer (WHIP, RFC 9725) →  201 application/sdp answer,
                  Location: /whip/{session_id} (DELETE it to hang up)

Errors are JSON {"error": "..."}: 400 malformed JSON / missing fields / unparsable SDP,
413 body over the limit, 415 wrong content type, 422 no audio m-line or no common audio
codec, 503 + Retry-After at capacity.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription

from signaling.peers import Call, CallRegistry, CapacityError, OfferRejected

log = logging.getLogger(__name__)

SUPPORTED_AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722"})


class OfferError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def check_offer_sdp(sdp: str) -> None:
    """Reject offers aiortc cannot serve as a voice call, with a reason a developer can act on."""
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError(400, "unparsable SDP: it must start with 'v=0'")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferError(400, f"unparsable SDP: {exc}") from exc
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


async def parse_offer(request: web.Request) -> RTCSessionDescription:
    if request.content_type != "application/json":
        raise OfferError(415, "send the offer as application/json")
    raw = await request.read()  # raises 413 past client_max_size
    try:
        body: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OfferError(400, f"malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise OfferError(400, "the body must be a JSON object with 'sdp' and 'type'")
    sdp, kind = body.get("sdp"), body.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError(400, "missing field 'sdp' (a string)")
    if kind != "offer":
        raise OfferError(400, "field 'type' must be 'offer'")
    check_offer_sdp(sdp)
    return RTCSessionDescription(sdp=sdp, type="offer")


async def parse_whip_offer(request: web.Request) -> RTCSessionDescription:
    if request.content_type != "application/sdp":
        raise OfferError(415, "send the offer as application/sdp (WHIP, RFC 9725)")
    raw = await request.read()  # raises 413 past client_max_size
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OfferError(400, f"unparsable SDP: not UTF-8 ({exc})") from exc
    check_offer_sdp(sdp)
    return RTCSessionDescription(sdp=sdp, type="offer")


async def handle_offer(
    request: web.Request, registry: CallRegistry, retry_after_s: int
) -> web.Response:
    def respond(answer: RTCSessionDescription, call: Call) -> web.Response:
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": call.id})

    return await _negotiate(request, registry, retry_after_s, parse_offer, respond)


async def handle_whip(
    request: web.Request, registry: CallRegistry, retry_after_s: int
) -> web.Response:
    def respond(answer: RTCSessionDescription, call: Call) -> web.Response:
        return web.Response(
            status=201,
            text=answer.sdp,
            content_type="application/sdp",
            headers={"Location": f"/whip/{call.id}"},
        )

    return await _negotiate(request, registry, retry_after_s, parse_whip_offer, respond)


async def _negotiate(
    request: web.Request,
    registry: CallRegistry,
    retry_after_s: int,
    parse: Callable[[web.Request], Awaitable[RTCSessionDescription]],
    respond: Callable[[RTCSessionDescription, Call], web.Response],
) -> web.Response:
    try:
        offer = await parse(request)
        if registry.full:
            raise CapacityError
        answer, call = await registry.open(offer)
    except OfferError as exc:
        log.info("offer rejected (%d): %s", exc.status, exc)
        return json_error(exc.status, str(exc))
    except CapacityError:
        log.warning("offer rejected: at capacity (%d sessions)", len(registry.calls))
        return json_error(
            503, "server busy: too many calls", headers={"Retry-After": str(retry_after_s)}
        )
    except OfferRejected as exc:
        log.info("offer rejected by the WebRTC stack: %s", exc)
        return json_error(400, f"SDP rejected by the WebRTC stack: {exc}")
    return respond(answer, call)
