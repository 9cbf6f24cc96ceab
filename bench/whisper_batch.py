"""The shared whisper pool under load: batched passes against passes run one by one.

    python -m bench.whisper_batch [--quick] [--repeats N] [--json bench/results/whisper_batch.json]

The audio is the evaluation set's quick items (harness/evalset.py, seed 1: synthesized
speech, clean and noisy), cut the way the listener hands an utterance to the final pass
(bench/whisper_settings.py). For each pool layout, N passes (N = 1, 4, 8: N calls ending a
turn at the same moment) are given to a started `WhisperPool` at once; a row reports the
wall time until the last is back, passes/s (N / wall), the per-pass latency (submit → result,
mean and max) and the batches the pool ran. Every layout is run twice in the same run:
batched (`max_batch=8`) and one by one (`max_batch=1`), so the ratio is read within one run.

Layouts: one process × 2 CTranslate2 threads, two processes × 1 thread (the old default).
Also reported per layout: the RSS of each worker process (/proc, after the runs) and the
WER of every result against its own item's words (each result must reach its caller).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.engines.priority import Priority, Urgency
from agent.engines.whisper_pool import WhisperConfig, WhisperPool
from bench.whisper_settings import Clip, build_items, clip_of
from harness.wer import wer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "whisper_batch.json"
WAITING = (1, 4, 8)


@dataclass(frozen=True)
class Layout:
    name: str
    workers: int
    cpu_threads: int


LAYOUTS = [Layout("1 process x 2 threads", 1, 2), Layout("2 processes x 1 thread", 2, 1)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def burst(pool: WhisperPool, clips: Sequence[Clip]) -> tuple[float, list[float], float]:
    """All clips at once: (wall s, latency s of each, WER mean against each clip's words)."""
    t0 = time.perf_counter()

    async def one(clip: Clip) -> tuple[float, float]:
        result = await pool.transcribe(clip.pcm16, Urgency(Priority.TURN_FINAL))
        return time.perf_counter() - t0, wer(clip.text, result.text)

    done = await asyncio.gather(*(one(c) for c in clips))
    return max(t for t, _ in done), [t for t, _ in done], statistics.mean(w for _, w in done)


async def measure(
    layout: Layout, max_batch: int, clips: list[Clip], repeats: int
) -> dict[str, Any]:
    pool = WhisperPool(
        WhisperConfig(workers=layout.workers, cpu_threads=layout.cpu_threads, max_batch=max_batch)
    )
    await pool.start()
    try:
        rows = []
        for n in WAITING:
            group = [clips[i % len(clips)] for i in range(n)]
            before = sum(pool.batch_sizes.values())
            runs = [await burst(pool, group) for _ in range(repeats)]
            walls = [w for w, _, _ in runs]
            lat = [x for _, ls, _ in runs for x in ls]
            rows.append({
                "waiting": n,
                "wall_ms": round(statistics.median(walls) * 1000, 1),
                "passes_per_s": round(n / statistics.median(walls), 2),
                "latency_ms_mean": round(statistics.mean(lat) * 1000, 1),
                "latency_ms_max": round(max(lat) * 1000, 1),
                "batches_per_burst": (sum(pool.batch_sizes.values()) - before) / repeats,
                "wer": round(statistics.mean(w for _, _, w in runs), 3),
            })  # fmt: skip
        rss = [round(rss_mb(pid), 1) for pid in pool.worker_pids]
    finally:
        await pool.aclose()
    return {
        "layout": layout.name,
        "workers": layout.workers,
        "cpu_threads": layout.cpu_threads,
        "max_batch": max_batch,
        "worker_rss_mb": rss,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'layout':<24} {'mode':<10} {'N':>2} {'wall ms':>8} {'pass/s':>7} "
        f"{'lat mean':>8} {'lat max':>8} {'batches':>7} {'WER':>5}  worker RSS MB"
    ]
    for run in result["runs"]:
        mode = "batched" if run["max_batch"] > 1 else "one-by-one"
        for r in run["rows"]:
            lines.append(
                f"{run['layout']:<24} {mode:<10} {r['waiting']:>2} {r['wall_ms']:>8.0f} "
                f"{r['passes_per_s']:>7.2f} {r['latency_ms_mean']:>8.0f} "
                f"{r['latency_ms_max']:>8.0f} {r['batches_per_burst']:>7.1f} {r['wer']:>5.2f}  "
                f"{run['worker_rss_mb']}"
            )
    return "\n".join(lines)


async def run(repeats: int, quick: bool) -> dict[str, Any]:
    clips = [clip_of(item) for item in await build_items(1, "quick")]
    runs = []
    layouts = LAYOUTS[:1] if quick else LAYOUTS
    for layout in layouts:
        for max_batch in (8, 1):
            runs.append(await measure(layout, max_batch, clips, repeats))
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "items": len(clips),
        "repeats": repeats,
        "runs": runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one layout (the default), 1 repeat")
    p.add_argument("--repeats", type=int, default=3, help="bursts per N (median wall time)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    result = asyncio.run(run(1 if args.quick else args.repeats, args.quick))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"({result['machine']['cpus']} CPUs; {result['items']} items; JSON: {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
