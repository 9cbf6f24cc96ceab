"""Soak: many calls, many abrupt disconnects, then count what the server kept.

    python -m bench.soak [--quick] [--waves 20] [--calls 4] [--vanish 2]
                         [--json bench/results/soak.json]

A real `ringback serve` process. Each wave places `--calls` concurrent calls that each say
one question and hang up properly, then `--vanish` callers in a child process that is
SIGKILLed mid-call (no DELETE, no DTLS close: the network just goes quiet). Measured from
outside the server (/proc and /healthz):

- sessions left, and how long each vanished session took to be freed (target ≤ 10 s);
- server threads, open file descriptors and asyncio tasks: before vs after (leaks);
- RSS: baseline (after a warm-up call), peak, and after the load (target drift < 20 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness.peer import Caller
from harness.server import ROOT, Server, run_server
from harness.speech import QUESTIONS, prepare

VANISHING_CALLERS = """
import asyncio, sys
from harness.peer import Caller

async def main() -> None:
    callers = [Caller(sys.argv[1]) for _ in range(int(sys.argv[2]))]
    await asyncio.gather(*(c.connect() for c in callers))
    print("connected", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def snapshot(pid: int, url: str) -> dict[str, float]:
    """The server's RSS, threads, file descriptors and asyncio tasks right now."""
    return {**proc_stats(pid), "tasks": float(health(url)["tasks"])}


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
        return dict(json.load(r))


async def wait_sessions(url: str, n: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while health(url)["sessions"] != n:
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"sessions did not reach {n} in {timeout_s} s: {health(url)}")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def talk(url: str, label: str, pcm: Any) -> bool:
    caller = Caller(url)
    try:
        await caller.connect()
        result = await caller.say(label, pcm, 30.0)
        return result.reply is not None
    finally:
        await caller.close()


async def vanish(url: str, n: int) -> float:
    """n callers in a child process, SIGKILLed once connected: seconds until all are freed."""
    before = health(url)["sessions"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", VANISHING_CALLERS, url, str(n), cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"connected":
            raise RuntimeError(f"vanishing callers did not connect: {line!r}")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        return await wait_sessions(url, max(0, before), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def soak(server: Server, waves: int, calls: int, vanishing: int) -> dict[str, Any]:
    utterances = await prepare([], QUESTIONS[:calls])
    pid = server.proc.pid
    await talk(server.url, utterances[0].label, utterances[0].pcm48k)  # warm-up
    await wait_sessions(server.url, 0, 15)
    baseline = snapshot(pid, server.url)
    peak_rss, answered, placed, freed_s = baseline["rss_mb"], 0, 0, []
    for wave in range(waves):
        results = await asyncio.gather(
            *(talk(server.url, u.label, u.pcm48k) for u in utterances), return_exceptions=True
        )
        placed += len(results)
        answered += sum(1 for r in results if r is True)
        peak_rss = max(peak_rss, proc_stats(pid)["rss_mb"])
        if vanishing:
            freed_s.append(await vanish(server.url, vanishing))
        print(
            f"wave {wave + 1}/{waves}: {answered}/{placed} answered, "
            f"vanished freed in {freed_s[-1] if freed_s else 0:.1f} s, "
            f"rss {proc_stats(pid)['rss_mb']:.0f} MB",
            flush=True,
        )
    await wait_sessions(server.url, 0, 15)
    await asyncio.sleep(2)  # let closing transports and threads wind down
    after = snapshot(pid, server.url)
    return {
        "waves": waves,
        "calls_placed": placed,
        "calls_answered": answered,
        "vanished": vanishing * waves,
        "vanished_freed_s_max": max(freed_s, default=0.0),
        "sessions_left": health(server.url)["sessions"],
        "baseline": baseline,
        "after": after,
        "rss_peak_mb": peak_rss,
        "rss_drift_mb": after["rss_mb"] - baseline["rss_mb"],
        "threads_leaked": after["threads"] - baseline["threads"],
        "fds_leaked": after["fds"] - baseline["fds"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 waves of 2 calls, 1 vanishing")
    parser.add_argument("--waves", type=int, default=20)
    parser.add_argument("--calls", type=int, default=4, help="concurrent talking calls a wave")
    parser.add_argument("--vanish", type=int, default=2, help="SIGKILLed callers a wave")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/soak.json")
    a = parser.parse_args()
    if a.quick:
        a.waves, a.calls, a.vanish = 2, 2, 1
    a.json.parent.mkdir(parents=True, exist_ok=True)
    with run_server(a.json.parent, "--max-sessions", str(a.calls + a.vanish + 2)) as server:
        result = asyncio.run(soak(server, a.waves, a.calls, a.vanish))
    a.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
