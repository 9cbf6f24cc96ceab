"""The `events` data channel: JSON messages both ways between the agent and the caller.

Out: sending never blocks the pipeline; before the channel opens messages wait in a bounded
backlog (oldest dropped); once it is closed they are dropped.
In: `{"type": "ping", "t": …}` is answered at once with `{"type": "pong", "t": …}` (the
caller's heartbeat: a dead agent is noticed within a second or two, long before ICE gives
up); `{"type": "mute", "muted": bool}` is handed to `on_mute`. Anything else is logged and
ignored. Log lines name the call through the logging context (logctx.py).
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCDataChannel

log = logging.getLogger(__name__)

CHANNEL_LABEL = "events"
MAX_INBOUND_CHARS = 1024  # callers send tiny control messages; anything longer is junk


class EventChannel:
    def __init__(
        self,
        session_id: str,
        backlog: int = 200,
        on_mute: Callable[[bool], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.on_mute = on_mute
        self._channel: RTCDataChannel | None = None
        self._backlog: collections.deque[str] = collections.deque(maxlen=backlog)

    def attach(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.on("message", self.receive)
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def emit(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        if message.get("type") not in ("link", "pong"):
            log.debug("event %s", text[:200])
        ch = self._channel
        if ch is not None and ch.readyState == "open":
            ch.send(text)
        elif ch is None or ch.readyState == "connecting":
            self._backlog.append(text)

    def receive(self, message: str | bytes) -> None:
        """One message from the caller."""
        data = _parse(message)
        if data is None:
            log.info("ignored a malformed events message")
            return
        kind = data.get("type")
        if kind == "ping":
            t = data.get("t")
            self.emit({"type": "pong", "t": t if isinstance(t, int | float) else None})
        elif kind == "mute":
            muted = data.get("muted")
            if not isinstance(muted, bool):
                log.info("ignored a mute message without a boolean")
                return
            log.info("caller %s", "muted" if muted else "unmuted")
            if self.on_mute is not None:
                self.on_mute(muted)
        else:
            log.debug("ignored events message of type %r", kind)

    def _flush(self) -> None:
        ch = self._channel
        while ch is not None and ch.readyState == "open" and self._backlog:
            ch.send(self._backlog.popleft())


def _parse(message: str | bytes) -> dict[str, Any] | None:
    if len(message) > MAX_INBOUND_CHARS:
        return None
    try:
        data = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
