"""Capacity benchmark: how many conversational calls one `ringback serve` sustains.

    python -m bench.capacity [--steps 1,4,8,10,12] [--turns 3] [--arrivals burst,spread]
                             [--workers N] [--json bench/results/capacity.json] [--quick]

A real server process; at each step, N callers in N separate processes (so the server is what
is measured), each a real aiortc peer holding a conversation: it speaks a question (piper) and
listens to the whole reply, turn after turn. The questions are what people ask (SAY): most of
the built-in responder's replies are long (3–7 s), a few short, as an LLM's would be. Each
step runs twice: with the callers' turns ending together (`burst`: several people stop
talking at the same instant) and spread evenly over a 14 s period (`spread`: callers talk
while other calls' replies play). Voice-to-voice is measured from the audio at the callers.
The callers stand for remote peers but share the server's CPUs here, so they run at a lower
priority (`--caller-nice`, default 10; 0 makes them compete as equals, which understates the
server). Between steps the server's /metrics is scraped: its event-loop lag (p99 of the step,
from the histogram's buckets), late inbound packets, and the engines' queue waits by class of
work (first audio, turn final, speculative, read-ahead); the slow-turn lines of the server's
log are summarized per step; CPU, RSS and PSS are read from /proc for the server and all its
worker processes (RSS sums pages shared between processes in each; PSS splits them, so it
adds up), and how busy the whole machine was. Calls the server refuses (503: it sheds load)
are counted with the time their answer took, not as failures.
The ramp stops at the first step over a limit (v2v p99 > 1.2 s, over 1 % of inbound packets
late, loop lag p99 > 50 ms, a turn of an admitted call unanswered); `max_calls` is the last
step within all of them, in both arrival patterns.

Transport only, side by side: the same ramp against bench.echo_server (aiortc sends each
caller's audio back: no speech pipeline), whose "v2v" is the audio's round trip; `--no-echo`
skips it. `--quick` (two short steps, one turn, burst only) runs in CI. Absolute numbers are
only meaningful on an otherwise idle machine. The server's log is kept next to the JSON
(`.server.log`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
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
# What the callers say, and what the built-in responder answers (agent/engines/local_llm.py):
# replies of ~1.5 s to ~7 s as they come from a person's questions, most of them long (an LLM's
# replies are rarely shorter). Each caller walks this list from its own starting point.
SAY = [
    "What can you help me with?",  # ~7 s: what it can do
    "I would like to book a table for two tonight.",  # ~5 s: "You said: … Tell me more, …"
    "What time is it?",  # ~1.5 s
    "How are you doing today?",  # ~3 s
    "Can you check the status of my order please?",  # ~5 s
    "What is two plus three?",  # ~1.5 s
]
# Turns of all callers end within this period of one another in `burst` arrivals; `spread`
# arrivals place caller k at k/N of it. Long enough for the longest turn and reply.
TURN_PERIOD_S = 14.0
ARRIVALS = ("burst", "spread")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# --- one caller (runs in its own process) ----------------------------------------------


async def converse(
    url: str,
    speech: dict[str, Any],
    turns: int,
    t0: float,
    period_s: float,
    seed: int,
    echo: bool = False,
) -> Any:
    """One conversational call; with `echo`, against bench.echo_server (v2v: its round trip).

    Turn i's speech ENDS at `t0 + i * period_s` (wall clock, shared by every caller process),
    so callers given the same `t0` finish talking together: the burst a server meets when
    several people stop at once. A caller still listening to a long reply at its next slot
    speaks as soon as the reply ends."""
    from harness.peer import Caller, OfferRejected

    caller = Caller(url)
    out: dict[str, Any] = {"v2v_ms": [], "answered": 0, "turns": turns, "errors": []}
    try:
        await caller.connect()
        for i in range(turns):
            text = SAY[(seed + i) % len(SAY)]
            pcm = speech[text]
            await asyncio.sleep(max(0.0, t0 + i * period_s - len(pcm) / 48_000 - time.time()))
            if echo:
                v2v = await echo_round_trip(caller, pcm, ("echo", i))
            else:
                v2v = (await caller.say(text, pcm)).v2v_ms
            if v2v is not None:
                out["v2v_ms"].append(v2v)
                out["answered"] += 1
    except OfferRejected as exc:
        if exc.status == 503:  # shed: not a failure of the calls the server protects
            out["refused"] = {"status": 503, "ms": exc.took_ms, "retry_after": exc.retry_after}
        else:
            out["errors"].append(str(exc))
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
        converse(
            args.url, speech, args.turns, args.t0, args.period, args.seed, echo=args.echo_caller
        )
    )
    Path(args.out).write_text(json.dumps(result))
    return 0


# Seconds for the callers of a step to start, connect and hear the greeting (plus 0.3 s a
# call) before the first turn's slot.
CONNECT_S = 8.0

# Quiet seconds between steps: longer than the window the server's admission measures its
# headroom over (signaling/headroom.py, 10 s), so a step's calls are judged on their own load.
QUIET_S = 12.0

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


WAIT = "ringback_engine_queue_wait_seconds"


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def series_labels(
    scraped: dict[Any, float], name: str, keys: tuple[str, str]
) -> list[tuple[str, str, dict[str, str]]]:
    """The distinct (key0, key1) label values of a metric's series (key1 may be absent)."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for n, labels in scraped:
        if n == name:
            d = dict(labels)
            pair = (d.get(keys[0], ""), d.get(keys[1], ""))
            seen[pair] = {k: v for k, v in zip(keys, pair, strict=True) if v}
    return [(a, b, labels) for (a, b), labels in sorted(seen.items())]


WORKER_LOST = re.compile(r"worker.*(killing|replac|died)", re.IGNORECASE)
SLOW_TURN = re.compile(r"slow turn \d+: (\d+) ms from end of speech[^:]*: (.*)$")


def slow_turns(log_text: str) -> dict[str, Any]:
    """The server's slow-turn lines (agent/metrics.py TurnMetrics.breakdown): how many, and
    the median and worst of each stage and wait they name; engine workers replaced."""
    stages: dict[str, list[float]] = {}
    count = 0
    for line in log_text.splitlines():
        m = SLOW_TURN.search(line)
        if m is None:
            continue
        count += 1
        for item in m.group(2).split():
            name, _, value = item.partition("=")
            with contextlib.suppress(ValueError):  # not a number (tts_class=first_audio)
                ms = float(value)
                stages.setdefault(name, []).append(ms)
    return {
        "count": count,
        "stages_ms": {
            name: {"p50": percentile(v, 50), "max": max(v)} for name, v in stages.items()
        },
        "workers_replaced": sum(1 for line in log_text.splitlines() if WORKER_LOST.search(line)),
    }


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
    rss_mb: float  # summed over the tree: pages shared between processes count in each
    t: float
    by_kind: dict[str, float]  # CPU seconds by process kind (process_kind)
    machine_busy_s: float  # CPU seconds the whole machine was busy (every process, callers too)
    pss_mb: float | None = None  # proportional set size: shared pages split, so it adds up


def pss_mb(pid: int) -> float:
    """A process's proportional set size (/proc/PID/smaps_rollup), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# Which engine a process of the server's tree runs, from its command line.
KINDS = (
    ("agent.engines.asr_worker", "pocketsphinx"),
    ("agent.engines.tts_worker", "tts"),
    ("resource_tracker", "other"),
    ("agent.engines.whisper_worker", "whisper"),
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


def usage(root: int, pss: bool = False) -> Usage:
    """CPU seconds and resident memory of a process and all its descendants (with `pss`,
    their proportional set size too: slower to read)."""
    cpu = rss = pss_total = 0.0
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
        if pss:
            pss_total += pss_mb(pid)
    return Usage(cpu, rss, time.monotonic(), by_kind, machine_busy_s(), pss_total if pss else None)


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
    arrival: str = "burst",
    server_log: Path | None = None,
) -> Any:
    """One step of the ramp: `calls` callers at once, their turns ending together (`burst`)
    or spread evenly over TURN_PERIOD_S (`spread`); the server's side from /metrics (not for
    the echo peer, which has none), its log (slow-turn lines) and /proc; with `profile`,
    py-spy samples the server (and its worker processes) for the whole step into that file
    (collapsed stacks)."""
    kind = "echo" if echo else "full"
    before, u0 = ({} if echo else scrape(url)), usage(pid)
    log_from = server_log.stat().st_size if server_log is not None else 0
    spy = start_profile(pid, profile) if profile is not None else None
    outs = [work / f"caller-{kind}-{arrival}-{calls}-{i}.json" for i in range(calls)]
    # Every caller process starts, connects and hears the greeting before its first slot.
    t0 = time.time() + CONNECT_S + 0.3 * calls
    offsets = [0.0 if arrival == "burst" else TURN_PERIOD_S * i / calls for i in range(calls)]
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
                "--t0",
                f"{t0 + offsets[i]:.3f}",
                "--seed",
                str(i),
                "--out",
                str(out),
                *(["--echo-caller"] if echo else []),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(work / f"caller-{kind}-{arrival}-{calls}-{i}.log").open("wb"),
        )
        for i, out in enumerate(outs)
    ]
    peak_rss = peak_pss = 0.0
    while any(p.poll() is None for p in procs):
        now = usage(pid, pss=True)
        peak_rss, peak_pss = max(peak_rss, now.rss_mb), max(peak_pss, now.pss_mb or 0.0)
        time.sleep(1.0)
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
    class_waits = {
        f"{engine}/{cls}" if cls else engine: {
            q: ms(histogram_quantile(before, after, WAIT, q / 100, **labels)) for q in (50, 99)
        }
        for engine, cls, labels in series_labels(after, WAIT + "_bucket", ("engine", "class"))
    }
    slow = (
        slow_turns(server_log.read_text(errors="replace")[log_from:])
        if server_log is not None
        else {}
    )
    refused = [r["refused"] for r in results if "refused" in r]
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
        "arrival": arrival,
        "v2v_ms_p50": percentile(v2v, 50),
        "v2v_ms_p90": percentile(v2v, 90),
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
        "engine_wait_ms": class_waits,  # p50/p99 by engine and class of work
        "slow_turns": slow,  # the server's slow-turn lines of this step, summarized
        "answered": sum(r["answered"] for r in results),
        "turns": (calls - len(refused)) * turns,  # of the admitted calls
        "refused": len(refused),
        "refused_ms_max": max((r["ms"] for r in refused), default=None),
        "failed_calls": sum(1 for r in results if r["errors"]) + calls - len(results),
        "cpu_ms_per_s": cpu_ms_per_s,
        "cpu_ms_per_s_by_process": by_kind,  # a replaced worker's CPU before it died is lost
        "machine_busy_pct": round(
            100 * (u1.machine_busy_s - u0.machine_busy_s) / elapsed / (os.cpu_count() or 1), 1
        ),
        "rss_mb": peak_rss,
        "pss_mb": peak_pss,
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
    arrivals: tuple[str, ...] = ARRIVALS,
    server_log: Path | None = None,
    all_steps: bool = False,
) -> dict[str, Any]:
    """Steps up to the first one over a limit, each step once per arrival pattern:
    {max_calls, per_call, idle, steps}. A step holds when every arrival pattern stayed within
    the limits; calls the server refused (503) do not count against it, and `max_calls`
    counts the calls it admitted."""
    time.sleep(1.0)
    idle = usage(pid)
    time.sleep(2.0)
    idle2 = usage(pid, pss=True)
    idle_cpu = 1000 * (idle2.cpu_s - idle.cpu_s) / (idle2.t - idle.t)
    out: dict[str, Any] = {
        "max_calls": 0,
        "per_call": {"cpu_ms_per_s": None, "rss_mb": None, "pss_mb": None},
        "idle": {"cpu_ms_per_s": idle_cpu, "rss_mb": idle2.rss_mb, "pss_mb": idle2.pss_mb},
        "arrivals": list(arrivals),
        "steps": [],
    }
    print(f"idle: rss {idle2.rss_mb:.0f} MB  pss {idle2.pss_mb or 0:.0f} MB  "
          f"cpu {idle_cpu:.0f} ms/s", flush=True)  # fmt: skip
    for calls in steps:
        held = []
        for arrival in arrivals:
            if out["steps"]:  # a quiet server between steps: the last one's load leaves the
                time.sleep(QUIET_S)  # admission window (signaling/headroom.py)
            prof = None
            if profile_dir is not None:
                prof = profile_dir / f"capacity-profile-{calls}-{arrival}.txt"
            step = run_step(url, pid, calls, turns, speech, work, echo, prof, arrival,
                            server_log)  # fmt: skip
            step["over"] = over_limit(step)
            out["steps"].append(step)
            print_step(step)
            if prof is not None and prof.exists():
                out["profile"] = {"calls": calls, "arrival": arrival, "file": str(prof),
                                  "top": profile_top(prof)}  # fmt: skip
            held.append(step)
        if any(step["over"] for step in held):
            out["over_at"] = out.get("over_at", calls)
            if not all_steps:
                break
            continue
        if "over_at" in out:
            continue  # past the first step over a limit: shown, not counted as sustained
        admitted = min(step["calls"] - step["refused"] for step in held)
        out["max_calls"] = max(out["max_calls"], admitted)
        out["per_call"] = {
            "cpu_ms_per_s": max(step["cpu_ms_per_s"] - idle_cpu for step in held) / admitted,
            "rss_mb": max(step["rss_mb"] - idle2.rss_mb for step in held) / admitted,
            "pss_mb": max(step["pss_mb"] - (idle2.pss_mb or 0.0) for step in held) / admitted,
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
    p.add_argument("--steps", default="1,4,8,10,12", help="concurrent calls per step")
    p.add_argument("--turns", type=int, default=3, help="turns per call at each step")
    p.add_argument("--workers", type=int, default=1, help="`ringback serve --workers`")
    p.add_argument("--serve-args", default="", help="more `ringback serve` flags")
    p.add_argument("--quick", action="store_true", help="two short steps (CI)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    p.add_argument("--png", type=Path, default=None, help="default: the JSON path with .png")
    # One caller process (internal):
    p.add_argument("--caller", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--speech", help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--period", type=float, default=TURN_PERIOD_S, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--echo-caller", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-echo", action="store_true", help="skip the transport-only ramp")
    p.add_argument(
        "--all-steps",
        action="store_true",
        help="run every step, also past the first one over a limit (max_calls still counts "
        "only the steps before it)",
    )
    p.add_argument(
        "--arrivals",
        default=",".join(ARRIVALS),
        help="how the callers' turns line up at each step: burst (they end together), "
        f"spread (evenly over {TURN_PERIOD_S:.0f} s), or both (each step runs once per pattern)",
    )
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
    arrivals = ("burst",) if args.quick else tuple(a for a in args.arrivals.split(",") if a)
    if not arrivals or set(arrivals) - set(ARRIVALS):
        p.error(f"--arrivals: a list of {', '.join(ARRIVALS)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    png = args.png or args.json.with_suffix(".png")
    # Every caller connects from 127.0.0.1 here, but stands for a person at an address of
    # their own: the per-address limits (429) are lifted, and so is the cap on calls still
    # connecting (a burst of a step's callers would evict the oldest); the server's own
    # capacity limits (--max-sessions, admission by measured headroom: 503) stay.
    most = str(max(steps) + 2)
    serve = ["--max-sessions", most, "--max-pending-per-client", most, "--offer-burst", most,
             "--offers-per-minute", "6000", "--max-pending", most,
             *args.serve_args.split()]  # fmt: skip
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
                         profile_dir=profile_dir, arrivals=arrivals,
                         server_log=server.log_path, all_steps=args.all_steps)
                )  # fmt: skip
            finally:  # slow turns log their stage times there (--slow-turn-ms)
                shutil.copyfile(server.log_path, args.json.with_suffix(".server.log"))
        if not args.no_echo:
            print("transport only (echo):")
            with echo_server(work) as (url, pid):
                out["echo"] = ramp(url, pid, steps, turns, speech_file, work, echo=True,
                                   arrivals=arrivals)  # fmt: skip
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

    refused = ""
    if step.get("refused"):
        refused = f"  refused {step['refused']} (503 in ≤ {n(step['refused_ms_max'])} ms)"
    print(
        f"{step['calls']:>3} calls {step.get('arrival', ''):>6}  v2v p50 {n(step['v2v_ms_p50']):>5}"
        f" p90 {n(step.get('v2v_ms_p90')):>5} p99 {n(step['v2v_ms_p99']):>5}"
        f"  loop lag p99 {n(step['loop_lag_ms_p99']):>4}  late {step['late_frames']}"
        f"  answered {step['answered']}/{step['turns']}{refused}"
        f"  cpu {n(step['cpu_ms_per_s'])} ms/s  rss {n(step['rss_mb'])} MB"
        f"  pss {n(step.get('pss_mb'))} MB  {'OVER: ' + ', '.join(step['over']) if step['over'] else ''}",
        flush=True,
    )
    kinds = step.get("cpu_ms_per_s_by_process", {})
    print(
        "           cpu by process (ms/s): "
        + "  ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        + f"  — machine busy {step.get('machine_busy_pct', '-')} %",
        flush=True,
    )
    waits = step.get("engine_wait_ms", {})
    if waits:
        print(
            "           engine waits p50/p99 (ms): "
            + "  ".join(f"{k} {n(v[50])}/{n(v[99])}" for k, v in waits.items()),
            flush=True,
        )
    slow = step.get("slow_turns", {})
    if slow.get("count"):
        worst = sorted(slow["stages_ms"].items(), key=lambda kv: -kv[1]["p50"])[:6]
        print(
            f"           {slow['count']} slow turns, median/worst (ms): "
            + "  ".join(f"{k} {n(v['p50'])}/{n(v['max'])}" for k, v in worst)
            + f"; workers replaced {slow['workers_replaced']}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
