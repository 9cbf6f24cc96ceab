"""Whisper final-pass settings: time and accuracy per encoder window, threads and callers.

    python -m bench.whisper_settings [--quick] [--seed N] [--json bench/results/whisper_settings.json]

The audio is the evaluation set (harness/evalset.py; "quick": 7 items, "full": 88), decimated
to 16 kHz the way the server does and cut the way the listener hands an utterance to the
final pass: from the speech onset minus the pre-roll to the end of the speech plus the pause
that triggers the pass. Noisy items keep their noise inside that cut.

Each setting is one `WhisperFinal` (agent/engines/whisper_final.py), warmed once, that
transcribes every item; a row reports the wall time per call (p50/p90/max), the mean WER over
items (all, clean, noisy), the calls that hit the length cap (`loops`) and the calls that
heard more words than were said (`overlong`). tiny.en on too short a window starts the
sentence again after its end ("What is 20 divided by 4? What is twenty divided by"); the
n-gram guard usually ends such a repeat before the cap, so `overlong` is what shows it. The
settings:

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
from harness.wer import wer, words

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


def repeated(runs: list[tuple[list[Pass], float]]) -> tuple[list[Pass], float, bool]:
    """Several runs over the same clips as one: each call's median time, the median wall time,
    the first run's words, and whether every run heard the same words (greedy decoding
    should, also with two callers at once)."""
    first, _ = runs[0]
    passes = [
        Pass(p.heard, statistics.median(run[i].seconds for run, _ in runs), p.loop)
        for i, p in enumerate(first)
    ]
    same = all([p.heard for p in run] == [p.heard for p in first] for run, _ in runs)
    return passes, statistics.median(wall for _, wall in runs), same


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


def measure(setting: Setting, clips: Sequence[Clip], repeats: int) -> dict[str, Any]:
    model = WhisperFinal(
        model_dir(),
        setting.cpu_threads,
        inter_threads=setting.inter_threads,
        window_s=setting.window_s,
    )
    model.warm()
    sequential = repeated([run_sequential(model, clips) for _ in range(repeats)])
    passes, wall_s, same_words = sequential
    sequential_wall_s: float | None = None
    if setting.concurrent:
        # Warm every worker (each keeps its own buffers); the sequential runs above, on this
        # same model, are the one-at-a-time baseline.
        run_concurrent(model, clips[:CALLERS])
        passes, wall_s, same_words = repeated(
            [run_concurrent(model, clips) for _ in range(repeats)]
        )
        heard_alone = [p.heard for p in sequential[0]]
        same_words = same_words and sequential[2] and heard_alone == [p.heard for p in passes]
        sequential_wall_s = sequential[1]
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
        "overlong": sum(
            len(words(p.heard)) > len(words(c.text)) for c, p in zip(clips, passes, strict=True)
        ),
        "items": len(passes),
        "wall_s": round(wall_s, 3),
        "sequential_wall_s": None if sequential_wall_s is None else round(sequential_wall_s, 3),
        "same_words": same_words,
        "repeats": repeats,
        "heard": [
            {"label": c.label, "heard": p.heard, "ms": round(1000 * p.seconds, 1), "loop": p.loop}
            for c, p in zip(clips, passes, strict=True)
        ],
    }


def run(seed: int, size: evalset.Size, repeats: int) -> dict[str, Any]:
    """Every setting over the evaluation set of `seed` and `size`, each `repeats` times."""
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
        rows.append(measure(setting, clips, repeats))
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
        f"\n{'setting':<24} {'window':>6} {'cpu':>3} {'inter':>5} {'p50 ms':>7} {'p90':>5} "
        f"{'max':>5} {'WER':>6} {'clean':>6} {'noisy':>6} {'loops':>5} {'overlong':>8} {'wall s':>7} "
        f"{'1 at a time':>11}"
    )
    for r in result["settings"]:
        window = "trim" if r["window_s"] == 0 else f"{r['window_s']:g} s"
        loops = f"{r['loops']}/{r['items']}"
        overlong = f"{r['overlong']}/{r['items']}"
        print(
            f"{r['name']:<24} {window:>6} {r['cpu_threads']:>3} {r['inter_threads']:>5} "
            f"{fmt(r['ms_p50']):>7} {fmt(r['ms_p90']):>5} {fmt(r['ms_max']):>5} "
            f"{fmt(r['wer'], 3):>6} {fmt(r['wer_clean'], 3):>6} {fmt(r['wer_noisy'], 3):>6} "
            f"{loops:>5} {overlong:>8} {fmt(r['wall_s'], 2):>7} {fmt(r['sequential_wall_s'], 2):>11}"
            + ("" if r["same_words"] else "  (words differ between runs!)")
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small evaluation set (7 items)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="runs per setting (median times)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    result = run(args.seed, "quick" if args.quick else "full", args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(
        f"(ms per call incl. log-mel, median of {args.repeats} runs; WER: mean over items; "
        f"loops: calls that hit the length cap; overlong: more words heard than said; wall s: the whole set; 1 at a time: the same "
        f"model without a second caller; {result['machine']['cpus']} CPUs; JSON: {args.json})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
