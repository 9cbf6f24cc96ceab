"""Capacity benchmark: how many conversational calls one `ringback serve` sustains.

    python -m bench.capacity [--steps 1,2,4,6,8,10,12] [--turns 4] [--workers N]
                             [--json bench/results/capacity.json] [--png FILE] [--quick]

A real server process; at each step, N callers in N separate processes (so the server is what
is measured), each a real aiortc peer holding a conversation: it speaks a sentence (piper),
listens to the whole reply, pauses 1-2.5 s, and so on, starting staggered. Voice-to-voice is
measured from the audio at the callers. The callers stand for remote peers but share the
server's CPUs here, so they run at a lower priority (`--caller-nice`, default 10; 0 makes them
compete as equals, which understates the server). Between steps the server's /metrics is
scraped: its event-loop lag (p99 of the step, from the histogram's buckets), late inbound
packets, and the whisper queue wait; CPU and RSS are read from /proc for the server and its
worker processes (also by process kind), and how busy the whole machine was.
The ramp stops at the first step over a limit (v2v p99 > 1.2 s, over 1 % of inbound packets
late, loop lag p99 > 50 ms, a turn unanswered); `max_calls` is the last step within all of them.

Transport only, side by side: the same ramp against bench.echo_server (aiortc sends each
caller's audio back: no speech pipeline), whose "v2v" is the audio's round trip; `--no-echo`
skips it. `--quick` (two short steps each) runs in CI. Absolute numbers are only meaningful on
an otherwise idle machine. The server's log is kept next to the JSON (`.server.log`): a turn
slower than `--slow-turn-ms` logs its stage times there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import percentile
from harness.server import ROOT, free_port, run_server, stop_process

V2V_LIMIT_MS = 1200.0
LOOP_LAG_LIMIT_MS = 50.0
LATE_LIMIT_PCT = 1.0  # inbound packets that missed their playout slot, % of those received
SAY = ["What time is it?", "What is two plus three?", "What day is it today?", "Good morning."]
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# --- one caller (runs in its own process) ----------------------------------------------


async def converse(
    url: str, speech: dict[str, Any], turns: int, delay_s: float, seed: int, echo: bool = False
) -> Any:
    """One conversational call; with `echo`, against bench.echo_server (v2v: its round trip)."""
    from harness.peer import Caller

    rng = random.Random(seed)
    await asyncio.sleep(delay_s)
    caller = Caller(url)
    out: dict[str, Any] = {"v2v_ms": [], "answered": 0, "turns": turns, "errors": []}
    try:
        await caller.connect()
        for i in range(turns):
            text = SAY[(seed + i) % len(SAY)]
            if echo:
                v2v = await echo_round_trip(caller, speech[text], ("echo", i))
            else:
                v2v = (await caller.say(text, speech[text])).v2v_ms
            if v2v is not None:
                out["v2v_ms"].append(v2v)
                out["answered"] += 1
            await asyncio.sleep(rng.uniform(1.0, 2.5))
    except Exception as exc:  # reported, not raised: the step records a failed call
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        await caller.close()
    return out


async def echo_round_trip(caller: Any, pcm: Any, mark: object) -> float | None:
    """ms from the first speech sample sent to its echo's arrival (played out, as heard)."""
    t_end = await caller.play(pcm, mark)
    onset = caller.speech_onset(mark, pcm)
    await asyncio.sleep(max(0.0, onset + len(pcm) / 48_000 - t_end) + 0.8)
    heard = caller.first_loud_after(onset)
    return None if heard is None else round((heard - onset) * 1000, 1)


def caller_main(args: argparse.Namespace) -> int:
    os.nice(int(os.environ.get(CALLER_NICE_ENV, "0")))
    with np.load(args.speech) as data:
        speech = {text: data[f"s{i}"] for i, text in enumerate(SAY)}
    result = asyncio.run(
        converse(args.url, speech, args.turns, args.delay, args.seed, echo=args.echo_caller)
    )
    Path(args.out).write_text(json.dumps(result))
    return 0


# The callers' niceness (--caller-nice), passed to them in their environment.
CALLER_NICE_ENV = "RINGBACK_BENCH_CALLER_NICE"


# --- the server's side: /metrics and /proc ----------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:  # with --workers: summed over the `worker` label
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker"))
            out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value
    return out


def histogram_quantile(before: dict[Any, float], after: dict[Any, float], name: str,
                       q: float, **only: str) -> float | None:  # fmt: skip
    """The q-quantile (upper bucket bound) of what a histogram observed between two scrapes
    (of its series with the labels in `only`)."""
    counts: dict[float, float] = {}  # summed over the series' other labels (e.g. class)
    for n, labels in after:
        if n == name + "_bucket" and all(dict(labels).get(k) == v for k, v in only.items()):
            le = float(dict(labels)["le"])
            counts[le] = counts.get(le, 0.0) + after[(n, labels)] - before.get((n, labels), 0.0)
    buckets = sorted(counts.items())
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= q * total)


def counter_delta(before: dict[Any, float], after: dict[Any, float], name: str,
                  **labels: str) -> float:  # fmt: skip
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


@dataclass
class Usage:
    cpu_s: float
    rss_mb: float
    t: float
    by_kind: dict[str, float]  # CPU seconds by process kind (process_kind)
    machine_busy_s: float  # CPU seconds the whole machine was busy (every process, callers too)


# Which engine a process of the server's tree runs, from its command line.
KINDS = (
    ("agent.engines.asr_worker", "pocketsphinx"),
    ("agent.engines.tts_worker", "tts"),
    ("resource_tracker", "other"),
    ("multiprocessing", "whisper"),
)


def process_kind(pid: int, root: int) -> str:
    if pid == root:
        return "server"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "other"
    return next((kind for needle, kind in KINDS if needle.encode() in cmdline), "other")


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS_PER_S


def usage(root: int) -> Usage:
    """CPU seconds and resident memory of a process and all its descendants."""
    cpu = rss = 0.0
    by_kind: dict[str, float] = {}
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu_s = (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime
        cpu += cpu_s
        kind = process_kind(pid, root)
        by_kind[kind] = by_kind.get(kind, 0.0) + cpu_s
        rss += int(fields[21]) * PAGE_BYTES / 2**20
    return Usage(cpu, rss, time.monotonic(), by_kind, machine_busy_s())


# --- the ramp ----------------------------------------------------------------------------


def run_step(
    url: str,
    pid: int,
    calls: int,
    turns: int,
    speech: Path,
    work: Path,
    echo: bool = False,
    profile: Path | None = None,
) -> Any:
    """One step of the ramp: `calls` callers at once; the server's side from /metrics (not
    for the echo peer, which has none) and /proc; with `profile`, py-spy samples the server
    (and its worker processes) for the whole step into that file (collapsed stacks)."""
    kind = "echo" if echo else "full"
    before, u0 = ({} if echo else scrape(url)), usage(pid)
    spy = start_profile(pid, profile) if profile is not None else None
    outs = [work / f"caller-{kind}-{calls}-{i}.json" for i in range(calls)]
    stagger = 2.0 / max(1, calls)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.capacity",
                "--caller",
                "--url",
                url,
                "--speech",
                str(speech),
                "--turns",
                str(turns),
                "--delay",
                f"{i * stagger:.2f}",
                "--seed",
                str(i),
                "--out",
                str(out),
                *(["--echo-caller"] if echo else []),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(work / f"caller-{kind}-{calls}-{i}.log").open("wb"),
        )
        for i, out in enumerate(outs)
    ]
    peak_rss = 0.0
    while any(p.poll() is None for p in procs):
        peak_rss = max(peak_rss, usage(pid).rss_mb)
        time.sleep(0.5)
    u1 = usage(pid)
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        spy.wait(30)
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for _ in range(0 if echo else 50):  # late packets are added when each call has wound down
        after = scrape(url)
        if after.get(("ringback_sessions_active", ()), 0.0) == 0:
            break
        time.sleep(0.1)
    results = [json.loads(o.read_text()) for o in outs if o.exists()]
    v2v = [v for r in results for v in r["v2v_ms"]]
    lag = histogram_quantile(before, after, "ringback_event_loop_lag_hist_seconds", 0.99)
    waits = {
        engine: histogram_quantile(
            before, after, "ringback_engine_queue_wait_seconds", 0.99, engine=engine
        )
        for engine in ("whisper", "tts")
    }
    late = counter_delta(before, after, "ringback_link_packets_total", kind="late")
    received = counter_delta(before, after, "ringback_link_packets_total", kind="received")
    elapsed = max(1e-9, u1.t - u0.t)
    cpu_ms_per_s = 1000 * (u1.cpu_s - u0.cpu_s) / elapsed
    by_kind = {
        kind: round(1000 * (u1.by_kind.get(kind, 0.0) - u0.by_kind.get(kind, 0.0)) / elapsed)
        for kind in u1.by_kind
    }
    return {
        "calls": calls,
        "v2v_ms_p50": percentile(v2v, 50),
        "v2v_ms_p99": percentile(v2v, 99),
        "v2v_ms": sorted(round(v) for v in v2v),
        "loop_lag_ms_p99": None if lag is None else lag * 1000,
        "late_frames": int(late),
        "late_pct": 100 * late / received if received else (0.0 if echo else None),
        "concealed_frames": int(
            counter_delta(before, after, "ringback_link_frames_total", kind="concealed")
        ),
        "whisper_wait_ms_p99": None if waits["whisper"] is None else waits["whisper"] * 1000,
        "tts_wait_ms_p99": None if waits["tts"] is None else waits["tts"] * 1000,
        "answered": sum(r["answered"] for r in results),
        "turns": calls * turns,
        "failed_calls": calls - sum(1 for r in results if not r["errors"]),
        "cpu_ms_per_s": cpu_ms_per_s,
        "cpu_ms_per_s_by_process": by_kind,  # a replaced worker's CPU before it died is lost
        "machine_busy_pct": round(
            100 * (u1.machine_busy_s - u0.machine_busy_s) / elapsed / (os.cpu_count() or 1), 1
        ),
        "rss_mb": peak_rss,
    }


def over_limit(step: dict[str, Any]) -> list[str]:
    why = []
    if step["v2v_ms_p99"] is None or step["v2v_ms_p99"] > V2V_LIMIT_MS:
        why.append("v2v p99")
    if step["late_pct"] is None or step["late_pct"] > LATE_LIMIT_PCT:
        why.append("late inbound packets")
    if step["loop_lag_ms_p99"] is not None and step["loop_lag_ms_p99"] > LOOP_LAG_LIMIT_MS:
        why.append("loop lag")
    if step["failed_calls"] or step["answered"] < step["turns"]:
        why.append("unanswered turns")
    return why


def start_profile(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--gil", "--nonblocking",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def profile_top(path: Path, n: int = 15) -> list[tuple[str, float]]:
    """Where the server's CPU went: leaf frames, % of the samples of busy threads."""
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
        total += int(count)
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:n]
    return [(leaf, round(100 * c / total, 1)) for leaf, c in top] if total else []


def ramp(
    url: str,
    pid: int,
    steps: list[int],
    turns: int,
    speech: Path,
    work: Path,
    echo: bool = False,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Steps up to the first one over a limit: {max_calls, per_call, idle, steps}."""
    time.sleep(1.0)
    idle = usage(pid)
    time.sleep(2.0)
    idle2 = usage(pid)
    idle_cpu = 1000 * (idle2.cpu_s - idle.cpu_s) / (idle2.t - idle.t)
    out: dict[str, Any] = {
        "max_calls": 0,
        "per_call": {"cpu_ms_per_s": None, "rss_mb": None},
        "idle": {"cpu_ms_per_s": idle_cpu, "rss_mb": idle2.rss_mb},
        "steps": [],
    }
    for calls in steps:
        prof = None if profile_dir is None else profile_dir / f"capacity-profile-{calls}.txt"
        step = run_step(url, pid, calls, turns, speech, work, echo, prof)
        step["over"] = over_limit(step)
        out["steps"].append(step)
        print_step(step)
        if prof is not None and prof.exists():
            out["profile"] = {"calls": calls, "file": str(prof), "top": profile_top(prof)}
        if step["over"]:
            break
        out["max_calls"] = calls
        out["per_call"] = {
            "cpu_ms_per_s": (step["cpu_ms_per_s"] - idle_cpu) / calls,
            "rss_mb": (step["rss_mb"] - idle2.rss_mb) / calls,
        }
    return out


@contextlib.contextmanager
def echo_server(work: Path) -> Iterator[tuple[str, int]]:
    """bench.echo_server on a free loopback port: (url, pid); stopped by PID afterwards."""
    port = free_port()
    log = (work / "echo-server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "echo-server.log").read_text()) from None
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        stop_process(proc)
        log.close()


def plot(steps: list[dict[str, Any]], echo: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [s["calls"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("v2v_ms_p50", "v2v p50"), ("v2v_ms_p99", "v2v p99"),
                       ("loop_lag_ms_p99", "loop lag p99")):  # fmt: skip
        ax.plot(calls, [s[key] if s[key] is not None else np.nan for s in steps], "o-", label=label)
    if echo:
        ax.plot([s["calls"] for s in echo],
                [s["v2v_ms_p99"] if s["v2v_ms_p99"] is not None else np.nan for s in echo],
                "s--", label="echo (transport only) round trip p99")  # fmt: skip
    ax.axhline(V2V_LIMIT_MS, color="grey", linestyle="--", label="1.2 s limit")
    ax.set_xlabel("concurrent calls")
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def synthesize_all() -> dict[str, Any]:
    from harness.speech import synthesize, synthesizer

    async with synthesizer("piper") as pool:
        return {text: await synthesize(pool, text) for text in SAY}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", default="1,2,4,6,8,10,12,16", help="concurrent calls per step")
    p.add_argument("--turns", type=int, default=4, help="turns per call at each step")
    p.add_argument("--workers", type=int, default=1, help="`ringback serve --workers`")
    p.add_argument("--serve-args", default="", help="more `ringback serve` flags")
    p.add_argument("--quick", action="store_true", help="two short steps (CI)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    p.add_argument("--png", type=Path, default=None, help="default: the JSON path with .png")
    # One caller process (internal):
    p.add_argument("--caller", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--speech", help=argparse.SUPPRESS)
    p.add_argument("--delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--echo-caller", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-echo", action="store_true", help="skip the transport-only ramp")
    p.add_argument(
        "--caller-nice",
        type=int,
        default=10,
        help="niceness of the caller processes: they stand for remote peers, so they should not "
        "take CPU from the server they measure (0: compete with it as equals)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the server at every step (collapsed stacks next to the JSON); the JSON "
        "and the printout keep the profile of the knee (the first step over a limit)",
    )
    args = p.parse_args(argv)
    if args.caller:
        return caller_main(args)

    steps = [1, 2] if args.quick else [int(n) for n in args.steps.split(",")]
    turns = 1 if args.quick else args.turns
    args.json.parent.mkdir(parents=True, exist_ok=True)
    png = args.png or args.json.with_suffix(".png")
    serve = ["--max-sessions", str(max(steps) + 2), *args.serve_args.split()]
    serve += ["--workers", str(args.workers)]
    os.environ[CALLER_NICE_ENV] = str(args.caller_nice)  # read by every caller process
    speech = asyncio.run(synthesize_all())
    out: dict[str, Any] = {"workers": args.workers, "caller_nice": args.caller_nice,
                           "limits": {"v2v_ms_p99": V2V_LIMIT_MS,
                                      "loop_lag_ms_p99": LOOP_LAG_LIMIT_MS, "late_pct": LATE_LIMIT_PCT},
                           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                           "serve_args": serve}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        speech_file = work / "speech.npz"
        np.savez(speech_file, **{f"s{i}": speech[t] for i, t in enumerate(SAY)})
        with run_server(work, *serve) as server:
            print("full pipeline:")
            profile_dir = args.json.parent if args.profile else None
            try:
                out.update(
                    ramp(server.url, server.proc.pid, steps, turns, speech_file, work,
                         profile_dir=profile_dir)
                )  # fmt: skip
            finally:  # slow turns log their stage times there (--slow-turn-ms)
                shutil.copyfile(server.log_path, args.json.with_suffix(".server.log"))
        if not args.no_echo:
            print("transport only (echo):")
            with echo_server(work) as (url, pid):
                out["echo"] = ramp(url, pid, steps, turns, speech_file, work, echo=True)
    args.json.write_text(json.dumps(out, indent=2))
    title = f"ringback capacity, {args.workers} worker(s), {os.cpu_count()} CPUs"
    plot(out["steps"], out.get("echo", {}).get("steps", []), png, title)
    print(f"max sustained calls: {out['max_calls']}  per call: {fmt(out['per_call'])}")
    if "profile" in out:
        print(f"where the server's time went at {out['profile']['calls']} calls (leaf frames):")
        for frame, pct in out["profile"]["top"]:
            print(f"  {pct:5.1f} %  {frame}")
    if "echo" in out:
        e = out["echo"]
        print(f"transport only (echo): {e['max_calls']}  per call: {fmt(e['per_call'])}")
    print(f"JSON: {args.json}  curve: {png}  server log: {args.json.with_suffix('.server.log')}")
    return 0


def fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def print_step(step: dict[str, Any]) -> None:
    def n(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(
        f"{step['calls']:>3} calls  v2v p50 {n(step['v2v_ms_p50']):>5} p99 {n(step['v2v_ms_p99']):>5}"
        f"  loop lag p99 {n(step['loop_lag_ms_p99']):>4}  late {step['late_frames']}"
        f"  whisper wait p99 {n(step['whisper_wait_ms_p99'])}"
        f"  TTS first audio p99 {n(step.get('tts_wait_ms_p99'))}"
        f"  answered {step['answered']}/{step['turns']}  cpu {n(step['cpu_ms_per_s'])} ms/s"
        f"  rss {n(step['rss_mb'])} MB  {'OVER: ' + ', '.join(step['over']) if step['over'] else ''}",
        flush=True,
    )
    kinds = step.get("cpu_ms_per_s_by_process", {})
    print(
        "           cpu by process (ms/s): "
        + "  ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        + f"  — machine busy {step.get('machine_busy_pct', '-')} %",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
