"""Incremental Server-Sent Events parser: turns a byte stream into events, without doing I/O.

Implements the event-stream interpretation rules of the WHATWG HTML standard (§9.2.6): UTF-8
decoding with a single leading BOM dropped, lines ending in CRLF, LF or CR, comments, field
parsing, and dispatch on a blank line. Bytes may arrive split anywhere, including inside a
UTF-8 sequence or between the CR and LF of one line ending.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

DEFAULT_MAX_LINE_LENGTH = 1 << 20

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event. `id` is the stream's last event ID (None until one is set)."""

    data: str
    event: str = "message"
    id: str | None = None


class SseParser:
    """Feed it bytes as they arrive; it returns the events they complete.

    `max_line_length` (in characters) bounds both a single buffered line and the data
    accumulated for one event, so a peer that never sends a line break or a blank line cannot
    make us buffer without limit; exceeding it raises ValueError and the parser must then be
    discarded. An event left incomplete when the stream ends is never dispatched, as the
    standard requires.
    """

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length <= 0:
            raise ValueError("max_line_length must be positive")
        self.max_line_length = max_line_length
        # utf-8-sig drops exactly one BOM, and only at the very start, even when it arrives
        # split over several feeds; "replace" is what the standard's UTF-8 decode does.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._pending: list[str] = []
        self._pending_len = 0
        # A chunk ending in CR may be followed by the LF of the same CRLF in the next chunk.
        self._skip_lf = False
        self._data: list[str] = []
        self._data_len = 0
        self._event_type = ""
        self._last_event_id: str | None = None
        self.retry_ms: int | None = None
        """The reconnection time most recently sent in a `retry:` field, if any."""

    @property
    def last_event_id(self) -> str | None:
        """The last event ID seen so far, which later events inherit."""
        return self._last_event_id

    def feed(self, data: bytes) -> list[SseEvent]:
        """Consume `data` and return the events it completes, in stream order."""
        text = self._decoder.decode(data)
        if not text:
            return []
        pos = 0
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                pos = 1
        events: list[SseEvent] = []
        end = len(text)
        while pos < end:
            match = _LINE_END.search(text, pos)
            if match is None:
                self._buffer_partial(text[pos:])
                break
            line = text[pos : match.start()]
            if self._pending:
                self._pending.append(line)
                line = "".join(self._pending)
                self._pending.clear()
                self._pending_len = 0
            self._check_length(len(line), "line")
            if match.group() == "\r" and match.end() == end:
                self._skip_lf = True
            pos = match.end()
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _buffer_partial(self, piece: str) -> None:
        self._pending.append(piece)
        self._pending_len += len(piece)
        self._check_length(self._pending_len, "line")

    def _check_length(self, length: int, what: str) -> None:
        if length > self.max_line_length:
            raise ValueError(f"SSE {what} longer than {self.max_line_length} characters")

    def _process_line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            # +1 for the "\n" that will join it to the next data line.
            self._data_len += len(value) + 1
            self._check_length(self._data_len, "event data")
        elif field == "event":
            self._event_type = value
        elif field == "id":
            # The standard ignores IDs containing NUL rather than truncating them.
            if "\0" not in value:
                self._last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        # Any other field name is ignored, as the standard requires.
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event_type = self._data, self._event_type
        self._data = []
        self._data_len = 0
        self._event_type = ""
        if not data:
            return None
        return SseEvent(data="\n".join(data), event=event_type or "message", id=self._last_event_id)
