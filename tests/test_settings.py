"""signaling.settings: one declaration per setting → flags, env, validation, config, docs."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.call.config import AgentConfig
from agent.conversation.turns import TurnConfig
from agent.engines.pocketsphinx_asr import AsrPoolConfig, default_processes
from agent.engines.tts_pool import TtsPoolConfig
from signaling import settings
from signaling.__main__ import add_serve_args, server_config
from signaling.config import IceServer, ServerConfig
from signaling.settings import DERIVED, FLAG, SETTINGS, Setting, SettingError

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# The flags `ringback serve` has always had: renaming or dropping one breaks deployments.
FLAGS = """
--host --port --max-sessions --max-call-s --connect-timeout-s --max-body-bytes --ice-servers
--ice-username --ice-credential --ice-host --media-timeout-s --max-pending
--max-pending-per-client --offers-per-minute --offer-burst --no-admission-headroom
--headroom-loop-lag-ms --headroom-tts-wait-ms --headroom-whisper-wait-ms --headroom-cpu-pct
--trust-forwarded --auth-tokens
--cors-origins --resume-grace-s --shutdown-deadline-s --log-transcripts --llm --tts --tts-voice
--tts-workers --tts-first-chunk-timeout-s --tts-chunk-timeout-s --llm-first-token-timeout-s
--llm-token-timeout-s --llm-filler-after-s --llm-fallback-url --llm-fallback-model
--llm-breaker-failures --llm-breaker-reset-s --asr --asr-workers --whisper-workers
--whisper-threads --speech-detector --vad-aggressiveness --silero-threshold --talker-margin-db
--no-echo-guard
--asr-max-decoders --turn-end --eou-complete-ms --eou-incomplete-ms --min-speech-ms --eou-silence-ms --speculate-ms
--no-speculation --greeting --system-prompt --budgets --slow-turn-ms --receive-path
--jitter-min-ms --jitter-max-ms --opus-bitrate --opus-loss-pct --log-level --workers
--session-id-prefix --agent-check-port --agent
""".split()


def parse(argv: list[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ringback serve")
    settings.add_arguments(parser, environ or {})
    return parser.parse_args(argv)


def by_flag(flag: str) -> Setting:
    (s,) = (s for s in SETTINGS if s.flag == flag)
    return s


def test_the_reference_is_generated_from_the_declarations() -> None:
    assert DOC.read_text() == settings.markdown(), f"stale: run `{settings.REGENERATE}`"
    for s in SETTINGS:  # and it covers every flag
        assert f"| `{s.flag}` / `{s.env}` |" in DOC.read_text()


def test_every_flag_keeps_its_name_and_its_variable() -> None:
    assert sorted(s.flag for s in SETTINGS) == sorted(FLAGS)
    assert len(FLAGS) == 70
    for s in SETTINGS:
        assert s.env == "RINGBACK_" + s.flag.removeprefix("--").replace("-", "_").upper()
    actions = argparse.ArgumentParser()
    add_serve_args(actions)
    assert sorted(o for a in actions._actions for o in a.option_strings) == sorted(
        [*FLAGS, "-h", "--help"]
    )


def test_no_flag_gives_the_config_objects_own_defaults() -> None:
    config = server_config(parse([]))
    workers = settings.default_workers()
    assert config == ServerConfig(
        workers=workers,
        agent=AgentConfig(
            asr_pool=AsrPoolConfig(processes=max(1, default_processes() // (4 * workers)))
        ),
    )


def alternative(s: Setting) -> tuple[str, Any]:
    """A valid value other than the default: (text for the flag, parsed value)."""
    if s.kind.options:
        other = next(o for o in s.kind.options if o != s.default)
        return other, other
    if s.kind is settings.TOKENS:
        return "t" * 16, "t" * 16
    if s.kind is settings.BUDGETS:
        return "total_ms=5", "total_ms=5"
    if s.kind in (settings.TEXT, settings.LIST):
        return "x", "x"
    default = s.start_default({})
    value = default + (37 if s.kind is settings.INT or default >= 1 else 0.037)
    if s.bound is not None and s.bound.problem(value) is not None:
        value = default - 1
    return str(value), value


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.kind is not FLAG], ids=lambda s: s.flag)
def test_the_variable_sets_the_default_and_the_flag_wins(s: Setting) -> None:
    text, value = alternative(s)
    assert getattr(parse([], {s.env: text}), s.dest) == value
    default = s.start_default({})
    assert getattr(parse([], {s.env: ""}), s.dest) == default  # empty: unset
    assert getattr(parse([s.flag, str(default)], {s.env: text}), s.dest) == default


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.kind is FLAG], ids=lambda s: s.flag)
def test_on_off_settings_from_the_flag_or_the_variable(s: Setting) -> None:
    assert getattr(parse([]), s.dest) is False
    assert getattr(parse([s.flag]), s.dest) is True
    for on in ("1", "true", "YES", "on"):
        assert getattr(parse([], {s.env: on}), s.dest) is True
    for off in ("0", "false", "no", ""):
        assert getattr(parse([], {s.env: off}), s.dest) is False


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.dest != "log_level"], ids=lambda s: s.flag)
def test_every_setting_reaches_the_config(s: Setting) -> None:
    base = ["--ice-servers", "stun:example.org"]  # so the TURN username/credential show
    text, _ = alternative(s)
    argv = [*base, s.flag] if s.kind is FLAG else [*base, s.flag, text]
    assert server_config(parse(argv)) != server_config(parse(base))


def test_settings_outside_the_table_are_derived_and_named() -> None:
    unplaced = {s.dest for s in SETTINGS if s.target is None}
    derived_inputs = {name for d in DERIVED for name in d.inputs}
    assert unplaced - derived_inputs == {"log_level"}  # read by main() for logging
    assert derived_inputs <= {s.dest for s in SETTINGS}


def test_values_reach_their_fields() -> None:
    a = parse(
        [
            "--ice-servers", "stun:a, turn:b", "--ice-username", "u", "--turn-end", "silence",
            "--speculate-ms", "500", "--opus-loss-pct", "0", "--no-speculation",
            "--tts-voice", "v.onnx", "--budgets", "llm_first_token_ms=5", "--asr-workers", "3",
        ]
    )  # fmt: skip
    config = server_config(a)
    assert config.ice_servers == (IceServer("stun:a", "u"), IceServer("turn:b", "u"))
    assert config.agent.listener.turn_end.read_words is False
    assert config.agent.endpointer.speculate_ms == 400  # at most --eou-silence-ms
    assert config.agent.opus_send.fec is False and config.agent.opus_send.packet_loss_pct == 0
    assert config.agent.turns.speculative is False
    assert config.agent.tts.voice == "v.onnx" and config.agent.system_prompt is None
    assert config.agent.turns.budgets_ms["llm_first_token_ms"] == 5.0
    assert config.agent.asr_pool.processes == 3


def test_a_bad_variable_stops_the_server_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingError, match=r"invalid RINGBACK_PORT='abc': expected an integer"):
        parse([], {"RINGBACK_PORT": "abc"})
    with pytest.raises(SettingError, match=r"RINGBACK_PORT='0': must be 1\.\.65535"):
        parse([], {"RINGBACK_PORT": "0"})
    with pytest.raises(SettingError, match=r"RINGBACK_LLM='gpt': 'gpt' is not one of local"):
        parse([], {"RINGBACK_LLM": "gpt"})
    with pytest.raises(SettingError, match=r"RINGBACK_AUTH_TOKENS=.*at least 16 characters"):
        parse([], {"RINGBACK_AUTH_TOKENS": "short"})
    with pytest.raises(SettingError, match=r"RINGBACK_BUDGETS=.*unknown budget stage 'nope'"):
        parse([], {"RINGBACK_BUDGETS": "nope=5"})
    monkeypatch.setenv("RINGBACK_SILERO_THRESHOLD", "1")
    with pytest.raises(SystemExit, match=r"^ringback: invalid RINGBACK_SILERO_THRESHOLD='1': "):
        add_serve_args(argparse.ArgumentParser())


def test_a_bad_flag_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, said in [
        (["--port", "0"], "argument --port: invalid value '0': must be 1..65535"),
        (["--max-call-s", "soon"], "argument --max-call-s: invalid value 'soon': expected a"),
        (["--receive-path", "x"], "argument --receive-path: invalid value 'x': 'x' is not one"),
        (["--opus-bitrate", "5999"], "argument --opus-bitrate: invalid value '5999': must be"),
    ]:
        with pytest.raises(SystemExit) as exited:
            parse(argv)
        assert exited.value.code == 2
        assert said in capsys.readouterr().err


def edges(s: Setting) -> tuple[list[Any], list[Any]]:
    """Values just inside and just outside `s`'s bound."""
    assert s.bound is not None
    step = 1 if s.kind is settings.INT else 0.001
    inside, outside = [], []
    for edge, is_open, toward_inside in (
        (s.bound.low, s.bound.open_low, step),
        (s.bound.high, s.bound.open_high, -step),
    ):
        if edge is None:
            continue
        inside.append(edge + toward_inside if is_open else edge)
        outside.append(edge if is_open else edge - toward_inside)
    return inside, outside


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.bound], ids=lambda s: s.flag)
def test_each_bound_is_exactly_what_the_config_objects_accept(s: Setting) -> None:
    """Checking at the flag rejects no value the typed config took before, and every value
    it rejects the typed config rejects too (with a worse message)."""
    inside, outside = edges(s)
    for value in inside:
        assert s.parse(str(value)) == value
        server_config(argparse.Namespace(**{**settings.defaults({}), s.dest: value}))
    for value in outside:
        with pytest.raises(ValueError, match="must be"):
            s.parse(str(value))
        with pytest.raises(ValueError):
            server_config(argparse.Namespace(**{**settings.defaults({}), s.dest: value}))


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--jitter-min-ms", "300"], ["--jitter-min-ms", "--jitter-max-ms"]),
        (["--eou-complete-ms", "1000"], ["--eou-complete-ms", "--eou-incomplete-ms"]),
        (["--min-speech-ms", "300"], ["--min-speech-ms"]),
    ],
)
def test_a_rejected_combination_names_its_flags(argv: list[str], names: list[str]) -> None:
    a = parse(argv)
    with pytest.raises(SettingError) as rejected:
        server_config(a)
    for name in names:
        s = by_flag(name)
        assert f"{s.flag} / {s.env}" in str(rejected.value)
    others = {s.flag for s in SETTINGS} - set(names)
    assert not any(f"{flag} /" in str(rejected.value) for flag in others)


def test_declarations_without_a_plain_field_must_say_their_kind() -> None:
    with pytest.raises(TypeError, match="declare"):
        settings.setting("--x", "ice_servers", "no plain field type")
    with pytest.raises(TypeError, match="declare"):
        settings.setting("--x", None, "no field at all")
    s = settings.setting("--x", "agent.tts.workers", "from the field")
    assert s.kind is settings.INT and s.default == TtsPoolConfig().workers
    s = settings.setting("--x", "agent.turns.slow_turn_ms", "from the field")
    assert s.kind is settings.FLOAT and s.default == TurnConfig().slow_turn_ms
