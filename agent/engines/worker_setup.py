"""What every engine worker process (ASR, whisper, TTS) does first: `become_engine_worker`.

- A lower CPU priority than the server. The event loop carries every call's audio in 20 ms
  frames: if the kernel leaves it waiting while engines fill both cores, inbound packets
  miss their playout slot and outbound frames go late for everyone at once. Engine work is
  bursty (a whisper pass, a sentence of TTS) and a few milliseconds' delay there costs one
  turn a few milliseconds. So a worker is a little nicer on a reply's critical path (whisper,
  TTS) and much nicer for live captions, which nothing waits for. Measured with the capacity
  benchmark at 8 calls: loop lag p99 100 → 10 ms, late inbound packets 7 % → 0.
- Deaf to SIGINT: a Ctrl-C in a terminal reaches the whole process group, and the server,
  which drains its calls first, ends its workers itself.
- Gone with the server: a worker whose server was killed (SIGKILL, OOM) must not live on
  holding a model in memory. Pipe workers see their stdin close, but only when they next
  read it: a worker busy in a long computation (a whisper batch) also asks the kernel for
  SIGKILL when its parent dies (`parent_pid`, Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal

CRITICAL_PATH = 4  # niceness: whisper's final pass, TTS
CAPTIONS = 10  # niceness: pocketsphinx partials

_PR_SET_PDEATHSIG = 1


def become_engine_worker(niceness: int, parent_pid: int | None = None) -> None:
    """Call first thing in an engine worker process. With `parent_pid`, die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # a container may refuse
        os.nice(niceness)
    if parent_pid is not None:
        _die_with(parent_pid)


def _die_with(parent_pid: int) -> None:
    name = ctypes.util.find_library("c")
    prctl = getattr(ctypes.CDLL(name), "prctl", None) if name else None
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before we asked
        os._exit(1)
