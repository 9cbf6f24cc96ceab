"""The `events` data channel: JSON messages to the peer, buffered until the channel opens.

Sending never blocks the pipeline: before the channel opens messages wait in a bounded
backlog (oldest dropped); once it is closed they are dropped.
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

from aiortc import RTCDataChannel

log = logging.getLogger(__name__)

CHANNEL_LABEL = "events"


class EventChannel:
    def __init__(self, session_id: str, backlog: int = 200) -> None:
        self.session_id = session_id
        self._channel: RTCDataChannel | None = None
        self._backlog: collections.deque[str] = collections.deque(maxlen=backlog)

    def attach(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def emit(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        if message.get("type") != "link":
            log.debug("[%s] event %s", self.session_id, text[:200])
        ch = self._channel
        if ch is not None and ch.readyState == "open":
            ch.send(text)
        elif ch is None or ch.readyState == "connecting":
            self._backlog.append(text)

    def _flush(self) -> None:
        ch = self._channel
        while ch is not None and ch.readyState == "open" and self._backlog:
            ch.send(self._backlog.popleft())
