"""CPU priority of the engine worker processes, below the server's event loop.

The event loop carries every call's audio in 20 ms frames: if the kernel leaves it waiting
while engines fill both cores, inbound packets miss their playout slot and outbound frames
go late for everyone at once. Engine work is bursty (a whisper pass, a sentence of TTS) and
a few milliseconds' delay there costs one turn a few milliseconds, so each worker process
lowers its own priority (nice) when it starts: a little for the engines on a reply's
critical path, more for live captions, which nothing waits for.
"""

from __future__ import annotations

import contextlib
import os

CRITICAL_PATH = 4  # whisper's final pass, TTS
CAPTIONS = 10  # pocketsphinx partials


def lower_priority(niceness: int) -> None:
    """Make this process nicer by `niceness` (never an error: e.g. a container may refuse)."""
    with contextlib.suppress(OSError):
        os.nice(niceness)
