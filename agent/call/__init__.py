"""One call and the server-wide pieces it is built from.

config.py      the typed configuration, built once at the edge
engines.py     builds the configured engines (shared by every call) and closes them
session.py     wiring only: media → conversation → media, events to the data channel
events.py      the `events` data channel (bounded backlog until it opens)
stats.py       server-wide counters and recent turn stages for /metrics
logctx.py      the session id on every log line emitted while handling a call
selfcheck.py   start-up checks: aiortc patch points and model file hashes
"""
