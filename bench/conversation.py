"""Voice-to-voice benchmark: a real server process, the headless caller, N spoken turns.

    python -m bench.conversation [--turns 20] [--json bench/results/conversation.json]
                                 [--variant NAME=ARGS ...]

Each variant is a `ringback serve` configuration measured in the same run (default: the
defaults, and the defaults without speculation), so their numbers can be compared side by
side. Prints per-variant p50/p90/p99 of voice-to-voice latency and of the server's stages,
and the word error rate of what the agent heard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from agent.metrics import summarize
from harness.cli import report
from harness.peer import Caller, TurnResult
from harness.server import ROOT, run_server
from harness.speech import QUESTIONS, prepare
from harness.wer import wer

STAGES = (
    "eou_delay_ms",
    "asr_complete_ms",
    "llm_first_token_ms",
    "tts_first_chunk_ms",
    "time_to_first_audio_ms",
)
DEFAULT_VARIANTS = ["default=", "no-speculation=--no-speculation"]


async def run_variant(url: str, utterances: list[Any]) -> list[TurnResult]:
    caller = Caller(url)
    results = []
    try:
        await caller.connect()
        for u in utterances:
            results.append(await caller.say(u.label, u.pcm48k))
    finally:
        await caller.close()
    return results


def stage_summary(results: list[TurnResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage in STAGES:
        values = [r.server[stage] for r in results if isinstance(r.server.get(stage), float)]
        out.update(summarize(values, stage))
    errors = [wer(r.label, r.heard or "") for r in results]
    out["wer"] = sum(errors) / len(errors) if errors else None
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=SERVE_ARGS (repeatable); default: with and without speculation",
    )
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "conversation.json")
    args = p.parse_args()
    variants = args.variant or DEFAULT_VARIANTS
    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    utterances = asyncio.run(prepare([], texts))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"turns": args.turns, "variants": {}}
    for spec in variants:
        name, _, serve_args = spec.partition("=")
        with run_server(args.json.parent, *shlex.split(serve_args), port=args.port) as server:
            results = asyncio.run(run_variant(server.url, utterances))
        data = report(results)
        data["stages"] = stage_summary(results)
        data["serve_args"] = serve_args
        out["variants"][name] = data
    out["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.json.write_text(json.dumps(out, indent=2))

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(
        f"{'variant':<16} {'v2v p50':>8} {'p90':>6} {'p99':>6}  {'ttfa p50':>8}  "
        f"{'eou p50':>7}  {'asr p50':>7}  {'llm p50':>7}  {'tts p50':>7}  {'WER':>5}  answered"
    )
    for name, data in out["variants"].items():
        s, st = data["summary"], data["stages"]
        print(
            f"{name:<16} {fmt(s['v2v_ms_p50']):>8} {fmt(s['v2v_ms_p90']):>6} "
            f"{fmt(s['v2v_ms_p99']):>6}  {fmt(st['time_to_first_audio_ms_p50']):>8}  "
            f"{fmt(st['eou_delay_ms_p50']):>7}  {fmt(st['asr_complete_ms_p50']):>7}  "
            f"{fmt(st['llm_first_token_ms_p50']):>7}  {fmt(st['tts_first_chunk_ms_p50']):>7}  "
            f"{st['wer']:>5.2f}  {s['answered']}/{s['turns']}"
        )
    print(f"(server stages in ms after the end of speech; JSON: {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
