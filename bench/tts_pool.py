"""TTS pool memory and first-chunk latency: N worker processes (an older ref, by default
`main`) against one process with N slots (this tree), side by side in one run.

    PYTHONPATH=$PWD .venv/bin/python -m bench.tts_pool [--old-ref main] [--slots 3] [--reps 5]

Each variant runs in a child process of its own with the pool's code on its PYTHONPATH (the
old one from `git archive <ref> agent`), so both are measured the same way:

- RSS of the TTS side: the sum of the worker processes' VmRSS, idle (after start and a
  warm-up request), the highest sum sampled every 10 ms during `slots` concurrent
  syntheses, and idle again after them ("after");
- first-chunk latency: a request alone, and `slots` requests at once (median over `reps`
  rounds; for the concurrent case the median of every request's first chunk, and the wall
  time of a round).

Three more rows measure the shared piper session in-process (tts_worker.PiperBackend, as the
worker builds it): onnxruntime's CPU memory arena kept, shrunk after the runs that overlap
another (the worker's choice, see `tts_worker.session_options`), or off. Prints a table and writes
bench/results/tts_pool.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TEXTS = (
    "You said: I would like to book a table for two people tomorrow evening at seven.",
    "The weather in the mountains will be cold and windy, with some snow after midnight.",
    "Your order has been shipped and it should arrive at your door by Thursday afternoon.",
)
RESULTS = Path(__file__).parent / "results" / "tts_pool.json"
SESSION_VARIANTS = {  # name: (CPU memory arena, shrink it after runs that overlap another)
    "arena-keep": (True, False),
    "arena-shrink-extra": (True, True),
    "no-arena": (False, False),
}


def rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """The highest sum of the processes' RSS, sampled every 10 ms on a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(rss_kb(p) for p in self.pids))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- child: the pool (whichever code is on sys.path) ----------------------------------------


async def pool_child(slots: int, reps: int) -> dict[str, Any]:
    from agent.engines.tts_pool import TtsPoolConfig, TtsWorkerPool

    config = TtsPoolConfig(
        workers=slots, first_chunk_timeout_s=30, chunk_timeout_s=30, acquire_timeout_s=60
    )
    pool = TtsWorkerPool(config)
    await pool.start()
    try:
        pids = [int(w.proc.pid) for w in pool._all]

        async def first_chunk(text: str) -> float:
            started = time.monotonic()
            first = None
            async for _ in pool.synthesize(text):
                first = first if first is not None else time.monotonic() - started
            assert first is not None
            return first

        await first_chunk(TEXTS[0])  # warm-up
        await asyncio.sleep(0.5)
        idle_kb = sum(rss_kb(p) for p in pids)
        alone = [await first_chunk(TEXTS[i % len(TEXTS)]) for i in range(reps)]
        together: list[float] = []
        walls: list[float] = []
        with PeakRss(pids) as peak:
            for _ in range(reps):
                started = time.monotonic()
                firsts = await asyncio.gather(
                    *(first_chunk(TEXTS[i % len(TEXTS)]) for i in range(slots))
                )
                walls.append(time.monotonic() - started)
                together += firsts
        await asyncio.sleep(0.5)
        idle_after_kb = sum(rss_kb(p) for p in pids)
        return {
            "processes": len(pids),
            "idle_rss_mb": idle_kb / 1024,
            "busy_rss_mb": peak.peak_kb / 1024,
            "idle_after_rss_mb": idle_after_kb / 1024,
            "first_chunk_alone_s": statistics.median(alone),
            "first_chunk_concurrent_s": statistics.median(together),
            "concurrent_wall_s": statistics.median(walls),
        }
    finally:
        await pool.aclose()


def backend_child(slots: int, reps: int, variant: str) -> dict[str, Any]:
    """The shared piper session in this process, `slots` threads at once."""
    from agent.engines.tts_worker import Cancel, Options, PiperBackend

    arena, shrink_extra = SESSION_VARIANTS[variant]
    backend = PiperBackend(None, arena=arena, shrink_extra=shrink_extra)

    def first_chunk(text: str) -> float:
        started = time.monotonic()
        first = None
        for _ in backend.synthesize(text, Options(), Cancel()):
            first = first if first is not None else time.monotonic() - started
        assert first is not None
        return first

    first_chunk(TEXTS[0])
    idle_kb = rss_kb(os.getpid())
    alone = [first_chunk(TEXTS[i % len(TEXTS)]) for i in range(reps)]
    together: list[float] = []
    walls: list[float] = []
    with PeakRss([os.getpid()]) as peak:
        for _ in range(reps):
            results: list[float] = []

            def one(text: str, into: list[float] = results) -> None:
                into.append(first_chunk(text))

            threads = [
                threading.Thread(target=one, args=(TEXTS[i % len(TEXTS)],)) for i in range(slots)
            ]
            started = time.monotonic()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            walls.append(time.monotonic() - started)
            together += results
    time.sleep(0.5)
    idle_after_kb = rss_kb(os.getpid())
    return {
        "processes": 1,
        "idle_rss_mb": idle_kb / 1024,
        "busy_rss_mb": peak.peak_kb / 1024,
        "idle_after_rss_mb": idle_after_kb / 1024,
        "first_chunk_alone_s": statistics.median(alone),
        "first_chunk_concurrent_s": statistics.median(together),
        "concurrent_wall_s": statistics.median(walls),
    }


# --- parent ---------------------------------------------------------------------------------


def run_child(pythonpath: str, args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run(
        [sys.executable, "-m", "bench.tts_pool", "--child", *args],
        env=env,
        cwd=pythonpath,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def export_old(ref: str, into: Path) -> None:
    """`agent/` (and this bench) as of `ref`, for the old pool to run from."""
    here = Path(__file__).resolve().parent.parent
    archive = into / "old.tar"
    subprocess.run(
        ["git", "-C", str(here), "archive", "-o", str(archive), ref, "agent"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (into / "bench").mkdir()
    (into / "bench" / "__init__.py").write_text("")
    (into / "bench" / "tts_pool.py").write_text(Path(__file__).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-ref", default="main")
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--child", choices=("pool", *SESSION_VARIANTS))
    args = parser.parse_args()
    common = ["--slots", str(args.slots), "--reps", str(args.reps)]
    if args.child == "pool":
        print(json.dumps(asyncio.run(pool_child(args.slots, args.reps))))
        return
    if args.child is not None:
        print(json.dumps(backend_child(args.slots, args.reps, args.child)))
        return
    here = str(Path(__file__).resolve().parent.parent)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_old(args.old_ref, Path(tmp))
        rows[f"pool {args.old_ref}: {args.slots} processes"] = run_child(tmp, ["pool", *common])
        rows[f"pool now: 1 process, {args.slots} slots"] = run_child(here, ["pool", *common])
    rows["session: arena kept"] = run_child(here, ["arena-keep", *common])
    rows["session: arena shrunk (chosen)"] = run_child(here, ["arena-shrink-extra", *common])
    rows["session: no arena"] = run_child(here, ["no-arena", *common])
    print(
        f"{'variant':38} {'procs':>5} {'idle MB':>8} {'busy MB':>8} {'after MB':>8} "
        f"{'1st alone s':>11} {'1st x' + str(args.slots) + ' s':>9} {'wall x' + str(args.slots) + ' s':>10}"
    )
    for name, r in rows.items():
        print(
            f"{name:38} {r['processes']:>5} {r['idle_rss_mb']:>8.0f} {r['busy_rss_mb']:>8.0f} "
            f"{r['idle_after_rss_mb']:>8.0f} "
            f"{r['first_chunk_alone_s']:>11.3f} {r['first_chunk_concurrent_s']:>9.3f} "
            f"{r['concurrent_wall_s']:>10.3f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    report = {"slots": args.slots, "reps": args.reps, "texts": TEXTS, "rows": rows}
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
