"""Whisper final-pass settings: time and accuracy per encoder window, threads and callers.

    python -m bench.whisper_settings [--quick] [--seed N] [--json bench/results/whisper_settings.json]

The audio is the evaluation set (harness/evalset.py; "quick": 7 items, "full": 88), decimated
to 16 kHz the way the server does and cut the way the listener hands an utterance to the
final pass: from the speech onset minus the pre-roll to the end of the speech plus the pause
that triggers the pass. Noisy items keep their noise inside that cut.

Each setting is one `WhisperFinal` (agent/engines/whisper_final.py), warmed once, that
transcribes every item; a row reports the wall time per call (p50/p90/max), the mean WER over
items (all, clean, noisy) and the calls that hit the length cap (`loops`: tiny.en repeating
itself). The settings:

- the encoder window: Whisper's usual 30 s, the server's default 10 s, and 0 (the utterance
  alone), at `cpu_threads=1`;
- the 10 s window at `cpu_threads=2`;
- two callers on one model (`inter_threads=2`, `cpu_threads=1`), as the server's pool runs
  passes for two calls at once: the items are dealt to two threads, so two are transcribed
  at a time. Its per-call times include waiting for the CPU the other call uses; its
  `wall_s` is the whole set, against `sequential_wall_s` for the same model one call at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio import ASR_RATE_HZ, OUT_RATE_HZ, Decimator, Pcm16
from agent.conversation.listener import ListenerConfig
from agent.engines.whisper_final import WhisperFinal, model_dir
from harness import evalset
from harness.evalset import EvalItem
from harness.speech import synthesizer
from harness.wer import wer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "whisper_settings.json"
PREROLL_S = ListenerConfig().preroll_ms / 1000  # kept before the detected onset
TRIGGER_PAUSE_S = 0.16  # the silence after the speech that starts the final pass
CALLERS = 2  # threads in the concurrent setting


@dataclass(frozen=True)
class Setting:
    name: str
    window_s: float  # 0 = the utterance alone
    cpu_threads: int
    inter_threads: int = 1
    concurrent: bool = False  # CALLERS threads share the model


SETTINGS = [
    Setting("window 30 s", 30.0, 1),
    Setting("window 10 s", 10.0, 1),
    Setting("trimmed", 0.0, 1),
    Setting("window 10 s, 2 threads", 10.0, 2),
    Setting("window 10 s, 2 callers", 10.0, 1, inter_threads=2, concurrent=True),
]


@dataclass(frozen=True)
class Clip:
    """One utterance as the final pass receives it."""

    label: str
    text: str
    condition: str
    pcm16: Pcm16


@dataclass(frozen=True)
class Pass:
    heard: str
    seconds: float  # wall time of the call
    loop: bool  # hit the length cap


def clip_of(item: EvalItem) -> Clip:
    pcm16 = Decimator(OUT_RATE_HZ // ASR_RATE_HZ).process(item.pcm48)
    start = max(0, round((item.speech_start_s - PREROLL_S) * ASR_RATE_HZ))
    end = min(pcm16.size, round((item.speech_end_s + TRIGGER_PAUSE_S) * ASR_RATE_HZ))
    return Clip(item.label, item.text, item.condition, pcm16[start:end])


async def build_items(seed: int, size: evalset.Size) -> list[EvalItem]:
    async with synthesizer("piper") as pool:
        return await evalset.build(seed, size, pool)


def transcribe(model: WhisperFinal, clip: Clip) -> Pass:
    t0 = time.perf_counter()
    result = model.transcribe_detailed(clip.pcm16)
    return Pass(result.text, time.perf_counter() - t0, result.hit_max_length)


def run_sequential(model: WhisperFinal, clips: Sequence[Clip]) -> tuple[list[Pass], float]:
    t0 = time.perf_counter()
    passes = [transcribe(model, clip) for clip in clips]
    return passes, time.perf_counter() - t0


def run_concurrent(model: WhisperFinal, clips: Sequence[Clip]) -> tuple[list[Pass], float]:
    """The clips dealt to CALLERS threads in order, so CALLERS calls run at a time."""
    with concurrent.futures.ThreadPoolExecutor(CALLERS, thread_name_prefix="caller") as pool:
        t0 = time.perf_counter()
        passes = list(pool.map(lambda clip: transcribe(model, clip), clips))
        wall_s = time.perf_counter() - t0
    return passes, wall_s


def _ms(seconds: list[float], q: float) -> float:
    """Percentile `q` (0-100, linear interpolation) in ms."""
    return round(1000 * float(np.percentile(seconds, q)), 1)


def _mean_wer(clips: Sequence[Clip], passes: Sequence[Pass], clean: bool | None) -> float | None:
    errors = [
        wer(clip.text, p.heard)
        for clip, p in zip(clips, passes, strict=True)
        if clean is None or (clip.condition == "clean") == clean
    ]
    return round(statistics.fmean(errors), 4) if errors else None


def measure(setting: Setting, clips: Sequence[Clip]) -> dict[str, Any]:
    model = WhisperFinal(
        model_dir(),
        setting.cpu_threads,
        inter_threads=setting.inter_threads,
        window_s=setting.window_s,
    )
    model.warm()
    sequential_wall_s: float | None = None
    if setting.concurrent:
        # Warm every worker (each keeps its own buffers), then the one-at-a-time baseline.
        run_concurrent(model, clips[:CALLERS])
        _, sequential_wall_s = run_sequential(model, clips)
        passes, wall_s = run_concurrent(model, clips)
    else:
        passes, wall_s = run_sequential(model, clips)
    seconds = [p.seconds for p in passes]
    return {
        "name": setting.name,
        "window_s": setting.window_s,
        "cpu_threads": setting.cpu_threads,
        "inter_threads": setting.inter_threads,
        "concurrent": setting.concurrent,
        "ms_p50": _ms(seconds, 50),
        "ms_p90": _ms(seconds, 90),
        "ms_max": _ms(seconds, 100),
        "wer": _mean_wer(clips, passes, None),
        "wer_clean": _mean_wer(clips, passes, True),
        "wer_noisy": _mean_wer(clips, passes, False),
        "loops": sum(p.loop for p in passes),
        "items": len(passes),
        "wall_s": round(wall_s, 3),
        "sequential_wall_s": None if sequential_wall_s is None else round(sequential_wall_s, 3),
        "heard": [
            {"label": c.label, "heard": p.heard, "ms": round(1000 * p.seconds, 1), "loop": p.loop}
            for c, p in zip(clips, passes, strict=True)
        ],
    }


def run(seed: int, size: evalset.Size) -> dict[str, Any]:
    """Every setting over the evaluation set of `seed` and `size`."""
    t0 = time.perf_counter()
    items = asyncio.run(build_items(seed, size))
    clips = [clip_of(item) for item in items]
    audio_s = sum(c.pcm16.size for c in clips) / ASR_RATE_HZ
    print(
        f"{len(clips)} utterances, {audio_s:.0f} s of audio "
        f"(built in {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    rows = []
    for setting in SETTINGS:
        rows.append(measure(setting, clips))
        print(f"  {setting.name}: done", flush=True)
    return {
        "seed": seed,
        "size": size,
        "items": [
            {
                "label": item.label,
                "condition": item.condition,
                "text": item.text,
                "audio_s": round(clip.pcm16.size / ASR_RATE_HZ, 3),
                "sha256": item.digest(),
            }
            for item, clip in zip(items, clips, strict=True)
        ],
        "settings": rows,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def print_table(result: dict[str, Any]) -> None:
    def fmt(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    print(
        f"\n{'setting':<24} {'window':>6} {'cpu':>3} {'inter':>5} {'p50 ms':>7} {'p90':>6} "
        f"{'max':>6} {'WER':>5} {'clean':>5} {'noisy':>5} {'loops':>5} {'wall s':>6}"
    )
    for r in result["settings"]:
        window = "trim" if r["window_s"] == 0 else f"{r['window_s']:g} s"
        wall = fmt(r["wall_s"], 2)
        if r["sequential_wall_s"] is not None:
            wall += f" (one at a time {r['sequential_wall_s']:.2f})"
        print(
            f"{r['name']:<24} {window:>6} {r['cpu_threads']:>3} {r['inter_threads']:>5} "
            f"{fmt(r['ms_p50']):>7} {fmt(r['ms_p90']):>6} {fmt(r['ms_max']):>6} "
            f"{fmt(r['wer'], 3):>5} {fmt(r['wer_clean'], 3):>5} {fmt(r['wer_noisy'], 3):>5} "
            f"{r['loops']:>3}/{r['items']:<2} {wall:>6}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small evaluation set (7 items)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    result = run(args.seed, "quick" if args.quick else "full")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(
        f"(ms per call incl. log-mel; WER: mean over items; loops: calls that hit the length "
        f"cap; {result['machine']['cpus']} CPUs; JSON: {args.json})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
