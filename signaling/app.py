"""create_app(config): routes, static page, and the lifecycle of engines and calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from agent.call import logctx
from agent.call.engines import Engines
from agent.call.loop_lag import LoopLagMonitor
from agent.call.stats import ServerStats
from agent.clock import Clock, MonotonicClock
from agent.engines.pocketsphinx_asr import default_processes
from agent.media import patches
from signaling import guard, observe
from signaling.agent_check import serve_agent_check
from signaling.config import ServerConfig
from signaling.cpu_busy import CpuMonitor
from signaling.guard import SESSION_HEADER, json_error
from signaling.headroom import Headroom
from signaling.offer import handle_offer, handle_whip
from signaling.peers import CallRegistry

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", ServerConfig)
REGISTRY = web.AppKey("registry", CallRegistry)
HEADROOM = web.AppKey("headroom", Headroom)


def create_app(config: ServerConfig, clock: Clock | None = None) -> web.Application:
    guard.install_log_filters()
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=guard.middlewares(config)
    )
    app[CONFIG] = config
    the_clock = clock or MonotonicClock()

    async def aiortc_patches(app: web.Application) -> AsyncIterator[None]:
        agent = config.agent
        with patches.install(agent.receive_path, agent.opus_send, config.ice_host_addresses):
            yield

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engines = await Engines.start(config.agent)
        try:
            stats = ServerStats()
            registry = CallRegistry(config, engines, the_clock, stats)
            stats.bind(lambda: len(registry.calls), lambda: registry.total_started,
                       config.max_sessions)  # fmt: skip
            stats.bind_engines(lambda: engines.llm.breakers, lambda: engines.tts.restarts)
            app[REGISTRY] = registry
            headroom = Headroom(config.headroom, started_at=the_clock.now())
            app[HEADROOM] = headroom
            stats.registry.register(observe.HeadroomCollector(headroom))
            stats.watch_queue_waits(
                lambda engine, wait_s: headroom.observe_wait(the_clock.now(), engine, wait_s)
            )

            def loop_lag(worst_s: float, samples: list[float]) -> None:
                stats.record_loop_lag(worst_s, samples)
                headroom.observe_loop_lag(the_clock.now(), samples)

            refusing = False  # as last logged: offers change the state too

            def cpu_busy(now: float, busy: float) -> None:
                nonlocal refusing
                headroom.observe_cpu(now, busy)
                decision = headroom.decide(now, len(registry.calls))  # the gauges, the log
                if headroom.refusing != refusing:
                    refusing = headroom.refusing
                    log.info(
                        "admission: %s (%d calls; %s; %s)",
                        "no headroom, new calls refused" if refusing else "headroom back",
                        len(registry.calls),
                        headroom.reason if refusing else "every signal under its limit",
                        decision.summary(),
                    )

            loop = asyncio.get_running_loop()
            lag = loop.create_task(LoopLagMonitor(the_clock, loop_lag).run(), name="loop-lag")
            cpu = loop.create_task(
                CpuMonitor(the_clock, cpu_busy, default_processes()).run(), name="cpu-busy"
            )
            agent = None
            if config.agent_check_port:
                agent = await serve_agent_check(
                    config.host, config.agent_check_port, lambda: stats.load
                )
            try:
                yield
            finally:
                if agent is not None:
                    agent.close()
                lag.cancel()
                cpu.cancel()
                await asyncio.gather(lag, cpu, return_exceptions=True)
                await registry.close_all()
        finally:
            await engines.aclose()

    app.cleanup_ctx.append(aiortc_patches)  # before any peer connection; undone after the last
    app.cleanup_ctx.append(lifecycle)

    async def announce_shutdown(app: web.Application) -> None:
        if REGISTRY not in app:
            return
        registry = app[REGISTRY]
        registry.draining = True  # offers still in flight get 503 too
        if registry.calls:
            # A third of the deadline for the goodbye; the rest ends calls and engines.
            await registry.announce_shutdown(config.shutdown_deadline_s / 3)
            await asyncio.sleep(0.2)  # the last audio and the event reach the callers

    app.on_shutdown.append(announce_shutdown)

    async def offer(request: web.Request) -> web.Response:
        return await handle_offer(request, request.app[REGISTRY], request.app[HEADROOM])

    async def whip(request: web.Request) -> web.Response:
        return await handle_whip(request, request.app[REGISTRY], request.app[HEADROOM])

    async def hang_up(request: web.Request) -> web.Response:
        """DELETE /session/{id} with X-Session-Secret, or the WHIP resource URL."""
        secret = request.match_info.get("secret") or request.headers.get(SESSION_HEADER) or ""
        session_id = request.match_info["session_id"]
        if await request.app[REGISTRY].hang_up(session_id, secret):
            logctx.bind(session_id)  # its access log line names the call (only if it was one)
            return web.json_response({"status": "hung up"})
        # Unknown id and wrong secret look the same: an id alone reveals nothing.
        return json_error(404, "no such session (or not yours)")

    async def whip_options(request: web.Request) -> web.Response:
        return web.Response(
            status=204, headers={"Accept-Post": "application/sdp", "Allow": "POST, OPTIONS"}
        )

    async def whip_patch(request: web.Request) -> web.Response:
        # RFC 9725 §4.3.1: a session without trickle ICE and ICE restarts answers PATCH 405.
        # aiortc gathers every candidate before answering and cannot restart ICE.
        return json_error(
            405,
            "trickle ICE and ICE restarts are not supported: the answer holds every candidate",
            headers={"Allow": "DELETE"},
        )

    async def healthz(request: web.Request) -> web.Response:
        registry = request.app[REGISTRY]
        return web.json_response(
            {
                "status": "ok",
                "sessions": len(registry.calls),
                "max_sessions": config.max_sessions,
                "calls_started": registry.total_started,
                "tasks": len(asyncio.all_tasks()),  # a leak shows here first (bench/soak.py)
                "load": registry.stats.load,
            }
        )

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(config.static_dir / "index.html")

    expect = guard.expect_handler(config.max_body_bytes)
    app.router.add_post("/offer", offer, expect_handler=expect)
    app.router.add_delete("/session/{session_id}", hang_up)
    app.router.add_post("/whip", whip, expect_handler=expect)
    app.router.add_route("OPTIONS", "/whip", whip_options)
    app.router.add_delete("/whip/{session_id}/{secret}", hang_up)
    app.router.add_patch("/whip/{session_id}/{secret}", whip_patch)
    app.router.add_get("/healthz", healthz)
    app.router.add_routes(observe.routes(lambda request: request.app[REGISTRY]))
    app.router.add_get("/", index)
    app.router.add_static("/static/", config.static_dir)
    return app
