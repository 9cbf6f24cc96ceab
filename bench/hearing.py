"""Hearing benchmark: the evaluation set (harness/evalset.py) spoken to a real server.

    python -m bench.hearing [--quick] [--seed N] [--json bench/results/hearing.json]
                            [--variant NAME=ARGS ...]

Each variant is a `ringback serve` configuration (ARGS are extra `serve` flags), started once
and called once over loopback; the items are said in sequence, each after the agent has
settled from the one before. Per variant × condition it reports:

- WER of what the agent heard (every non-empty final of the utterance, joined) against the
  reference words;
- voice-to-voice p50/p90/p99, from the end of the speech (not of the noise after it) to the
  first reply sound, and how many items were answered;
- false cut-offs: pause items whose turn the agent ended at the pause as the user experiences
  it (it answered out loud before the user finished, or its answer lacks most of the words
  after the pause; a turn ended early and taken back unheard is not one), out of the pause
  items heard at all; and "early": any item the agent answered out loud before the user had
  finished (a plain sentence can be cut at a comma, too);
- the clean items once more from a caller whose uplink loses 5 % of its packets in short
  bursts, with 30 ms of jitter (condition `clean+loss5`);
- from the server's per-turn metrics, when present: `asr_queue_wait_ms` (p50),
  `final_passes` and `final_passes_wasted` (totals).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from agent.metrics import summarize
from harness import evalset
from harness.evalset import EvalItem
from harness.impair import Impairment
from harness.peer import Caller, TurnResult
from harness.server import ROOT, run_server
from harness.speech import synthesizer
from harness.wer import wer, words

# NAME=SERVE_ARGS, measured side by side in one run: the defaults (hybrid ASR, Silero
# detector, an end of turn that reads the words); the same with a fixed end-of-turn silence;
# and the agent before them (pocketsphinx, webrtcvad, a fixed silence).
DEFAULT_VARIANTS = [
    "hybrid=",
    "hybrid-silence=--turn-end silence",
    "pocketsphinx=--asr pocketsphinx --speech-detector webrtcvad --turn-end silence",
]
# The uplink impairment of the lossy condition (harness/impair.py): 5 % loss in bursts of
# about two packets, plus 30 ms of jitter, seeded.
LOSS = "burst=2.6:50,jitter=30,seed=7"
LOSS_CONDITION = "clean+loss5"
SERVER_KEYS = ("asr_queue_wait_ms", "final_passes", "final_passes_wasted")
TURN_TIMEOUT_S = 20.0  # per item, after the whole recording was sent
GAP_S = 1.0  # quiet between items, after the agent has settled


async def build_items(seed: int, size: evalset.Size) -> list[EvalItem]:
    async with synthesizer("piper") as pool:
        return await evalset.build(seed, size, pool)


async def run_variant(
    url: str, items: list[EvalItem], impairment: Impairment | None = None
) -> list[TurnResult]:
    caller = Caller(url, impairment=impairment)
    results = []
    try:
        await caller.connect()
        for item in items:
            result = await caller.say(
                item.label, item.pcm48, TURN_TIMEOUT_S, speech_end_s=item.speech_end_s
            )
            results.append(result)
            print(f"  {_describe(item, result)}", flush=True)
            await asyncio.sleep(GAP_S)
    finally:
        await caller.close()
    return results


def heard_text(result: TurnResult) -> str:
    """What the agent answered: the reported turn's words (a turn the user went on with
    covers the whole utterance), else every final heard."""
    return result.heard or " ".join(result.finals)


def cut_off(item: EvalItem, result: TurnResult) -> bool | None:
    """Did the agent end a pause item's turn at its pause, as the user experiences it: it
    answered out loud before the user had finished, or its answer is to the words before the
    pause only? A turn ended at the pause and taken back before any reply was heard is not a
    cut-off. None: not a pause item, or nothing heard."""
    if item.kind != "pause" or not result.finals:
        return None
    if result.talked_over:
        return True
    heard = set(words(heard_text(result)))
    after = words(item.after_pause)
    return sum(w in heard for w in after) * 2 < len(after)


def _describe(item: EvalItem, result: TurnResult) -> str:
    v2v = "-" if result.v2v_ms is None else f"{result.v2v_ms:.0f} ms"
    cut = " CUT" if cut_off(item, result) else ""
    return f"{item.label:<48} {v2v:>8}{cut}  heard {result.finals!r}"


def item_row(item: EvalItem, result: TurnResult) -> dict[str, Any]:
    heard = heard_text(result)
    return {
        "label": item.label,
        "condition": item.condition,
        "kind": item.kind,
        "text": item.text,
        "heard": heard,
        "finals": result.finals,
        "turn_heard": result.heard,
        "reply": result.reply,
        "wer": round(wer(item.text, heard), 3),
        "ref_words": len(words(item.text)),
        "v2v_ms": result.v2v_ms,
        "interrupted": result.interrupted,
        "cut_off": cut_off(item, result),
        "talked_over": result.talked_over,
        "server": result.server,
    }


def group_of(row: dict[str, Any]) -> str:
    return row["condition"] if row["kind"] == "plain" else f"{row['condition']} pause"


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    v2v = [r["v2v_ms"] for r in rows if r["v2v_ms"] is not None]
    ref_words = sum(r["ref_words"] for r in rows)
    cuts = [r["cut_off"] for r in rows if r["cut_off"] is not None]
    pause_items = sum(r["kind"] == "pause" for r in rows)
    out: dict[str, Any] = {
        "items": len(rows),
        "wer": sum(r["wer"] * r["ref_words"] for r in rows) / ref_words if ref_words else None,
        **summarize(v2v, "v2v_ms"),
        "answered": len(v2v),
        "pause_items": pause_items,
        "pause_items_heard": len(cuts),
        "false_cut_offs": sum(cuts) if pause_items else None,
        "split_turns": sum(bool(r["talked_over"]) for r in rows),
    }
    waits = [
        float(r["server"]["asr_queue_wait_ms"])
        for r in rows
        if isinstance(r["server"].get("asr_queue_wait_ms"), int | float)
    ]
    out["asr_queue_wait_ms_p50"] = statistics.median(waits) if waits else None
    silences = [
        float(r["server"]["eou_silence_ms"])
        for r in rows
        if isinstance(r["server"].get("eou_silence_ms"), int | float)
    ]
    out["eou_silence_ms_mean"] = statistics.fmean(silences) if silences else None
    for key in ("final_passes", "final_passes_wasted"):
        values = [r["server"][key] for r in rows if isinstance(r["server"].get(key), int | float)]
        out[key] = sum(values) if values else None
    return out


def summaries(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    conditions = [*evalset.CONDITIONS, LOSS_CONDITION]
    order = [*conditions, *(f"{c} pause" for c in conditions)]
    out = {g: summarize_rows(groups[g]) for g in sorted(groups, key=order.index)}
    out["all"] = summarize_rows(rows)
    return out


def pooled(paths: list[Path]) -> dict[str, Any]:
    """Earlier runs (e.g. several seeds), their rows pooled per variant and summarized again."""
    variants: dict[str, Any] = {}
    for path in paths:
        for name, data in json.loads(path.read_text())["variants"].items():
            variants.setdefault(name, {"rows": []})["rows"].extend(data["rows"])
    for data in variants.values():
        data["summary"] = summaries(data["rows"])
    return variants


def print_table(variants: dict[str, Any]) -> None:
    def fmt(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    print(
        f"\n{'variant':<12} {'condition':<16} {'n':>3} {'WER':>5} {'v2v p50':>8} {'p90':>6} "
        f"{'p99':>6} {'answered':>8} {'cut-offs':>8} {'early':>5} {'wait':>5} {'qwait p50':>9} "
        f"{'passes':>6} {'wasted':>6}"
    )
    for name, data in variants.items():
        for group, s in data["summary"].items():
            cuts = (
                "-"
                if s["false_cut_offs"] is None
                else f"{s['false_cut_offs']}/{s['pause_items_heard']}"
            )
            print(
                f"{name:<12} {group:<16} {s['items']:>3} {fmt(s['wer'], 2):>5} "
                f"{fmt(s['v2v_ms_p50']):>8} {fmt(s['v2v_ms_p90']):>6} {fmt(s['v2v_ms_p99']):>6} "
                f"{s['answered']:>4}/{s['items']:<3} {cuts:>8} {s['split_turns']:>5} "
                f"{fmt(s.get('eou_silence_ms_mean')):>5} {fmt(s['asr_queue_wait_ms_p50']):>9} {fmt(s['final_passes']):>6} "
                f"{fmt(s['final_passes_wasted']):>6}"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small set (7 items, for CI)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help=f"NAME=SERVE_ARGS (repeatable); default: {' '.join(DEFAULT_VARIANTS)}",
    )
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "hearing.json")
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="only print the table of earlier runs' JSON (several: their rows pooled per variant)",
    )
    args = p.parse_args()
    if args.report:
        print_table(pooled(args.report))
        return 0
    size: evalset.Size = "quick" if args.quick else "full"
    variants = args.variant or DEFAULT_VARIANTS

    t0 = time.monotonic()
    items = asyncio.run(build_items(args.seed, size))
    audio_s = sum(item.duration_s for item in items)
    print(f"{len(items)} items, {audio_s:.0f} s of audio (built in {time.monotonic() - t0:.0f} s)")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "seed": args.seed,
        "size": size,
        "items": [
            {
                "label": i.label,
                "condition": i.condition,
                "kind": i.kind,
                "text": i.text,
                "after_pause": i.after_pause,
                "speech_end_s": round(i.speech_end_s, 4),
                "pause_span_s": i.pause_span_s,
                "length_scale": i.length_scale,
                "pitch": i.pitch,
                "duration_s": round(i.duration_s, 3),
                "sha256": i.digest(),
            }
            for i in items
        ],
        "variants": {},
    }
    for spec in variants:
        name, _, serve_args = spec.partition("=")
        print(f"variant {name}: serve {serve_args or '(defaults)'}", flush=True)
        with run_server(args.json.parent, *shlex.split(serve_args), port=args.port) as server:
            results = asyncio.run(run_variant(server.url, items))
            # The clean items again, from a caller whose uplink loses packets.
            clean = [i for i in items if i.condition == "clean"]
            lossy = asyncio.run(run_variant(server.url, clean, Impairment.parse(LOSS)))
        rows = [item_row(item, r) for item, r in zip(items, results, strict=True)]
        for item, r in zip(clean, lossy, strict=True):
            rows.append({**item_row(item, r), "condition": LOSS_CONDITION})
        out["variants"][name] = {
            "serve_args": serve_args,
            "rows": rows,
            "summary": summaries(rows),
        }
        out["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
        args.json.write_text(json.dumps(out, indent=2))  # after each variant: a long run keeps
        print_table({name: out["variants"][name]})  # what it measured if stopped early
    print_table(out["variants"])
    print(
        "(WER of every final heard vs the reference; v2v ms from the end of the speech; "
        "cut-offs: pause items cut at the pause / heard; early: items answered out loud before "
        "the user finished; wait: mean silence that ended the turn, ms; "
        f"server: ASR queue wait p50, final passes, wasted; JSON: {args.json})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
