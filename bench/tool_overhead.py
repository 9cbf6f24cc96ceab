"""What a 50 ms tool adds to voice-to-voice latency, next to the same turn without a tool.

    python -m bench.tool_overhead [--turns 10 | --quick] [--first-token-ms 20]
                                  [--json bench/results/tool_overhead.json] [--serve-args ARGS]

A real `ringback serve --llm openai --agent bench/agents/fifty_ms.py` process talks to a fake
OpenAI-compatible server in this process (harness/fake_openai.py: real streamed `tool_calls`
chunks), and one real WebRTC caller says the same synthesized utterance 2 × N times in one
call, alternating the variant (ABBA order, so neither always goes first and both see the same
load):

- with_tool: the model streams a `look_up` call; the tool sleeps 50 ms; the model, asked
  again with the result, streams the answer;
- without_tool: the model streams the same answer at once.

Every request to the fake waits the same `--first-token-ms` before its first chunk, so the
tool turn pays that delay twice (it asks the model twice) — the cost any real model adds —
and the table splits it out: ringback's own overhead is the difference minus the tool's own
time (the server's `tool_ms`) minus one extra first-token delay (a difference of p50s of
two noisy samples: read it to tens of ms, not to the millisecond). One warm-up turn of each
variant is said first and left out. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.audio import Pcm16
from agent.metrics import summarize
from harness.cli import report
from harness.fake_openai import Call, FakeOpenAi, Text, tool_results
from harness.peer import Caller, TurnResult
from harness.server import ROOT, run_server
from harness.speech import synthesize, synthesizer

AGENT = "bench/agents/fifty_ms.py"
TOOL = "look_up"
UTTERANCE = "What is the weather like?"
ANSWER = "It will be sunny all day."
VARIANTS = ("with_tool", "without_tool")
TARGET_MS = 150.0  # issue 25: a 50 ms tool adds at most this to v2v
SERVER_STAGES = (
    "tool_ms",
    "llm_first_token_ms",
    "tts_first_chunk_ms",
    "time_to_first_audio_ms",
)


@dataclass
class Script:
    """What the fake model does this turn: the bench flips `with_tool` before each turn."""

    with_tool: bool = False

    def answer(self, body: dict[str, Any]) -> list[Text | Call]:
        if self.with_tool and not tool_results(body):
            return [Call(TOOL, {"topic": "weather"})]
        return [Text(ANSWER)]


def order(turns: int) -> list[str]:
    """ABBA ABBA …: `turns` of each variant, neither always first."""
    out: list[str] = []
    for i in range(turns):
        out += VARIANTS if i % 2 == 0 else VARIANTS[::-1]
    return out


def tool_called(caller: Caller, result: TurnResult) -> bool:
    return any(
        e.data.get("type") == "tool" and e.data.get("name") == TOOL and e.t >= result.t_speech_end
        for e in caller.events
    )


async def run_call(
    url: str, script: Script, pcm: Pcm16, turns: int
) -> tuple[dict[str, list[TurnResult]], list[str]]:
    """Say the utterance for each variant in `order(turns)` after one warm-up turn of each.
    Turns whose answer is wrong (not heard, wrong reply, tool missing or extra) are set aside
    with a reason instead of being measured."""
    results: dict[str, list[TurnResult]] = {v: [] for v in VARIANTS}
    rejected: list[str] = []
    caller = Caller(url)
    try:
        await caller.connect()
        plan = [(v, True) for v in VARIANTS] + [(v, False) for v in order(turns)]
        for i, (variant, warmup) in enumerate(plan):
            script.with_tool = variant == "with_tool"
            r = await caller.say(f"{variant}-{i}", pcm)
            if warmup:
                continue
            called = tool_called(caller, r)
            if r.reply != ANSWER or r.v2v_ms is None or called != script.with_tool:
                rejected.append(f"{variant}: heard {r.heard!r}, reply {r.reply!r}, tool {called}")
                continue
            results[variant].append(r)
    finally:
        await caller.close()
    return results, rejected


def server_summary(results: list[TurnResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage in SERVER_STAGES:
        values = [r.server[stage] for r in results if isinstance(r.server.get(stage), float)]
        out.update(summarize(values, stage))
    out["speculative_turns"] = sum(1 for r in results if r.server.get("speculative"))
    return out


def difference(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    x, y = a.get(key), b.get(key)
    return None if x is None or y is None else round(x - y, 1)


async def measure(args: argparse.Namespace, turns: int) -> dict[str, Any]:
    async with synthesizer("piper") as pool:
        pcm = await synthesize(pool, UTTERANCE, deterministic=True)
    script = Script()
    load_before = os.getloadavg()
    async with FakeOpenAi(script.answer, delay_s=args.first_token_ms / 1000) as fake:
        env = {"RINGBACK_OPENAI_BASE_URL": fake.base_url, "RINGBACK_OPENAI_MODEL": "fake"}
        serve = ("--agent", AGENT, "--llm", "openai", *shlex.split(args.serve_args))
        with run_server(args.json.parent, *serve, env=env, port=args.port) as server:
            results, rejected = await run_call(server.url, script, pcm, turns)
        requests = len(fake.requests)
    load_after = os.getloadavg()

    out: dict[str, Any] = {
        "turns_per_variant": turns,
        "utterance": UTTERANCE,
        "answer": ANSWER,
        "first_token_ms": args.first_token_ms,
        "tool_sleep_ms": 50,
        "target_ms": TARGET_MS,
        "serve_args": shlex.join(serve),
        "model_requests": requests,
        "rejected": rejected,
        "variants": {},
    }
    for variant in VARIANTS:
        data = report(results[variant])
        data["server"] = server_summary(results[variant])
        out["variants"][variant] = data
    tool, plain = (out["variants"][v] for v in VARIANTS)
    diff: dict[str, float | None] = {
        f"v2v_ms_p{p}": difference(tool["summary"], plain["summary"], f"v2v_ms_p{p}")
        for p in (50, 90)
    }
    diff["time_to_first_audio_ms_p50"] = difference(
        tool["server"], plain["server"], "time_to_first_audio_ms_p50"
    )
    tool_ms = tool["server"].get("tool_ms_p50")
    v2v = diff["v2v_ms_p50"]
    diff["own_overhead_ms_p50"] = (
        None if v2v is None or tool_ms is None else round(v2v - tool_ms - args.first_token_ms, 1)
    )
    out["difference"] = diff
    out["load_avg"] = {"before": load_before, "after": load_after}
    out["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    return out


def print_table(out: dict[str, Any]) -> None:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(
        f"{'variant':<14} {'v2v p50':>8} {'p90':>6}  {'ttfa p50':>8}  {'llm p50':>7}  "
        f"{'tts p50':>7}  {'tool_ms p50':>11}  {'p90':>4}  answered"
    )
    for name, data in out["variants"].items():
        s, st = data["summary"], data["server"]
        print(
            f"{name:<14} {fmt(s['v2v_ms_p50']):>8} {fmt(s['v2v_ms_p90']):>6}  "
            f"{fmt(st['time_to_first_audio_ms_p50']):>8}  {fmt(st['llm_first_token_ms_p50']):>7}  "
            f"{fmt(st['tts_first_chunk_ms_p50']):>7}  {fmt(st['tool_ms_p50']):>11}  "
            f"{fmt(st['tool_ms_p90']):>4}  {s['answered']}/{out['turns_per_variant']}"
        )
    d = out["difference"]
    print(
        f"{'difference':<14} {fmt(d['v2v_ms_p50']):>8} {fmt(d['v2v_ms_p90']):>6}  "
        f"{fmt(d['time_to_first_audio_ms_p50']):>8}"
    )
    verdict = (
        "-" if d["v2v_ms_p50"] is None else ("met" if d["v2v_ms_p50"] <= TARGET_MS else "MISSED")
    )
    load = out["load_avg"]
    print(
        f"target: the tool adds ≤ {TARGET_MS:.0f} ms to v2v p50: {verdict}; ringback's own "
        f"overhead (difference − tool_ms − one {out['first_token_ms']:.0f} ms first-token "
        f"delay): {fmt(d['own_overhead_ms_p50'])} ms"
    )
    print(
        f"(ms after the end of speech; load average {load['before'][0]:.2f} before, "
        f"{load['after'][0]:.2f} after; {len(out['rejected'])} turns set aside)"
    )
    for reason in out["rejected"]:
        print(f"  set aside: {reason}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--turns", type=int, default=10, help="measured turns per variant")
    p.add_argument("--quick", action="store_true", help="3 turns per variant")
    p.add_argument(
        "--first-token-ms",
        type=float,
        default=20.0,
        help="the fake model's wait before each response (every request, both variants)",
    )
    p.add_argument("--serve-args", default="", help="more `ringback serve` flags")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "tool_overhead.json")
    args = p.parse_args()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    out = asyncio.run(measure(args, 3 if args.quick else args.turns))
    args.json.write_text(json.dumps(out, indent=2))
    print_table(out)
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
