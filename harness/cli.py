"""`ringback call`: place a headless call, print a per-turn table and p50/p90/p99."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from agent.metrics import summarize
from harness.impair import Impairment
from harness.peer import Caller, TurnResult
from harness.speech import prepare, write_wav

log = logging.getLogger(__name__)


def add_call_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8080", help="agent base URL")
    p.add_argument("--wav", action="append", default=[], help="a WAV file to say (repeatable)")
    p.add_argument("--say", action="append", default=[], help="text to say with the embedded TTS")
    p.add_argument("--repeat", type=int, default=1, help="say the whole list this many times")
    p.add_argument("--tts", default="piper", help="engine that speaks --say text (piper|espeak)")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    p.add_argument("--record", type=Path, help="write each reply as a WAV into this directory")
    p.add_argument("--timeout-s", type=float, default=30.0, help="max wait for one reply")
    p.add_argument(
        "--receive-path",
        choices=("ringback", "aiortc"),
        default="ringback",
        help="how the caller hears the agent: adaptive buffer + Opus PLC/FEC, or aiortc's",
    )
    p.add_argument(
        "--impair",
        default="",
        help="impair the caller's outgoing audio in-process, e.g. loss=5,burst=2:50,jitter=20,seed=7",
    )
    p.add_argument("--log-level", default="WARNING")


def report(results: list[TurnResult], rtc: dict[str, Any] | None = None) -> dict[str, Any]:
    v2v = [r.v2v_ms for r in results if r.v2v_ms is not None]
    return {
        "turns": [
            {
                "said": r.label,
                "heard": r.heard,
                "reply": r.reply,
                "v2v_ms": r.v2v_ms,
                "interrupted": r.interrupted,
                "server": r.server,
                "link": r.link,
            }
            for r in results
        ],
        "summary": {**summarize(v2v, "v2v_ms"), "turns": len(results), "answered": len(v2v)},
        "rtc": rtc or {},
    }


def print_table(data: dict[str, Any]) -> None:
    print(f"{'#':>3}  {'v2v ms':>7}  {'ttfa ms':>7}  heard → reply")
    for i, t in enumerate(data["turns"], 1):
        v2v = "-" if t["v2v_ms"] is None else f"{t['v2v_ms']:.0f}"
        ttfa = t["server"].get("time_to_first_audio_ms")
        ttfa_s = "-" if ttfa is None else f"{ttfa:.0f}"
        print(f"{i:>3}  {v2v:>7}  {ttfa_s:>7}  {t['heard']!r} → {t['reply']!r}")
    s = data["summary"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(
        f"voice-to-voice ms: p50 {fmt(s['v2v_ms_p50'])}  p90 {fmt(s['v2v_ms_p90'])}  "
        f"p99 {fmt(s['v2v_ms_p99'])}  ({s['answered']}/{s['turns']} turns answered)"
    )


async def run_call(args: argparse.Namespace) -> int:
    if not args.wav and not args.say:
        raise SystemExit("ringback call: give at least one --wav FILE or --say TEXT")
    utterances = await prepare(args.wav, args.say, args.tts) * max(1, args.repeat)
    impairment = Impairment.parse(args.impair) if args.impair else None
    caller = Caller(args.url, receive_path=args.receive_path, impairment=impairment)
    results: list[TurnResult] = []
    rtc: dict[str, Any] = {}
    try:
        await caller.connect()
        for u in utterances:
            results.append(await caller.say(u.label, u.pcm48k, args.timeout_s))
        rtc = await caller.rtc_stats()
    finally:
        await caller.close()
    data = report(results, rtc)
    print_table(data)
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    if args.record:
        args.record.mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(results, 1):
            write_wav(args.record / f"turn{i:02d}.wav", r.reply_pcm)
    return 0 if data["summary"]["answered"] == len(results) else 1
