"""The `events` data channel: JSON messages both ways between the agent and the caller.

Out: sending never blocks the pipeline; before the channel opens messages wait in a bounded
backlog (oldest dropped); once it is closed they are dropped.
In: `{"type": "ping", "t": …}` is answered at once with `{"type": "pong", "t": …}` (the
caller's heartbeat: a dead agent is noticed within a second or two, long before ICE gives
up); `{"type": "mute", "muted": bool}` is handed to `on_mute`. Anything else is logged and
ignored. Log lines name the call through the logging context (logctx.py).

Whatever a peer sends — any size, nesting, encoding or rate — is answered or ignored, never
fatal: `receive` runs inside aiortc's DTLS reader, where one exception ends the call. So a
message is refused by its size and bracket count before it is parsed, parsing failures of
every kind are caught, and `receive` itself lets no exception out. (A text message that is
not UTF-8 would raise in aiortc before `receive` runs: agent/media/patches.py has aiortc
deliver it as bytes, refused here as malformed JSON.) Lines a peer can trigger per message
are throttled (logctx.ThrottledLog) and quote its content escaped.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCDataChannel

from agent.call.logctx import ThrottledLog, escape

log = logging.getLogger(__name__)

CHANNEL_LABEL = "events"
# The longest message a caller has reason to send is a ping, ~40 bytes; nothing it sends
# grows with the call. 1 KiB leaves 25x room for new fields while bounding what one message
# can cost to parse (microseconds). Checked before anything else looks at the message.
# (aiortc has already reassembled the whole message by then: it does not enforce the
# max-message-size it advertises, so that bound lives in the SDP, not here.)
MAX_INBOUND_CHARS = 1024
# Control messages nest one level. Counting brackets bounds the nesting depth before
# json.loads recurses (a deep enough "[[[[…" raises RecursionError, not ValueError).
MAX_INBOUND_BRACKETS = 16
# Pongs are not queued behind this much unsent data: a peer that pings but never reads
# cannot grow our send queue without bound.
MAX_BUFFERED_BYTES = 64 * 1024


class EventChannel:
    def __init__(
        self,
        session_id: str,
        backlog: int = 200,
        on_mute: Callable[[bool], None] | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """`now`: the clock of the log throttles (monotonic seconds)."""
        self.session_id = session_id
        self.on_mute = on_mute
        self._junk_log = ThrottledLog(log, now, "ignored events messages")
        self._mute_log = ThrottledLog(log, now, "mute changes")
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
        """One message from the caller. Never raises: aiortc calls this from the DTLS
        transport's reader, and an exception there ends the call."""
        try:
            self._receive(message)
        except Exception:
            self._junk_log.log(logging.WARNING, "failed to handle an events message", exc_info=True)

    def flush_logs(self) -> None:
        """The call is ending: report what the log throttles held back."""
        self._junk_log.flush()
        self._mute_log.flush()

    def _receive(self, message: str | bytes) -> None:
        data = _parse(message)
        if data is None:
            self._junk_log.log(
                logging.INFO,
                "ignored a malformed events message (%s, %d %s): %s",
                "text" if isinstance(message, str) else "binary",
                len(message),
                "chars" if isinstance(message, str) else "bytes",
                escape(message, 60) if isinstance(message, str) else message[:32].hex(),
            )
            return
        kind = data.get("type")
        if kind == "ping":
            ch = self._channel
            if ch is not None and getattr(ch, "bufferedAmount", 0) > MAX_BUFFERED_BYTES:
                return  # the peer is not reading what we send: no more pongs queued
            t = data.get("t")
            self.emit({"type": "pong", "t": t if isinstance(t, int | float) else None})
        elif kind == "mute":
            muted = data.get("muted")
            if not isinstance(muted, bool):
                self._junk_log.log(logging.INFO, "ignored a mute message without a boolean")
                return
            self._mute_log.log(logging.INFO, "caller %s", "muted" if muted else "unmuted")
            if self.on_mute is not None:
                self.on_mute(muted)
        else:
            log.debug("ignored events message of type %s", escape(kind, 40))

    def _flush(self) -> None:
        ch = self._channel
        while ch is not None and ch.readyState == "open" and self._backlog:
            ch.send(self._backlog.popleft())


def _parse(message: str | bytes) -> dict[str, Any] | None:
    """A control message as a dict, or None for anything else (never raises for input)."""
    if not isinstance(message, str | bytes) or len(message) > MAX_INBOUND_CHARS:
        return None
    if isinstance(message, bytes):
        if message.count(b"[") + message.count(b"{") > MAX_INBOUND_BRACKETS:
            return None
    elif message.count("[") + message.count("{") > MAX_INBOUND_BRACKETS:
        return None
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None
