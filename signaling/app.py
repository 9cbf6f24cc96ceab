"""create_app(config): routes, static page, and the lifecycle of engines and calls."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from agent.call.engines import Engines
from agent.call.stats import ServerStats
from agent.clock import Clock, MonotonicClock
from agent.media import patches
from signaling.config import ServerConfig
from signaling.offer import handle_offer, handle_whip, json_error
from signaling.peers import CallRegistry

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", ServerConfig)
REGISTRY = web.AppKey("registry", CallRegistry)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors on API routes as JSON {"error"}, including aiohttp's own 413/404/405."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if request.path == "/" or request.path.startswith("/static") or exc.status < 400:
            raise
        if exc.status == 413:
            limit = request.app[CONFIG].max_body_bytes
            return json_error(413, f"request body too large: the limit is {limit} bytes")
        return json_error(exc.status, exc.reason or "error")


def create_app(config: ServerConfig, clock: Clock | None = None) -> web.Application:
    patches.install(
        config.agent.receive_path, config.agent.opus_send, config.ice_host_addresses
    )
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[json_errors])
    app[CONFIG] = config
    the_clock = clock or MonotonicClock()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engines = await Engines.start(config.agent)
        try:
            registry = CallRegistry(config, engines, the_clock, ServerStats())
            app[REGISTRY] = registry
            try:
                yield
            finally:
                await registry.close_all()
        finally:
            await engines.aclose()

    app.cleanup_ctx.append(lifecycle)

    async def offer(request: web.Request) -> web.Response:
        return await handle_offer(request, request.app[REGISTRY], config.retry_after_s)

    async def whip(request: web.Request) -> web.Response:
        return await handle_whip(request, request.app[REGISTRY], config.retry_after_s)

    async def hang_up(request: web.Request) -> web.Response:
        if await request.app[REGISTRY].hang_up(request.match_info["session_id"]):
            return web.json_response({"status": "hung up"})
        return json_error(404, "no such session")

    async def healthz(request: web.Request) -> web.Response:
        registry = request.app[REGISTRY]
        return web.json_response(
            {
                "status": "ok",
                "sessions": len(registry.calls),
                "max_sessions": config.max_sessions,
                "calls_started": registry.total_started,
            }
        )

    async def metrics(request: web.Request) -> web.Response:
        registry = request.app[REGISTRY]
        text = registry.stats.prometheus(len(registry.calls), registry.total_started)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(config.static_dir / "index.html")

    app.router.add_post("/offer", offer)
    app.router.add_delete("/session/{session_id}", hang_up)
    app.router.add_post("/whip", whip)
    app.router.add_delete("/whip/{session_id}", hang_up)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_static("/static/", config.static_dir)
    return app
