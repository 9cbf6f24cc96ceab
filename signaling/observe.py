"""Observability routes: `GET /metrics` (Prometheus text), `GET /sessions`, `/sessions/{id}`.

`/sessions` lists the live calls and the parked ones: a call the network dropped stays
resumable for a while (peers.py), shown with `state: "parked"` and `resume_within_s`.
`turns` counts the conversation's turns, those kept from before a resume included. The
admission headroom's inputs and state are metrics too (`HeadroomCollector`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from signaling.guard import json_error
from signaling.headroom import Headroom, Signal
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
        "tools": list(session.tool_events),  # the latest tool calls and their outcomes
    }


class HeadroomCollector(Collector):
    """The last headroom decision (refreshed about once a second), read at scrape time."""

    def __init__(self, headroom: Headroom) -> None:
        self._headroom = headroom

    def collect(self) -> Iterable[Metric]:
        h = self._headroom
        decision, config = h.last, h.config
        admitting = Metric(
            "ringback_admission_headroom_admitting",
            "1 while new calls are admitted by measured headroom, 0 while refused (503).",
            "gauge",
        )
        admitting.add_sample(admitting.name, {}, 0.0 if h.refusing else 1.0)
        value = Metric(
            "ringback_admission_headroom_signal",
            "Headroom inputs over the recent window (NaN: too few samples yet); cpu is "
            "projected for one more call, as a fraction of the cores.",
            "gauge",
        )
        limit = Metric("ringback_admission_headroom_limit", "Each headroom input's limit.", "gauge")
        for signal in Signal:
            v = decision.values.get(signal)
            value.add_sample(value.name, {"signal": signal}, float("nan") if v is None else v)
            limit.add_sample(limit.name, {"signal": signal}, config.limit(signal))
        return [admitting, value, limit]


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
