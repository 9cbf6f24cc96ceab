"""Every log line of a call names its session; a slow turn logs its stage breakdown once."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.call import logctx
from agent.conversation.turns import TurnConfig
from agent.metrics import TurnMetrics
from harness.peer import Caller
from tests.conftest import run_server
from tests.turn_rig import CHUNK, Rig, ScriptedLlm, ScriptedTts


class Lines(logging.Handler):
    """A handler like the server's: the session filter on it, lines in the server's format."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(logctx.SessionFilter())
        self.setFormatter(logging.Formatter(logctx.FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def lines() -> Iterator[list[str]]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def session_of(line: str) -> str:
    match = re.search(r" \[([^\]]+)\] ", line)
    assert match, line
    return match.group(1)


async def test_tasks_and_callbacks_created_under_a_bound_session_log_under_it(
    lines: list[str],
) -> None:
    # aiortc and aioice log under their own names, from tasks and callbacks of their own.
    third_party = logging.getLogger("aioice.ice")

    async def later(name: str) -> None:
        await asyncio.sleep(0)
        third_party.info("%s", name)

    loop = asyncio.get_running_loop()
    called = asyncio.Event()
    with logctx.bound("call-1"):
        inside = loop.create_task(later("task"))

        def callback() -> None:
            logging.getLogger("x").info("callback")
            called.set()

        loop.call_soon(callback)
    outside = loop.create_task(later("unbound task"))
    logging.getLogger("x").info("after the block")
    await asyncio.gather(inside, outside, called.wait())

    by_message = {line.rsplit(": ", 1)[1]: session_of(line) for line in lines}
    assert by_message == {
        "task": "call-1",  # logged after the block ended: the task copied the context
        "callback": "call-1",
        "unbound task": "-",
        "after the block": "-",
    }
    assert logctx.current() is None


async def test_nested_sessions_and_explicit_extra_win(lines: list[str]) -> None:
    log = logging.getLogger("signaling.peers")
    with logctx.bound("a"):
        with logctx.bound("b"):
            log.info("evicting b")
        log.info("back in a")
        log.info("about c", extra={"session": "c"})
    assert [session_of(line) for line in lines] == ["b", "a", "c"]


def test_install_puts_the_filter_on_every_root_handler_once() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        logctx.install()
        logctx.install()
        assert sum(isinstance(f, logctx.SessionFilter) for f in handler.filters) == 1
        record = logging.LogRecord("aiortc.rtcdtlstransport", logging.INFO, "", 0, "m", (), None)
        assert handler.filter(record) and getattr(record, "session", None) == "-"
    finally:
        root.removeHandler(handler)


def test_breakdown_lists_the_stages_reached_and_the_waits() -> None:
    m = TurnMetrics(turn=3, speculative=True, asr_queue_wait_ms=20.0, completeness="complete")
    m.mark("speech_end", 10.0)
    m.mark("endpoint", 10.25)
    m.mark("asr_complete", 10.3)
    m.mark("llm_started", 10.15)
    m.mark("llm_first_token", 10.9)
    m.mark("tts_started", 10.95)
    m.mark("tts_first_chunk", 11.2)
    m.mark("first_audio_out", 11.5)
    assert m.voice_to_voice_ms() == 1500.0
    assert m.breakdown() == (
        "eou_delay_ms=250 asr_complete_ms=300 llm_first_token_ms=900 tts_first_chunk_ms=1200 "
        "time_to_first_audio_ms=1500; llm_wait_ms=750 tts_wait_ms=250 playout_wait_ms=300 "
        "asr_queue_wait_ms=20 completeness=complete speculative=yes"
    )


async def test_a_slow_turn_logs_its_breakdown_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "agent.conversation.turns")
    caplog.handler.addFilter(logctx.SessionFilter())
    rig = Rig(ScriptedLlm("Hi there. How are you?"), ScriptedTts(), TurnConfig(slow_turn_ms=1000))

    def slow_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("slow turn")]

    with logctx.bound("sess-1"):  # as Session.run does: the reply tasks inherit it
        rig.turn = 1  # 400 ms from the end of speech to the first audio: not slow
        await rig.tm.on_speech_start()
        await rig.tm.on_final("hello", rig.metrics())
        await rig.play_all()
        assert slow_lines() == []

        rig.turn = 2  # the final came 1.1 s after the endpoint: slow, played to the end
        metrics = rig.metrics()
        await rig.clock.advance(1.1)
        await rig.tm.on_speech_start()
        await rig.tm.on_final("hello again", metrics)
        await rig.play_all()

        rig.turn = 3  # slow too, and cut short by a barge-in: still one line
        metrics = rig.metrics()
        await rig.clock.advance(1.1)
        await rig.tm.on_speech_start()
        await rig.tm.on_final("and again", metrics)
        for _ in range(3):
            await rig.settle()
            rig.sink.play(CHUNK)
        await rig.tm.on_speech_start()
        await rig.tm.on_final("", rig.metrics())
        await rig.tm.aclose()
        await rig.settle()

    assert len(rig.of_type("turn")) == 3
    slow = slow_lines()
    assert [r.getMessage().split(":")[0] for r in slow] == ["slow turn 2", "slow turn 3"], [
        r.getMessage() for r in slow
    ]
    assert all(
        r.levelno == logging.WARNING and getattr(r, "session", None) == "sess-1" for r in slow
    )
    message = slow[0].getMessage()
    assert "1500 ms from end of speech to first audio (over 1000 ms)" in message, message
    assert "eou_delay_ms=400 " in message and "time_to_first_audio_ms=1500" in message
    assert "llm_wait_ms=" in message and "playout_wait_ms=" in message
    assert "tts_wait_ms=" in message and "tts_class=first_audio" in message  # the wait's class
    assert "hello" not in message  # no words in it


async def test_slow_turn_ms_zero_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "agent.conversation.turns")
    rig = Rig(ScriptedLlm("Hi."), ScriptedTts(), TurnConfig(slow_turn_ms=0))
    metrics = rig.metrics()
    await rig.clock.advance(5.0)
    await rig.tm.on_speech_start()
    await rig.tm.on_final("hello", metrics)
    await rig.play_all()
    assert rig.of_type("turn") and "slow turn" not in caplog.text


# --- a real call through the real server ---------------------------------------------------

LIGHT = ("--tts", "espeak", "--tts-workers", "1", "--asr", "pocketsphinx",
         "--speech-detector", "webrtcvad", "--greeting", "none")  # fmt: skip


@pytest.mark.e2e
async def test_every_line_of_a_call_names_its_session(
    tmp_path: Path, speech: dict[str, Any]
) -> None:
    question = "What time is it?"
    # Every turn is slow at 1 ms: its breakdown line comes from the agent's reply task.
    with run_server(tmp_path, *LIGHT, "--slow-turn-ms", "1") as srv:
        caller = Caller(srv.url)
        try:
            await caller.connect()
            result = await caller.say(question, speech[question])
            assert result.reply, result
        finally:
            await caller.close()
        sid, secret = caller.session_id, caller.session_secret
        assert sid and secret
        log = srv.log()  # the hang-up (DELETE) returned once the call had ended

    mine = [line for line in log.splitlines() if f" [{sid}] " in line]
    expected = [
        "aiohttp.access: ",  # the offer's access log line: a third-party logger
        "signaling.peers: call answered",
        "signaling.peers: connection connected",
        "agent.call.session: turn 1 heard",
        "agent.conversation.turns: slow turn 1: ",
        "agent.call.session: session ended after 1 turns",
        "signaling.peers: call ended: ",
    ]
    for text in expected:
        assert any(text in line for line in mine), (text, "\n".join(mine))
    # What signaling and the agent log while the call lasts all names it.
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "call answered" in line)
    end = next(i for i, line in enumerate(lines) if "call ended: " in line)
    pattern = r"\] (signaling\.peers|agent\.call\.(session|events)|agent\.conversation\.\w+): "
    call_lines = [line for line in lines[start : end + 1] if re.search(pattern, line)]
    assert call_lines and all(f" [{sid}] " in line for line in call_lines), "\n".join(call_lines)
    # Outside the call: "-".
    assert any(" [-] " in line for line in lines)
    assert secret not in log
