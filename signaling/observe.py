"""Observability routes: `GET /metrics` (Prometheus text), `GET /sessions`, `/sessions/{id}`.

`/sessions` lists the live calls and the parked ones: a call the network dropped stays
resumable for a while (peers.py), shown with `state: "parked"` and `resume_within_s`.
`turns` counts the conversation's turns, those kept from before a resume included.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from signaling.guard import json_error
from signaling.peers import Call, CallRegistry, ParkedCall

RegistryOf = Callable[[web.Request], CallRegistry]


def session_info(call: Call) -> dict[str, object]:
    """One call as `/sessions` shows it: state, turns and the latest link report."""
    session = call.session
    return {
        "session_id": call.id,
        "connection": call.pc.connectionState,
        "state": str(session.turns.state),
        "turns": session.turns_total,
        "retracted": session.turns.retracted,
        "link": session.link.as_event() if session.link is not None else None,
    }


def parked_info(parked: ParkedCall) -> dict[str, object]:
    """A dropped call waiting to be resumed, in the shape of `session_info`."""
    return {
        "session_id": parked.id,
        "connection": "closed",
        "state": "parked",
        "turns": parked.turns,
        "dropped": parked.reason,
        "resume_within_s": parked.resume_within_s,
        "link": None,
    }


def routes(registry_of: RegistryOf) -> list[web.RouteDef]:
    async def metrics(request: web.Request) -> web.Response:
        body = registry_of(request).stats.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def sessions(request: web.Request) -> web.Response:
        registry = registry_of(request)
        live = [session_info(c) for c in registry.calls.values()]
        parked = [parked_info(p) for p in registry.parked() if p.id not in registry.calls]
        return web.json_response({"sessions": live + parked})

    async def one_session(request: web.Request) -> web.Response:
        registry = registry_of(request)
        session_id = request.match_info["session_id"]
        call = registry.calls.get(session_id)
        if call is not None:
            return web.json_response(session_info(call))
        parked = next((p for p in registry.parked() if p.id == session_id), None)
        if parked is None:
            return json_error(404, "no such session")
        return web.json_response(parked_info(parked))

    return [
        web.get("/metrics", metrics),
        web.get("/sessions", sessions),
        web.get("/sessions/{session_id}", one_session),
    ]
