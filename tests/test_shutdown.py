"""Tier 3 survival: SIGTERM while the agent is talking ends the process in time, every time.

Each trial starts a real server, places a real call, asks for a story, and sends SIGTERM as
soon as the reply's audio reaches the caller (TTS workers busy, pipes full of audio). The
process must tell the caller, exit with status 0 and be gone within the shutdown deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness.peer import Caller
from harness.speech import STORY_REQUEST
from tests.conftest import run_server
from tests.test_signaling import peer_gone, wait_until

pytestmark = pytest.mark.e2e

TRIALS = int(os.environ.get("RINGBACK_SIGTERM_TRIALS", "20"))
DEADLINE_S = 4.0


async def one_trial(log_dir: Path, story: Any) -> tuple[float, int, bool]:
    """(seconds from SIGTERM to exit, exit status, whether the caller was told)."""
    with run_server(log_dir, "--shutdown-deadline-s", str(DEADLINE_S)) as srv:
        caller = Caller(srv.url)
        talk: asyncio.Task[Any] | None = None
        try:
            await caller.connect()
            talk = asyncio.get_running_loop().create_task(caller.say("story", story, 30.0))
            # Wait for the reply to be playing (a `reply` event: its first sentence started).
            playing = await caller.wait_event(lambda d: d.get("type") == "reply", 0, 20)
            assert playing is not None, [e.data.get("type") for e in caller.events]
            await asyncio.sleep(0.3)  # audio in flight: TTS workers and pipes are busy
            t0 = time.monotonic()
            srv.proc.terminate()
            exited = await wait_until(lambda: srv.proc.poll() is not None, DEADLINE_S + 5)
            elapsed = time.monotonic() - t0
            assert exited, f"still running {elapsed:.1f} s after SIGTERM:\n{srv.log()[-3000:]}"
            await wait_until(lambda: peer_gone(caller), 5)
            told = any(e.data.get("type") == "shutdown" for e in caller.events)
            return elapsed, int(srv.proc.returncode or 0), told
        finally:
            if talk is not None:
                talk.cancel()
                await asyncio.gather(talk, return_exceptions=True)
            await caller.close()


async def test_sigterm_mid_reply_exits_in_time_every_time(
    tmp_path: Path, speech: dict[str, Any]
) -> None:
    results = []
    for i in range(TRIALS):
        log_dir = tmp_path / f"trial-{i}"
        log_dir.mkdir()
        results.append(await one_trial(log_dir, speech[STORY_REQUEST]))
    times = sorted(r[0] for r in results)
    print(f"SIGTERM → exit over {TRIALS} trials: max {times[-1]:.2f} s, median "
          f"{times[len(times) // 2]:.2f} s")  # fmt: skip
    assert all(r[1] == 0 for r in results), results
    assert times[-1] <= DEADLINE_S + 0.5, results  # + process start-up of the timer's exit
    assert all(r[2] for r in results), f"a caller was not told: {results}"
