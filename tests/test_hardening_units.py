"""Issue 24, pure cores: log escaping, the log throttle, the events channel's inbound side
under hostile input, and a reply ended by a hang-up. The end-to-end evidence (a real server,
real aiortc peers, real HTTP) is in test_hardening.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamError

from agent.call.events import MAX_BUFFERED_BYTES, EventChannel
from agent.call.logctx import Throttle, ThrottledLog, escape
from agent.conversation.turns import _only_track_stopped


class Channel:
    """The parts of an RTCDataChannel EventChannel uses."""

    readyState = "open"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.bufferedAmount = 0

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def on(self, event: str, handler: object) -> None:
        pass


class Now:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def channel(now: Now | None = None, on_mute: Any = None) -> tuple[EventChannel, Channel]:
    events = EventChannel("s1", on_mute=on_mute, now=now or Now())
    ch = Channel()
    events.attach(ch)  # type: ignore[arg-type]  # duck-typed stand-in for RTCDataChannel
    return events, ch


# --- escape --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("/static/a\nFORGED", "/static/a\\x0aFORGED"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00", "nul\\x00"),
        ("c1\x85", "c1\\x85"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
        ("back\\x0a", "back\\\\x0a"),  # a literal backslash cannot pose as an escape
        ("plain /path?ü é 日本", "plain /path?ü é 日本"),
    ],
)
def test_escape_leaves_nothing_that_breaks_or_forges_a_line(raw: str, logged: str) -> None:
    assert escape(raw) == logged
    assert escape(raw).isprintable()


def test_escape_cuts_long_text_and_says_how_much() -> None:
    assert escape("x" * 250, 200) == "x" * 200 + "…(+50 chars)"
    assert escape(ValueError("bad\nline")) == "bad\\x0aline"


# --- the throttle ----------------------------------------------------------------------------


def test_throttle_passes_the_first_few_then_reports_the_count_once_per_window() -> None:
    t = Throttle(first=3, window_s=10.0)
    decisions = [t.event(100.0 + i * 0.001) for i in range(5000)]
    assert [d[0] for d in decisions[:4]] == [True, True, True, False]
    assert sum(d[0] for d in decisions) == 3 and all(d[1] == 0 for d in decisions)
    passed, held, span = t.event(110.5)  # the next window: the count of the last one
    assert passed and held == 4997 and span == pytest.approx(10.5)
    assert t.event(110.6)[1] == 0  # reported once
    held_then, span_then = t.flush(111.0)
    assert held_then == 0 and span_then == pytest.approx(0.5)
    for _ in range(10):
        t.event(111.0)
    assert t.flush(112.0)[0] == 9 and t.flush(112.0)[0] == 0


def test_throttled_log_bounds_a_flood_and_summarizes_it(caplog: pytest.LogCaptureFixture) -> None:
    now = Now()
    logger = logging.getLogger("test.throttle")
    tl = ThrottledLog(logger, now, "junk messages", first=5, window_s=10.0)
    with caplog.at_level(logging.INFO, "test.throttle"):
        for i in range(5000):
            now.t = 100.0 + i * 0.0013  # 5000 in 6.5 s
            tl.log(logging.INFO, "junk %d", i)
        now.t = 130.0
        tl.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:5] == [f"junk {i}" for i in range(5)]
    assert lines[5:] == ["… 4995 more junk messages in the last 30 s (not logged one by one)"]


# --- the events channel under hostile input --------------------------------------------------


HOSTILE: list[str | bytes] = [
    "[" * 1000,
    "{" * 1000,
    '{"a":' * 600 + "1" + "}" * 600,
    "[" * 100_000,
    "x" * 1_000_000,
    b"\xff\xfe\x80" * 10,
    b"[" * 1000,
    b'{"type":"ping","t":\xff}',
    "\x00\x1b\n",
    "",
    b"",
    '{"type": "ping", "t": 1e999999}',
    '{"type": ' + '"' + "9" * 900 + '"}',
]


@pytest.mark.parametrize("message", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_messages_are_ignored_and_never_raise(message: str | bytes) -> None:
    mutes: list[bool] = []
    events, ch = channel(on_mute=mutes.append)
    events.receive(message)
    assert ch.sent == [] or ch.sent == [{"type": "pong", "t": None}] or ch.sent[0]["type"] == "pong"
    assert mutes == []
    events.receive('{"type":"ping","t":1}')  # and the channel still answers
    assert ch.sent[-1] == {"type": "pong", "t": 1}


def test_deep_nesting_is_refused_even_near_the_recursion_limit() -> None:
    events, ch = channel()

    def deep(n: int) -> None:  # aiortc calls the handler from deep inside its own stack
        if n:
            deep(n - 1)
        else:
            events.receive("[" * 1000)

    deep(900)
    assert ch.sent == []


def test_an_exception_from_handling_never_escapes(caplog: pytest.LogCaptureFixture) -> None:
    def broken(muted: bool) -> None:
        raise RuntimeError("the session broke")

    events, _ = channel(on_mute=broken)
    with caplog.at_level(logging.INFO, "agent.call.events"):
        events.receive('{"type":"mute","muted":true}')
    assert any("failed to handle" in r.getMessage() for r in caplog.records)


def test_a_flood_of_junk_and_mute_toggles_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = Now()
    mutes: list[bool] = []
    events, _ = channel(now, on_mute=mutes.append)
    with caplog.at_level(logging.INFO, "agent.call.events"):
        for i in range(5000):
            now.t = 100.0 + i * 0.0013
            events.receive("junk\n[FORGED]" if i % 2 else b"\xff" * 3)
            events.receive(json.dumps({"type": "mute", "muted": i % 2 == 0}))
        now.t = 107.0
        events.flush_logs()
    lines = [r.getMessage() for r in caplog.records]
    assert len(mutes) == 5000  # every mute still acted on
    assert len(lines) == 12, lines  # 5 + summary for each kind
    assert "… 4995 more ignored events messages in the last 7 s (not logged one by one)" in lines
    assert "… 4995 more mute changes in the last 7 s (not logged one by one)" in lines
    assert not any("\n" in line for line in lines)
    assert any("junk\\x0a[FORGED]" in line for line in lines)


def test_pongs_are_not_queued_behind_a_peer_that_does_not_read() -> None:
    events, ch = channel()
    ch.bufferedAmount = MAX_BUFFERED_BYTES + 1
    events.receive('{"type":"ping","t":1}')
    assert ch.sent == []
    ch.bufferedAmount = 0
    events.receive('{"type":"ping","t":2}')
    assert ch.sent == [{"type": "pong", "t": 2}]


# --- a reply ended by a hang-up --------------------------------------------------------------


def test_a_track_stopped_under_a_reply_is_a_normal_end() -> None:
    stopped = MediaStreamError("outbound track stopped")
    assert _only_track_stopped(stopped)
    assert _only_track_stopped(ExceptionGroup("reply", [stopped, MediaStreamError()]))
    assert _only_track_stopped(ExceptionGroup("outer", [ExceptionGroup("inner", [stopped])]))
    assert not _only_track_stopped(ExceptionGroup("reply", [stopped, ValueError("bug")]))
    assert not _only_track_stopped(RuntimeError("bug"))
    assert not _only_track_stopped(TimeoutError())
