"""`ringback` CLI: `serve` runs the agent server, `call` places a headless test call.

Every `serve` flag has a RINGBACK_* environment variable (flag wins); see README.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from agent.config import AgentConfig
from agent.engines.registry import LLM_ENGINES, TTS_ENGINES
from agent.metrics import DEFAULT_BUDGETS_MS, STAGES
from agent.tts import TtsPoolConfig
from agent.turns import TurnConfig
from agent.vad import EndpointerConfig
from signaling.config import IceServer, ServerConfig

T = TypeVar("T")


def env(name: str, default: T, cast: Callable[[str], T]) -> T:
    raw = os.environ.get(f"RINGBACK_{name}")
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"invalid RINGBACK_{name}={raw!r}") from None


def parse_budgets(text: str) -> dict[str, float]:
    budgets = dict(DEFAULT_BUDGETS_MS)
    for item in filter(None, (p.strip() for p in text.split(","))):
        stage, _, value = item.partition("=")
        if stage not in STAGES:
            raise ValueError(f"unknown budget stage {stage!r} (one of {', '.join(STAGES)})")
        budgets[stage] = float(value)
    return budgets


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_serve_args(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    e = EndpointerConfig()
    p.add_argument("--host", default=env("HOST", d.host, str))
    p.add_argument("--port", type=int, default=env("PORT", d.port, int))
    p.add_argument("--max-sessions", type=int, default=env("MAX_SESSIONS", d.max_sessions, int))
    p.add_argument("--max-call-s", type=float, default=env("MAX_CALL_S", d.max_call_s, float))
    p.add_argument(
        "--max-body-bytes", type=int, default=env("MAX_BODY_BYTES", d.max_body_bytes, int)
    )
    p.add_argument(
        "--ice-servers",
        default=env("ICE_SERVERS", "", str),
        help="comma-separated STUN/TURN URLs (default: none, host candidates only)",
    )
    p.add_argument("--ice-username", default=env("ICE_USERNAME", "", str))
    p.add_argument("--ice-credential", default=env("ICE_CREDENTIAL", "", str))
    p.add_argument(
        "--ice-host",
        default=env("ICE_HOST", "", str),
        help="comma-separated addresses to advertise as ICE host candidates (e.g. 127.0.0.1)",
    )
    p.add_argument("--llm", choices=LLM_ENGINES, default=env("LLM", "local", str))
    p.add_argument("--tts", choices=TTS_ENGINES, default=env("TTS", "piper", str))
    p.add_argument("--tts-voice", default=env("TTS_VOICE", "", str))
    p.add_argument("--tts-workers", type=int, default=env("TTS_WORKERS", 2, int))
    p.add_argument("--vad-aggressiveness", type=int, default=env("VAD_AGGRESSIVENESS", 2, int))
    p.add_argument("--min-speech-ms", type=int, default=env("MIN_SPEECH_MS", e.min_speech_ms, int))
    p.add_argument(
        "--eou-silence-ms", type=int, default=env("EOU_SILENCE_MS", e.eou_silence_ms, int)
    )
    p.add_argument("--speculate-ms", type=int, default=env("SPECULATE_MS", e.speculate_ms, int))
    p.add_argument(
        "--no-speculation", action="store_true", default=env("NO_SPECULATION", False, _bool)
    )
    p.add_argument("--system-prompt", default=env("SYSTEM_PROMPT", "", str))
    p.add_argument(
        "--budgets",
        default=env("BUDGETS", "", str),
        help="latency budgets, e.g. time_to_first_audio_ms=800,llm_first_token_ms=500",
    )
    p.add_argument("--log-level", default=env("LOG_LEVEL", "INFO", str))


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def server_config(a: argparse.Namespace) -> ServerConfig:
    ice = tuple(
        IceServer(url, a.ice_username or None, a.ice_credential or None)
        for url in _csv(a.ice_servers)
    )
    agent = AgentConfig(
        vad_aggressiveness=a.vad_aggressiveness,
        endpointer=EndpointerConfig(
            min_speech_ms=a.min_speech_ms,
            eou_silence_ms=a.eou_silence_ms,
            speculate_ms=min(a.speculate_ms, a.eou_silence_ms),
        ),
        turns=TurnConfig(speculative=not a.no_speculation, budgets_ms=parse_budgets(a.budgets)),
        llm_engine=a.llm,
        tts=TtsPoolConfig(engine=a.tts, voice=a.tts_voice or None, workers=a.tts_workers),
        system_prompt=a.system_prompt or None,
    )
    return ServerConfig(
        host=a.host,
        port=a.port,
        max_sessions=a.max_sessions,
        max_call_s=a.max_call_s,
        max_body_bytes=a.max_body_bytes,
        ice_servers=ice,
        ice_host_addresses=_csv(a.ice_host),
        agent=agent,
    )


def serve(a: argparse.Namespace) -> int:
    from aiohttp import web

    from signaling.app import create_app

    try:
        config = server_config(a)
    except ValueError as exc:
        raise SystemExit(f"ringback: {exc}") from None
    app = create_app(config)
    print(f"ringback: open http://localhost:{config.port} and click Call", flush=True)
    web.run_app(app, host=config.host, port=config.port, print=None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ringback", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the voice agent server")
    add_serve_args(p_serve)
    p_call = sub.add_parser("call", help="call an agent with a headless WebRTC peer")
    from harness.cli import add_call_args

    add_call_args(p_call)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    if args.command == "serve":
        return serve(args)
    from harness.cli import run_call

    return asyncio.run(run_call(args))


if __name__ == "__main__":
    sys.exit(main())
