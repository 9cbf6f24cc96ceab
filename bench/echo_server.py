"""Transport-only peer for bench.capacity: answers `POST /offer` and sends each caller's audio
straight back (aiortc decode + re-encode, no speech pipeline), so the cost of WebRTC itself
can be compared with a full-pipeline call on the same machine.

    python -m bench.echo_server --port 8766

It speaks just enough of ringback's API for harness.peer.Caller: the answer carries a
`session_id`, the `events` channel gets `ready`, `GET /healthz` and `DELETE /session/{id}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys

from aiohttp import web
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from agent.media import patches
from agent.media.opus import OpusSendConfig

log = logging.getLogger(__name__)

PEERS = web.AppKey("peers", dict[str, RTCPeerConnection])


def create_app() -> web.Application:
    app = web.Application()
    app[PEERS] = {}

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session_id = secrets.token_urlsafe(9)
        request.app[PEERS][session_id] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                pc.addTrack(track)  # the caller's own audio, re-encoded, straight back

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            channel.send(json.dumps({"type": "ready"}))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                request.app[PEERS].pop(session_id, None)
                await pc.close()

        await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session_id})

    async def hang_up(request: web.Request) -> web.Response:
        pc = request.app[PEERS].pop(request.match_info["session_id"], None)
        if pc is None:
            return web.json_response({"error": "no such session"}, status=404)
        await pc.close()
        return web.json_response({"status": "hung up"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(request.app[PEERS])})

    async def close_all(app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in app[PEERS].values()))

    app.on_shutdown.append(close_all)
    app.router.add_post("/offer", offer)
    app.router.add_delete("/session/{session_id}", hang_up)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with patches.install("aiortc", OpusSendConfig(), ["127.0.0.1"]):  # loopback host candidates
        web.run_app(create_app(), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
