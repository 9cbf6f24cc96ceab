"""`ringback` CLI: `serve` runs the agent server, `call` places a headless test call.

Every `serve` flag has a RINGBACK_* environment variable (flag wins); see README.
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
from collections.abc import Callable, Sequence
from typing import TypeVar

from aiohttp import web

from agent.call import logctx
from agent.call.config import ASR_MODES, AgentConfig
from agent.call.engines import LLM_ENGINES, TTS_ENGINES
from agent.conversation.completeness import TurnEndConfig
from agent.conversation.endpointer import EndpointerConfig
from agent.conversation.listener import ListenerConfig
from agent.conversation.speech_detector import DETECTORS, SpeechDetectorConfig
from agent.conversation.turns import TurnConfig
from agent.engines.breaker import BreakerConfig
from agent.engines.pocketsphinx_asr import AsrPoolConfig, default_processes
from agent.engines.tts_pool import TtsPoolConfig
from agent.engines.whisper_pool import WhisperConfig
from agent.media.opus import OpusSendConfig
from agent.media.rtp_jitter import JitterConfig
from agent.metrics import DEFAULT_BUDGETS_MS, STAGES
from signaling.config import IceServer, ServerConfig
from signaling.headroom import HeadroomConfig

T = TypeVar("T")
log = logging.getLogger("signaling")
IDLE_CONNECTION_S = 10.0  # a connection with no complete request this long is closed


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


def default_workers() -> int:
    """One server process per 4 cores. The engines run in worker processes that use every
    core already; one event loop carries ~10 calls at ~0.3 of a core (bench.capacity). On 2
    cores one process sustained 10 calls and two processes 8, with 1.6x the memory (two
    sets of engines competing for the same cores)."""
    return max(1, default_processes() // 4)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    e = EndpointerConfig()
    j = JitterConfig()
    o = OpusSendConfig()
    w = WhisperConfig()
    sd = SpeechDetectorConfig()
    te = TurnEndConfig()
    tc = TurnConfig()
    tp = TtsPoolConfig()
    bc = BreakerConfig()
    hr = HeadroomConfig()

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
    arg("--media-timeout-s", d.media_timeout_s, float, "a call receiving no RTP this long ends")
    arg("--max-pending", d.max_pending, int, "offers still connecting (oldest evicted past it)")
    arg(
        "--max-pending-per-client",
        d.max_pending_per_client,
        int,
        "offers still connecting per client IP (429 past it)",
    )
    arg("--offers-per-minute", d.offers_per_minute, float, "offers per client IP (429 past it)")
    arg("--offer-burst", d.offer_burst, int, "offers a client IP may send at once")
    arg(
        "--no-admission-headroom",
        False,
        _bool,
        "admit new calls up to --max-sessions only, not by measured headroom",
    )
    arg(
        "--headroom-loop-lag-ms",
        hr.loop_lag_p99_s * 1000,
        float,
        "no new calls (503) while event-loop lag p99 over the last 10 s is above this",
    )
    arg(
        "--headroom-tts-wait-ms",
        hr.tts_wait_p90_s * 1000,
        float,
        "no new calls (503) while a reply's first TTS audio waits p90 longer than this",
    )
    arg(
        "--headroom-whisper-wait-ms",
        hr.whisper_wait_p90_s * 1000,
        float,
        "no new calls (503) while the accurate pass waits p90 longer than this for whisper",
    )
    arg(
        "--headroom-cpu-pct",
        hr.cpu_busy_max * 100,
        float,
        "no new calls (503) while the server's processes, with one more call, would keep more "
        "than this % of its cores busy",
    )
    arg("--trust-forwarded", False, _bool, "client IP from X-Forwarded-For (behind a proxy)")
    arg(
        "--auth-tokens",
        "",
        str,
        "comma-separated bearer tokens for /offer, /whip, /sessions, /metrics; empty: open",
    )
    arg("--cors-origins", "", str, "comma-separated origins allowed to call the API (CORS)")
    arg("--resume-grace-s", d.resume_grace_s, float, "a dropped call can be resumed this long")
    arg(
        "--shutdown-deadline-s",
        d.shutdown_deadline_s,
        float,
        "SIGTERM: callers are told, calls ended, the process exits within this",
    )
    arg("--log-transcripts", False, _bool, "log what callers say at INFO (default: DEBUG only)")
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
    arg("--tts-workers", tp.workers, int, "TTS worker processes shared by all calls")
    arg(
        "--tts-first-chunk-timeout-s",
        tp.first_chunk_timeout_s,
        float,
        "a TTS worker silent this long on a new request is restarted (request retried)",
    )
    arg(
        "--tts-chunk-timeout-s",
        tp.chunk_timeout_s,
        float,
        "a TTS worker silent this long mid-request is restarted",
    )
    arg(
        "--llm-first-token-timeout-s",
        tc.llm_first_token_timeout_s,
        float,
        "LLM silent this long before its first token: the fallback LLM, else an apology",
    )
    arg(
        "--llm-token-timeout-s",
        tc.llm_token_timeout_s,
        float,
        "LLM silent this long mid-reply: the reply ends with an apology",
    )
    arg(
        "--llm-filler-after-s",
        tc.llm_filler_after_s,
        float,
        "no first token by then: say 'One moment.' (0: never)",
    )
    arg(
        "--llm-fallback-url",
        "",
        str,
        "fallback LLM: 'local' or an OpenAI-compatible base URL (key: RINGBACK_LLM_FALLBACK_API_KEY)",
    )
    arg("--llm-fallback-model", "", str, "model at --llm-fallback-url (default: the primary's)")
    arg(
        "--llm-breaker-failures",
        bc.failures,
        int,
        "consecutive failures that open an LLM's circuit breaker",
    )
    arg("--llm-breaker-reset-s", bc.reset_s, float, "an open breaker lets a trial through after")
    arg(
        "--asr",
        "hybrid",
        _choice(ASR_MODES),
        "hybrid: pocketsphinx captions + whisper tiny.en final pass | pocketsphinx only",
    )
    arg(
        "--asr-workers",
        0,
        int,
        "pocketsphinx processes per server process, shared by its calls; 0: cores / --workers",
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
    arg(
        "--greeting",
        "chime",
        str,
        "at the start of a call, before `ready`: chime | none | a text the agent says",
    )
    arg("--system-prompt", "", str, "LLM system prompt; empty: a short voice-assistant prompt")
    arg(
        "--budgets",
        "",
        str,
        "latency budgets, e.g. time_to_first_audio_ms=800,llm_first_token_ms=500",
    )
    arg(
        "--slow-turn-ms",
        tc.slow_turn_ms,
        float,
        "a turn slower than this (end of speech to first audio) logs its stage times (0: off)",
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
    arg(
        "--workers",
        default_workers(),
        int,
        "server processes behind this address, calls spread over them (default: one per 4 "
        "cores; the engines already use every core)",
    )
    arg("--session-id-prefix", "", str, "prefix of this server's session ids (set by --workers)")
    arg("--agent-check-port", 0, int, "TCP port telling HAProxy the load (agent-check); 0: off")


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
        asr_pool=AsrPoolConfig(
            processes=a.asr_workers or max(1, default_processes() // max(1, a.workers))
        ),
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
        turns=TurnConfig(
            speculative=not a.no_speculation,
            budgets_ms=parse_budgets(a.budgets),
            llm_first_token_timeout_s=a.llm_first_token_timeout_s,
            llm_token_timeout_s=a.llm_token_timeout_s,
            llm_filler_after_s=a.llm_filler_after_s,
            slow_turn_ms=a.slow_turn_ms,
        ),
        llm_engine=a.llm,
        llm_fallback=a.llm_fallback_url or None,
        llm_fallback_model=a.llm_fallback_model or None,
        llm_breaker=BreakerConfig(failures=a.llm_breaker_failures, reset_s=a.llm_breaker_reset_s),
        tts=TtsPoolConfig(
            engine=a.tts,
            voice=a.tts_voice or None,
            workers=a.tts_workers,
            first_chunk_timeout_s=a.tts_first_chunk_timeout_s,
            chunk_timeout_s=a.tts_chunk_timeout_s,
        ),
        system_prompt=a.system_prompt or None,
        log_transcripts=a.log_transcripts,
        greeting=a.greeting,
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
        media_timeout_s=a.media_timeout_s,
        max_pending=a.max_pending,
        max_pending_per_client=a.max_pending_per_client,
        offers_per_minute=a.offers_per_minute,
        offer_burst=a.offer_burst,
        trust_forwarded=a.trust_forwarded,
        auth_tokens=_csv(a.auth_tokens),
        cors_origins=_csv(a.cors_origins),
        resume_grace_s=a.resume_grace_s,
        shutdown_deadline_s=a.shutdown_deadline_s,
        session_id_prefix=a.session_id_prefix,
        workers=a.workers,
        agent_check_port=a.agent_check_port,
        headroom=HeadroomConfig(
            enabled=not a.no_admission_headroom,
            loop_lag_p99_s=a.headroom_loop_lag_ms / 1000,
            tts_wait_p90_s=a.headroom_tts_wait_ms / 1000,
            whisper_wait_p90_s=a.headroom_whisper_wait_ms / 1000,
            cpu_busy_max=a.headroom_cpu_pct / 100,
        ),
        agent=agent,
    )


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
