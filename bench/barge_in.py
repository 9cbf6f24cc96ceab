"""Barge-in and echo benchmark: how fast the agent stops when talked over, and whether its
own voice coming back ever counts as the user.

    python -m bench.barge_in [--quick] [--json bench/results/barge_in.json]
                             [--variant NAME=[ROOT:]ARGS ...] [--trials N]

Each variant is a `ringback serve` (ARGS: extra flags; ROOT: another checkout whose code runs,
e.g. `main=/work/main:` for the code before a change), measured in the same run. All times are
read at a real aiortc caller on loopback, from the audio:

- **barge-in**: the caller asks for a story and talks over it `after` seconds after the
  story became audible (0.6 s: inside the window where new speech may continue the previous
  turn; 1.5 s and 2.5 s: plainly an interruption). Latency is from the onset of the caller's
  speech (its first sample louder than −40 dBFS, as sent) to the end of the agent's last
  loud frame received before the caller's speech ended: "onset → agent silent at the
  caller". The caller starts talking while the agent is audible, not into a pause.
- **echo**: the caller is a speakerphone without echo cancellation (harness/echo.py): what
  it hears leaks back into what it sends, `gain` dB quieter and `delay` ms later. It asks
  three questions, then for the story, and lets it play; `self_cuts` counts replies cut
  before the caller said anything over them, `self_heard` the finals the agent heard that
  the caller did not say. Then it talks over the story: barge-in latency under echo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.metrics import percentile
from harness.echo import EchoConfig
from harness.peer import LOUD, Caller
from harness.server import ROOT, run_server
from harness.speech import QUESTIONS, STORY_REQUEST, synthesize, synthesizer

INTERRUPTION = "What time is it right now?"  # no pause inside: one turn
ECHO_QUESTIONS = [QUESTIONS[0], QUESTIONS[2], QUESTIONS[4]]
DEFAULT_VARIANTS = ["before=/work/main:", "after="]
# (what the caller asks for, when it talks over the answer): the story, and a short answer
# ("What day is it today?") talked over 0.6 s after it became audible.
BARGE_CASES = (("story", 0.6), ("story", 1.5), ("story", 2.5), ("short", 0.6))
REQUESTS = {"story": STORY_REQUEST, "short": QUESTIONS[2]}
ECHOES = ("-15:20", "-15:60", "-15:150", "-6:20", "-6:60", "-6:150")


@dataclass(frozen=True)
class Variant:
    name: str
    root: Path
    args: list[str]

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, rest = text.partition("=")
        root, sep, args = rest.partition(":")
        if not sep:
            root, args = "", rest
        return cls(name, Path(root) if root else ROOT, args.split())


def _loud(pcm: Pcm16) -> bool:
    return bool(np.max(np.abs(pcm.astype(np.int32))) > LOUD)


def silent_at(caller: Caller, t_onset: float, t_until: float) -> float | None:
    """End of the agent's last loud frame (as received) between the caller's onset and the
    end of its speech (the answer to it can only come later); None if it never stopped."""
    last_loud = t_onset
    for t, pcm in caller.received:
        end = t + pcm.size / OUT_RATE_HZ
        if end >= t_onset and t <= t_until and _loud(pcm):
            last_loud = max(last_loud, end)
    return None if last_loud >= t_until - 0.05 else last_loud


async def _while_loud(caller: Caller, timeout_s: float = 1.5) -> None:
    """Until the agent is audible at this instant (not in a pause between its words): talking
    into a pause would measure nothing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        recent = caller.received[-3:]
        if len(recent) == 3 and all(_loud(pcm) for _, pcm in recent):
            return
        await asyncio.sleep(0.01)


async def _wait_audible(caller: Caller, after: float, timeout_s: float = 15.0) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = caller.first_loud_after(after)
        if t is not None:
            return t
        await asyncio.sleep(0.02)
    return None


async def _barge(
    caller: Caller, speech: dict[str, Pcm16], case: str, after_s: float
) -> dict[str, Any]:
    """Ask for the story (or a short answer), talk over it `after_s` after it became
    audible."""
    t0 = time.monotonic()
    t_asked = await caller.play(speech[REQUESTS[case]], ("ask", t0))
    audible = await _wait_audible(caller, t_asked)
    if audible is None:
        return {"case": case, "after_s": after_s, "error": "the reply never played"}
    await asyncio.sleep(max(0.0, audible + after_s - time.monotonic()))
    return {
        "case": f"{case} {after_s}s",
        "after_s": after_s,
        **await _barge_now(caller, speech, t0),
    }


async def barge_trial(
    url: str, speech: dict[str, Pcm16], case: str, after_s: float
) -> dict[str, Any]:
    caller = Caller(url)
    try:
        await caller.connect()
        return await _barge(caller, speech, case, after_s)
    finally:
        await caller.close()


async def echo_trial(url: str, speech: dict[str, Pcm16], echo: str) -> dict[str, Any]:
    caller = Caller(url, echo=EchoConfig.parse(echo))
    try:
        await caller.connect()
        t0 = time.monotonic()
        said = 0
        for text in ECHO_QUESTIONS:
            await caller.say(text, speech[text], timeout_s=15)
            said += 1
        # The story plays 4 s with its echo going back, before the caller talks over it.
        t_story = await caller.play(speech[STORY_REQUEST], ("story", t0))
        said += 1
        audible = await _wait_audible(caller, t_story)
        if audible is not None:
            await asyncio.sleep(max(0.0, audible + 4.0 - time.monotonic()))
        t_barge = time.monotonic()
        events = [e.data for e in caller.events if e.t >= t0 and e.t < t_barge]
        self_cuts = sum(1 for d in events if d.get("type") == "turn" and d.get("interrupted"))
        retracted = sum(1 for d in events if d.get("type") == "retracted")
        finals = [d["text"] for d in events if d.get("type") == "final" and d.get("text")]
        barge = await _barge_now(caller, speech, t0) if audible is not None else {}
        return {
            "echo": echo,
            "self_cuts": self_cuts,
            "retracted": retracted,
            "self_heard": max(0, len(finals) - said),
            "finals": finals,
            **barge,
        }
    finally:
        await caller.close()


async def _barge_now(caller: Caller, speech: dict[str, Pcm16], t0: float) -> dict[str, Any]:
    mark = ("barge", t0)
    pcm = speech[INTERRUPTION]
    await _while_loud(caller)
    played = asyncio.get_running_loop().create_task(caller.play(pcm, mark))
    await caller.started(mark)
    onset = caller.speech_onset(mark, pcm)
    t_end = await played
    await asyncio.sleep(0.3)  # the last frames before t_end are still on their way
    silent = silent_at(caller, onset, t_end)
    interrupted = await caller.wait_event(
        lambda d: d.get("type") == "state" and d.get("state") == "interrupted", t0, 3
    )
    return {
        "stop_ms": None if silent is None else round((silent - onset) * 1000, 1),
        "interrupted_event_ms": None
        if interrupted is None
        else round((interrupted.t - onset) * 1000, 1),
    }


def _stats(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in (50, 90)}


async def run_variant(
    variant: Variant, speech: dict[str, Pcm16], trials: int, echoes: list[str], log_dir: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {"barge": [], "echo": []}
    with run_server(log_dir, *variant.args, root=variant.root) as server:
        for case, after_s in BARGE_CASES:
            for _ in range(trials):
                row = await barge_trial(server.url, speech, case, after_s)
                print(f"  {variant.name} barge {case} after {after_s} s: {row}", flush=True)
                out["barge"].append(row)
        for echo in echoes:
            row = await echo_trial(server.url, speech, echo)
            print(f"  {variant.name} echo {echo}: {row}", flush=True)
            out["echo"].append(row)
    return out


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["barge"]
    stops = [r["stop_ms"] for r in rows if r.get("stop_ms") is not None]
    by_after = {
        f"{c} {a}s": _stats(
            [r["stop_ms"] for r in rows if r.get("case") == f"{c} {a}s" and r.get("stop_ms")]
        )
        for c, a in BARGE_CASES
    }
    echo = result["echo"]
    echo_stops = [r["stop_ms"] for r in echo if r.get("stop_ms") is not None]
    return {
        "barge_stop_ms": _stats(stops),
        "barge_missed": sum(1 for r in rows if r.get("stop_ms") is None),
        "barge_by_after_s": by_after,
        "echo_self_cuts": {r["echo"]: r["self_cuts"] for r in echo},
        "echo_self_heard": {r["echo"]: r["self_heard"] for r in echo},
        "echo_barge_stop_ms": _stats(echo_stops),
        "echo_barge_missed": sum(1 for r in echo if r.get("stop_ms") is None),
    }


def print_table(summaries: dict[str, dict[str, Any]]) -> None:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(f"{'variant':<10} {'stop p50':>8} {'p90':>5} {'missed':>6}  by case p50/p90 (ms)")
    for name, s in summaries.items():
        b = s["barge_stop_ms"]
        by = "  ".join(
            f"{a} {fmt(v['p50'])}/{fmt(v['p90'])}" for a, v in s["barge_by_after_s"].items()
        )
        print(f"{name:<10} {fmt(b['p50']):>8} {fmt(b['p90']):>5} {s['barge_missed']:>6}  {by}")
    print(f"\n{'variant':<10} {'echo':<8} {'self_cuts':>9} {'self_heard':>10}")
    for name, s in summaries.items():
        for echo, cuts in s["echo_self_cuts"].items():
            print(f"{name:<10} {echo:<8} {cuts:>9} {s['echo_self_heard'][echo]:>10}")
    print(f"\n{'variant':<10} {'barge under echo p50':>20} {'p90':>5} {'missed':>6}")
    for name, s in summaries.items():
        e = s["echo_barge_stop_ms"]
        print(f"{name:<10} {fmt(e['p50']):>20} {fmt(e['p90']):>5} {s['echo_barge_missed']:>6}")


async def build_speech() -> dict[str, Pcm16]:
    texts = list(dict.fromkeys([*REQUESTS.values(), INTERRUPTION, *ECHO_QUESTIONS]))
    async with synthesizer("piper") as pool:
        return {t: await synthesize(pool, t, deterministic=True) for t in texts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one trial per case, two echoes")
    p.add_argument("--trials", type=int, default=4, help="barge-in trials per `after`")
    p.add_argument("--variant", action="append", default=None, help="NAME=[ROOT:]ARGS")
    p.add_argument("--echo", action="append", default=None, help="GAIN_DB:DELAY_MS")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "barge_in.json")
    args = p.parse_args()
    variants = [Variant.parse(v) for v in (args.variant or DEFAULT_VARIANTS)]
    trials = 1 if args.quick else args.trials
    echoes = args.echo or (["-15:60", "-6:60"] if args.quick else list(ECHOES))
    speech = asyncio.run(build_speech())
    results: dict[str, Any] = {}
    log_dir = args.json.parent / "barge_in_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        print(f"variant {variant.name} ({variant.root}, {' '.join(variant.args)})", flush=True)
        results[variant.name] = asyncio.run(run_variant(variant, speech, trials, echoes, log_dir))
    summaries = {name: summarize(r) for name, r in results.items()}
    print_table(summaries)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": summaries, "runs": results}, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
