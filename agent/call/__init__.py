"""One call and the server-wide pieces it is built from.

config.py      the typed configuration, built once at the edge
engines.py     builds the engines every call shares (hash-checked models) and closes them
session.py     wiring only: media → conversation → media, events to the data channel
events.py      the `events` data channel (bounded backlog until it opens; ping, mute)
greeting.py    the chime or spoken greeting at the start of a call, then the `ready` event
mute.py        the caller's mute: inbound audio replaced by silence while muted
logctx.py      the session id on every log line emitted while handling a call
stats.py       server-wide metrics (prometheus-client) and recent turn stages for /metrics
loop_lag.py    event-loop lag: how late the loop wakes a short timer
selfcheck.py   start-up checks: aiortc patch points and model file hashes
"""
