"""The id of the call being handled, on every log line emitted while handling it.

A `ContextVar` holds the session id. Signaling binds it before it creates a call's peer
connection: asyncio copies the current context into every task and callback when it is
created, so whatever aiortc, aioice and the agent then do for that call — their own tasks,
timers and socket readers included — logs under the call's id. `SessionFilter`, attached to
the log handlers (not to loggers: third-party records never pass through ours), writes the
id into each record as `record.session`, "-" outside any call.

The id is public (it names the call in the API and the `hello` event); the session *secret*
never goes through here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar

NO_SESSION = "-"
FORMAT = "%(asctime)s %(levelname)s [%(session)s] %(name)s: %(message)s"

_session: ContextVar[str | None] = ContextVar("ringback_session", default=None)


def current() -> str | None:
    """The session id bound in this context, if any."""
    return _session.get()


@contextlib.contextmanager
def bound(session_id: str) -> Iterator[None]:
    """Log under `session_id` inside the block, and in every task created inside it."""
    token = _session.set(session_id)
    try:
        yield
    finally:
        _session.reset(token)


def bind(session_id: str) -> None:
    """Log under `session_id` for the rest of the current task (aiohttp runs each request
    in a task of its own, so this stays inside one request)."""
    _session.set(session_id)


class SessionFilter(logging.Filter):
    """Sets `record.session` from the context the record was emitted in ("-": none).

    A record that already carries one (`extra={"session": ...}`, or an earlier handler)
    keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            record.session = _session.get() or NO_SESSION
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Attach a `SessionFilter` to every handler of `logger` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, SessionFilter) for f in handler.filters):
            handler.addFilter(SessionFilter())


def configure(level: str) -> None:
    """Log to stderr in `FORMAT`, with every record's session (this process's entry point)."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    install()


# --- what goes into a line from outside -----------------------------------------------------

ESCAPE_LIMIT = 200  # characters of an outside string kept in one log line


def escape(value: object, limit: int = ESCAPE_LIMIT) -> str:
    """`value` as text fit for one log line: nothing in it can end the line or forge another.

    Control characters (line breaks, ESC, NUL, C1), Unicode line/paragraph separators, format
    characters (bidi overrides) and other non-printables become `\\xNN` / `\\uNNNN` escapes;
    a backslash is doubled, so an escape in the log always means the byte was really there.
    Longer than `limit` characters: cut, with how much was left out. Use it for every string
    that came from a client: paths, headers, addresses, data-channel content, error texts
    that quote input.
    """
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if not (text.isprintable() and "\\" not in text):
        text = "".join(_escape_char(c) for c in text)
    return f"{text}…(+{cut} chars)" if cut > 0 else text


def _escape_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if c.isprintable():  # a plain space is printable; other spaces and separators are not
        return c
    code = ord(c)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


# --- lines a caller can trigger at will ---------------------------------------------------


class Throttle:
    """Pure core of `ThrottledLog`: per window of `window_s`, the first `first` events pass
    and the rest are counted.

    `event(now)` says whether this event may be logged, and how many were held back in the
    window that has just closed (to be reported now, once). `flush()` hands over what the
    current window holds back (at the end of a call)."""

    def __init__(self, first: int = 5, window_s: float = 10.0) -> None:
        self.first = first
        self.window_s = window_s
        self._start: float | None = None
        self._passed = 0
        self._held = 0

    def event(self, now: float) -> tuple[bool, int, float]:
        """(log this one?, events held back in the window just closed, that window's length)."""
        held, span = 0, 0.0
        if self._start is None or now - self._start >= self.window_s:
            if self._start is not None:
                held, span = self._held, now - self._start
            self._start, self._passed, self._held = now, 0, 0
        if self._passed < self.first:
            self._passed += 1
            return True, held, span
        self._held += 1
        return False, held, span

    def flush(self, now: float) -> tuple[int, float]:
        """(events held back so far in this window, its length so far); the count restarts."""
        held, self._held = self._held, 0
        return held, (now - self._start) if self._start is not None else 0.0


class ThrottledLog:
    """Log lines a remote party can trigger (one per message it sends), bounded: the first
    few per window, then one summary line with the count ("… 4995 more in the last 10 s").
    One per call and kind of line; `flush()` at the end of the call reports the remainder."""

    def __init__(
        self,
        logger: logging.Logger,
        now: Callable[[], float],
        what: str,
        first: int = 5,
        window_s: float = 10.0,
    ) -> None:
        self._logger = logger
        self._now = now
        self._what = what
        self._throttle = Throttle(first, window_s)

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        passed, held, span = self._throttle.event(self._now())
        if held:
            self._summary(level, held, span)
        if passed:
            self._logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)

    def flush(self, level: int = logging.INFO) -> None:
        held, span = self._throttle.flush(self._now())
        if held:
            self._summary(level, held, span)

    def _summary(self, level: int, held: int, span: float) -> None:
        self._logger.log(
            level, "… %d more %s in the last %.0f s (not logged one by one)", held, self._what, span
        )
