"""Tests for agent.engines.sse: the WHATWG event-stream rules, fed whole and in arbitrary pieces."""

from __future__ import annotations

import random

import pytest

from agent.engines.sse import SseEvent, SseParser


def feed_all(chunks: list[bytes], parser: SseParser | None = None) -> list[SseEvent]:
    parser = parser or SseParser()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


E = SseEvent

CASES: list[tuple[str, list[bytes], list[SseEvent]]] = [
    ("single event", [b"data: hello\n\n"], [E("hello")]),
    ("crlf line endings", [b"data: a\r\n\r\n"], [E("a")]),
    ("cr line endings", [b"data: a\r\r"], [E("a")]),
    ("mixed line endings", [b"data: a\rdata: b\ndata: c\r\n\n"], [E("a\nb\nc")]),
    # Were the LF after a split CR taken as a second line end, "a" would be dispatched alone.
    ("crlf split across feeds", [b"data: a\r", b"\ndata: b\r\n\r\n"], [E("a\nb")]),
    ("cr at feed end, no lf next", [b"data: a\r", b"data: b\r\r"], [E("a\nb")]),
    ("cr at feed end, lf after empty feed", [b"data: a\r", b"", b"\ndata: b\n\n"], [E("a\nb")]),
    ("comment ignored", [b": keep-alive\ndata: x\n\n"], [E("x")]),
    ("comment-only stream", [b": ping\n\n: ping\n\n"], []),
    ("comment between data lines", [b"data: a\n:c\ndata: b\n\n"], [E("a\nb")]),
    ("data lines joined with newline", [b"data: a\ndata: b\ndata: c\n\n"], [E("a\nb\nc")]),
    ("one leading space stripped", [b"data:  two spaces\n\n"], [E(" two spaces")]),
    ("no space after colon", [b"data:tight\n\n"], [E("tight")]),
    ("tab is not stripped", [b"data:\tx\n\n"], [E("\tx")]),
    ("colon inside value kept", [b'data: {"a": 1}\n\n'], [E('{"a": 1}')]),
    ("trailing spaces kept", [b"data: x  \n\n"], [E("x  ")]),
    ("field without colon is empty data", [b"data\n\n"], [E("")]),
    ("two bare data fields", [b"data\ndata\n\n"], [E("\n")]),
    ("empty data value dispatches empty string", [b"data:\n\n"], [E("")]),
    ("no data field: nothing dispatched", [b"event: x\nid: 3\n\n"], []),
    ("blank lines alone dispatch nothing", [b"\n\n\r\n\r\r"], []),
    ("event type", [b"event: delta\ndata: x\n\n"], [E("x", event="delta")]),
    (
        "event type resets after dispatch",
        [b"event: delta\ndata: x\n\ndata: y\n\n"],
        [E("x", event="delta"), E("y")],
    ),
    (
        "event type dropped with an empty event",
        [b"event: delta\n\ndata: y\n\n"],
        [E("y")],
    ),
    ("empty event name means message", [b"event:\ndata: x\n\n"], [E("x")]),
    ("id attached", [b"id: 7\ndata: x\n\n"], [E("x", id="7")]),
    (
        "id persists across events",
        [b"id: 7\ndata: a\n\ndata: b\n\n"],
        [E("a", id="7"), E("b", id="7")],
    ),
    (
        "bare id resets to empty",
        [b"id: 7\ndata: a\n\nid\ndata: b\n\n"],
        [E("a", id="7"), E("b", id="")],
    ),
    (
        "id with NUL ignored",
        [b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"],
        [E("a", id="1"), E("b", id="1")],
    ),
    ("id set by an event without data", [b"id: 5\n\ndata: a\n\n"], [E("a", id="5")]),
    ("unknown field ignored", [b"foo: bar\ndata: x\nretry: 10\n\n"], [E("x")]),
    ("field names are case-sensitive", [b"Data: x\nDATA: y\n\n"], []),
    ("incomplete event not dispatched", [b"data: x\n"], []),
    ("unterminated line not dispatched", [b"data: x"], []),
    ("event completed by a later feed", [b"data: x\n", b"\n"], [E("x")]),
    ("utf-8 whole", ["data: héllo ☎ 🙂\n\n".encode()], [E("héllo ☎ 🙂")]),
    ("utf-8 split bytewise", bytewise("data: héllo ☎ 🙂\n\n".encode()), [E("héllo ☎ 🙂")]),
    ("invalid utf-8 replaced", [b"data: a\xffb\n\n"], [E("a\ufffdb")]),
    ("bom at start ignored", [b"\xef\xbb\xbfdata: x\n\n"], [E("x")]),
    ("bom split across feeds", [b"\xef", b"\xbb", b"\xbfdata: x\n\n"], [E("x")]),
    # Only one BOM is dropped; a second makes the field name "\ufeffdata", which is ignored.
    ("second bom is part of the field", [b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"], []),
    (
        "bom later in stream kept",
        [b"data: x\n\n", "data: \ufeffy\n\n".encode()],
        [E("x"), E("\ufeffy")],
    ),
    (
        "openai style stream",
        [b'data: {"c": 1}\n\ndata: {"c": 2}\n\ndata: [DONE]\n\n'],
        [E('{"c": 1}'), E('{"c": 2}'), E("[DONE]")],
    ),
]


@pytest.mark.parametrize(("chunks", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules(chunks: list[bytes], expected: list[SseEvent]) -> None:
    assert feed_all(chunks) == expected


@pytest.mark.parametrize(("chunks", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules_hold_bytewise(chunks: list[bytes], expected: list[SseEvent]) -> None:
    # Every rule must survive the worst possible split, except where a case is about splits.
    assert feed_all(bytewise(b"".join(chunks))) == expected


MULTI_EVENT_STREAM = (
    b"\xef\xbb\xbf: opening comment\r\n"
    b"retry: 1500\r\n"
    b"id: 1\r\n"
    b"event: greeting\r\n"
    b"data: hello\r\n"
    b"data:  world\r\n"
    b"\r\n"
    + "data: caf\u00e9 \u260e \U0001f642\r\r".encode()
    + b"event: ignored because no data\n\n"
    b"id: 2\ndata\n\n"
    b"data: last\r"
    b"\n\r\n"
    b"data: dangling, never dispatched\n"
)
MULTI_EXPECTED = [
    E("hello\n world", event="greeting", id="1"),
    E("café ☎ 🙂", id="1"),
    E("", id="2"),
    E("last", id="2"),
]


def test_byte_by_byte_equals_single_feed() -> None:
    whole = feed_all([MULTI_EVENT_STREAM])
    assert whole == MULTI_EXPECTED
    assert feed_all(bytewise(MULTI_EVENT_STREAM)) == whole


@pytest.mark.parametrize("seed", range(20))
def test_random_chunking_equals_single_feed(seed: int) -> None:
    rng = random.Random(seed)
    chunks: list[bytes] = []
    pos = 0
    while pos < len(MULTI_EVENT_STREAM):
        size = rng.randint(0, 9)
        chunks.append(MULTI_EVENT_STREAM[pos : pos + size])
        pos += size
    assert feed_all(chunks) == MULTI_EXPECTED


def test_retry_and_last_event_id_exposed() -> None:
    parser = SseParser()
    feed_all([MULTI_EVENT_STREAM], parser)
    assert parser.retry_ms == 1500
    assert parser.last_event_id == "2"


@pytest.mark.parametrize("value", [b"abc", b"15x", b"-1", b"1.5", b"", "\u0661".encode()])
def test_bad_retry_ignored(value: bytes) -> None:
    parser = SseParser()
    parser.feed(b"retry: " + value + b"\n\n")
    assert parser.retry_ms is None


def test_feed_returns_events_as_soon_as_complete() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b") == [E("a")]
    assert parser.feed(b"\n\n") == [E("b")]


def test_empty_feed() -> None:
    assert SseParser().feed(b"") == []


LIMIT = 64

LIMIT_CASES: list[tuple[str, list[bytes], bool]] = [
    ("line at limit ok", [b"data:" + b"x" * (LIMIT - 5) + b"\n\n"], False),
    ("line over limit in one feed", [b"data:" + b"x" * LIMIT + b"\n\n"], True),
    ("unterminated line over limit", [b"x" * (LIMIT + 1)], True),
    ("line over limit across feeds", [b"data:"] + [b"x"] * LIMIT, True),
    ("long comment counts too", [b":" + b"x" * LIMIT + b"\n"], True),
    ("many short lines ok", [b"id: 1\n" * 100 + b": c\n" * 100], False),
    ("event data over limit", [b"data: 0123456789\n" * 10], True),
    ("data resets per event", [b"data: 0123456789\n\n" * 10], False),
]


@pytest.mark.parametrize(
    ("chunks", "raises"), [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES]
)
def test_max_line_length(chunks: list[bytes], raises: bool) -> None:
    parser = SseParser(max_line_length=LIMIT)
    if raises:
        with pytest.raises(ValueError, match="longer than 64"):
            feed_all(chunks, parser)
    else:
        feed_all(chunks, parser)


def test_default_limit_is_one_mib() -> None:
    parser = SseParser()
    assert parser.max_line_length == 1 << 20
    big = b"x" * (1 << 20)
    assert parser.feed(b"data:" + big[:-5] + b"\n\n") == [E("x" * ((1 << 20) - 5))]
    with pytest.raises(ValueError):
        parser.feed(big + b"!")


def test_nonpositive_limit_rejected() -> None:
    with pytest.raises(ValueError):
        SseParser(max_line_length=0)
