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
from collections.abc import Iterator
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
