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

from agent.call.config import ASR_MODES, AgentConfig
from agent.call.engines import LLM_ENGINES, TTS_ENGINES
from agent.conversation.completeness import TurnEndConfig
from agent.conversation.endpointer import EndpointerConfig
from agent.conversation.listener import ListenerConfig
from agent.conversation.speech_detector import DETECTORS, SpeechDetectorConfig
from agent.conversation.turns import TurnConfig
from agent.engines.tts_pool import TtsPoolConfig
from agent.engines.whisper_pool import WhisperConfig
from agent.media.opus import OpusSendConfig
from agent.media.rtp_jitter import JitterConfig
from agent.metrics import DEFAULT_BUDGETS_MS, STAGES
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
    j = JitterConfig()
    o = OpusSendConfig()
    w = WhisperConfig()
    sd = SpeechDetectorConfig()
    te = TurnEndConfig()

    def arg(flag: str, default: object, cast: Callable[[str], object], help: str) -> None:
        name = flag.removeprefix("--").replace("-", "_").upper()
        value = env(name, default, cast)
        if cast is _bool:
            p.add_argument(flag, action="store_true", default=value, help=help)
        else:
            p.add_argument(flag, type=cast, default=value, help=help)

    arg("--host", d.host, str, "address to listen on")
    arg("--port", d.port, int, "HTTP port")
    arg("--max-sessions", d.max_sessions, int, "concurrent calls; more get 503 + Retry-After")
    arg("--max-call-s", d.max_call_s, float, "a call is hung up after this long")
    arg(
        "--connect-timeout-s",
        d.connect_timeout_s,
        float,
        "an answered call that has not connected by then is dropped",
    )
    arg("--max-body-bytes", d.max_body_bytes, int, "largest accepted offer body (413 above)")
    arg("--ice-servers", "", str, "comma-separated STUN/TURN URLs; empty: host candidates only")
    arg("--ice-username", "", str, "TURN username")
    arg("--ice-credential", "", str, "TURN credential")
    arg("--ice-host", "", str, "comma-separated addresses advertised as ICE host candidates")
    arg(
        "--llm",
        "local",
        _choice(LLM_ENGINES),
        "local (built-in) | openai (RINGBACK_OPENAI_BASE_URL/_MODEL/_API_KEY)",
    )
    arg(
        "--tts",
        "piper",
        _choice(TTS_ENGINES),
        "piper (natural voice) | espeak (fast, robotic; needs espeak-ng)",
    )
    arg("--tts-voice", "", str, "piper: path to an .onnx voice; espeak: a voice name")
    arg("--tts-workers", 2, int, "TTS worker processes shared by all calls")
    arg(
        "--asr",
        "hybrid",
        _choice(ASR_MODES),
        "hybrid: pocketsphinx captions + whisper tiny.en final pass | pocketsphinx only",
    )
    arg("--whisper-workers", w.workers, int, "whisper passes that run at once (all calls)")
    arg("--whisper-threads", w.cpu_threads, int, "CPU threads per whisper pass")
    arg(
        "--speech-detector",
        sd.kind,
        _choice(DETECTORS),
        "silero: webrtcvad + Silero VAD + talker gate (noise-proof) | webrtcvad only",
    )
    arg("--vad-aggressiveness", sd.vad_aggressiveness, int, "webrtcvad 0 (lenient) .. 3 (strict)")
    arg("--silero-threshold", sd.silero_threshold, float, "Silero speech probability for voice")
    arg(
        "--talker-margin-db",
        sd.talker_margin_db,
        float,
        "voice this far below the user's level is background (0: off)",
    )
    arg(
        "--turn-end",
        "words",
        _choice(("words", "silence")),
        "words: the silence that ends a turn follows how complete the words sound | silence",
    )
    arg("--eou-complete-ms", te.complete_ms, int, "silence that ends a complete-sounding turn")
    arg(
        "--eou-incomplete-ms",
        te.incomplete_ms,
        int,
        "silence that ends a turn whose words sound unfinished",
    )
    arg("--min-speech-ms", e.min_speech_ms, int, "voiced audio that starts a turn or a barge-in")
    arg(
        "--eou-silence-ms",
        e.eou_silence_ms,
        int,
        "silence that ends the user's turn (when the words give no hint)",
    )
    arg("--speculate-ms", e.speculate_ms, int, "silence after which a reply starts speculatively")
    arg("--no-speculation", False, _bool, "start replies only after the end of turn")
    arg("--system-prompt", "", str, "LLM system prompt; empty: a short voice-assistant prompt")
    arg(
        "--budgets",
        "",
        str,
        "latency budgets, e.g. time_to_first_audio_ms=800,llm_first_token_ms=500",
    )
    arg(
        "--receive-path",
        "ringback",
        _choice(("ringback", "aiortc")),
        "ringback: adaptive jitter buffer + Opus PLC/FEC; aiortc: aiortc's fixed buffer",
    )
    arg("--jitter-min-ms", j.min_delay_ms, float, "jitter buffer delay floor")
    arg("--jitter-max-ms", j.max_delay_ms, float, "jitter buffer delay ceiling")
    arg("--opus-bitrate", o.bitrate_bps, int, "outbound Opus bitrate (b/s)")
    arg(
        "--opus-loss-pct",
        o.packet_loss_pct,
        int,
        "expected loss hint for outbound Opus in-band FEC (0 disables FEC)",
    )
    arg("--log-level", "INFO", str, "DEBUG | INFO | WARNING")


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def cast(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    cast.__name__ = "choice"
    return cast


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def server_config(a: argparse.Namespace) -> ServerConfig:
    ice = tuple(
        IceServer(url, a.ice_username or None, a.ice_credential or None)
        for url in _csv(a.ice_servers)
    )
    agent = AgentConfig(
        speech=SpeechDetectorConfig(
            kind=a.speech_detector,
            vad_aggressiveness=a.vad_aggressiveness,
            silero_threshold=a.silero_threshold,
            talker_margin_db=a.talker_margin_db,
        ),
        asr=a.asr,
        whisper=WhisperConfig(workers=a.whisper_workers, cpu_threads=a.whisper_threads),
        listener=ListenerConfig(
            turn_end=TurnEndConfig(
                complete_ms=a.eou_complete_ms,
                incomplete_ms=a.eou_incomplete_ms,
                read_words=a.turn_end == "words",
            )
        ),
        endpointer=EndpointerConfig(
            min_speech_ms=a.min_speech_ms,
            eou_silence_ms=a.eou_silence_ms,
            speculate_ms=min(a.speculate_ms, a.eou_silence_ms),
        ),
        turns=TurnConfig(speculative=not a.no_speculation, budgets_ms=parse_budgets(a.budgets)),
        llm_engine=a.llm,
        tts=TtsPoolConfig(engine=a.tts, voice=a.tts_voice or None, workers=a.tts_workers),
        system_prompt=a.system_prompt or None,
        receive_path=a.receive_path,
        jitter=JitterConfig(min_delay_ms=a.jitter_min_ms, max_delay_ms=a.jitter_max_ms),
        opus_send=OpusSendConfig(
            bitrate_bps=a.opus_bitrate,
            fec=a.opus_loss_pct > 0,
            packet_loss_pct=a.opus_loss_pct,
        ),
    )
    return ServerConfig(
        host=a.host,
        port=a.port,
        max_sessions=a.max_sessions,
        max_call_s=a.max_call_s,
        connect_timeout_s=a.connect_timeout_s,
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
    p_serve = sub.add_parser(
        "serve",
        help="run the voice agent server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Every flag also reads RINGBACK_<FLAG> from the environment "
        "(e.g. --max-sessions ← RINGBACK_MAX_SESSIONS); a flag given wins.",
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
