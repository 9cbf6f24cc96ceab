"""Observability routes: `GET /metrics` (Prometheus text), `GET /sessions`, `/sessions/{id}`."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from signaling.guard import json_error
from signaling.peers import Call, CallRegistry

RegistryOf = Callable[[web.Request], CallRegistry]


def session_info(call: Call) -> dict[str, object]:
    """One call as `/sessions` shows it: state, turns and the latest link report."""
    session = call.session
    return {
        "session_id": call.id,
        "connection": call.pc.connectionState,
        "state": str(session.turns.state),
        "turns": session.turns.turns_completed,
        "retracted": session.turns.retracted,
        "link": session.link.as_event() if session.link is not None else None,
        "tools": list(session.tool_events),  # the latest tool calls and their outcomes
    }


def routes(registry_of: RegistryOf) -> list[web.RouteDef]:
    async def metrics(request: web.Request) -> web.Response:
        body = registry_of(request).stats.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def sessions(request: web.Request) -> web.Response:
        calls = list(registry_of(request).calls.values())
        return web.json_response({"sessions": [session_info(c) for c in calls]})

    async def one_session(request: web.Request) -> web.Response:
        call = registry_of(request).calls.get(request.match_info["session_id"])
        if call is None:
            return json_error(404, "no such session")
        return web.json_response(session_info(call))

    return [
        web.get("/metrics", metrics),
        web.get("/sessions", sessions),
        web.get("/sessions/{session_id}", one_session),
    ]
