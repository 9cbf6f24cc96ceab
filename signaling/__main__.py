"""`ringback` CLI: `serve` runs the agent server, `call` places a headless test call.

Every `serve` flag has a RINGBACK_* environment variable (flag wins); all are declared in
signaling/settings.py and listed in docs/configuration.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from aiohttp import web

from agent.call import logctx
from signaling import settings
from signaling.config import ServerConfig

log = logging.getLogger("signaling")
IDLE_CONNECTION_S = 10.0  # a connection with no complete request this long is closed


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The `serve` flags, declared in signaling.settings; exits on a bad RINGBACK_* value."""
    try:
        settings.add_arguments(p)
    except settings.SettingError as exc:
        raise SystemExit(f"ringback: {exc}") from None


def server_config(a: argparse.Namespace) -> ServerConfig:
    """The typed config from parsed `serve` flags (ValueError naming the flags if invalid)."""
    return settings.build(vars(a))


def serve(a: argparse.Namespace, serve_argv: Sequence[str] = ()) -> int:
    from signaling.app import create_app

    try:
        config = server_config(a)
    except ValueError as exc:
        raise SystemExit(f"ringback: {exc}") from None
    if config.workers > 1:
        from signaling.workers import create_front_app

        front = create_front_app(serve_argv, config)
        return asyncio.run(run_until_signalled(front, config))
    return asyncio.run(run_until_signalled(create_app(config), config))


async def run_until_signalled(app: web.Application, config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT, then drain; the process is gone within the deadline.

    Shutdown: stop accepting, tell every caller (a `shutdown` event), end the calls, close
    the engines. A watchdog thread exits the process (status 0) if any of it hangs.
    """
    from signaling.guard import AccessLogger

    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        shutdown_timeout=config.shutdown_deadline_s / 2,
        # aiohttp's keep-alive timer also runs while a request's headers are incomplete: it
        # closes idle and trickling (slowloris) connections alike.
        keepalive_timeout=IDLE_CONNECTION_S,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the engines load: a SIGTERM then
        loop.add_signal_handler(sig, stop.set)  # is a clean exit too
    starting = loop.create_task(runner.setup(), name="setup")  # loads the engines
    stopping = loop.create_task(stop.wait(), name="wait-for-signal")
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("signal during start-up: stopping")
        _exit_after(config.shutdown_deadline_s)
        starting.cancel()
        await asyncio.wait({starting})
        stopping.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(config.shutdown_deadline_s - 0.5):
                await runner.cleanup()
        return 0
    starting.result()  # start-up failed: raise why
    await web.TCPSite(runner, config.host, config.port).start()
    print(f"ringback: open http://localhost:{config.port} and click Call", flush=True)
    await stopping
    log.info("shutting down: %.0f s to end every call", config.shutdown_deadline_s)
    _exit_after(config.shutdown_deadline_s)
    try:
        async with asyncio.timeout(config.shutdown_deadline_s - 0.5):
            await runner.cleanup()
    except TimeoutError:
        log.warning("shutdown overran its deadline: exiting anyway")
        _flush_and_exit()
    log.info("shut down cleanly")
    return 0


def _exit_after(deadline_s: float) -> None:
    """Exit with status 0 after `deadline_s` whatever the event loop is stuck on."""
    timer = threading.Timer(deadline_s, _flush_and_exit)
    timer.daemon = True
    timer.start()


def _flush_and_exit() -> None:
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ringback", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser(
        "serve",
        help="run the voice agent server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Every flag also reads RINGBACK_<FLAG> from the environment "
        "(e.g. --max-sessions ← RINGBACK_MAX_SESSIONS); a flag given wins. "
        "Reference: docs/configuration.md.",
    )
    add_serve_args(p_serve)
    p_call = sub.add_parser(
        "call",
        help="call an agent with a headless WebRTC peer",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from harness.cli import add_call_args

    add_call_args(p_call)
    args = parser.parse_args(argv)
    # Every line names its call (`[session id]`, "-" outside one): workers run this too.
    logctx.configure(getattr(args, "log_level", "INFO"))
    logging.getLogger("aioice").setLevel(logging.WARNING)
    if args.command == "serve":
        raw = list(argv) if argv is not None else sys.argv[1:]
        return serve(args, raw[raw.index("serve") + 1 :])
    from harness.cli import run_call

    return asyncio.run(run_call(args))


if __name__ == "__main__":
    sys.exit(main())
