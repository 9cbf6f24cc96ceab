"""Send-path micro-benchmark: CPU per 20 ms frame of the agent's voice, before and after
OutboundAudioTrack encoded its own Opus.

    python -m bench.send_path [--quick] [--frames N] [--rounds N] [--json PATH]

Method. One process, one event loop, nothing on the network. For each path an
OutboundAudioTrack (paced on a virtual clock that never really sleeps) feeds a real aiortc
RTCRtpSender, and `RTCRtpSender._next_encoded_frame` (what aiortc's `_run_rtp` awaits for every
packet) is driven `--frames` times; the RTP packetisation and SRTP after it are the same for
both paths and are left out.

- `before`: the track hands aiortc 48 kHz mono frames; aiortc computes the audio level in
  pure Python (its own `compute_audio_level_dbov`) and runs the patched Opus encoder in the
  default thread pool (`loop.run_in_executor`), as the server did before.
- `frames+numpy level`: the same, with the level in numpy (what tracks that still hand aiortc
  frames get now, e.g. a PCMU call).
- `after`: agent.media.patches has told the track to encode inline (`encode_opus`): it returns
  Opus packets (agent.media.opus.SpeechEncoder) that aiortc only packs.

Each path is measured on `speech` (a voiced speech-like signal queued ahead, every frame
encoded), on `idle` (nothing queued: the silence the agent sends while it listens) and on
`speech+busy thread` (speech while another thread runs pure Python, as the server's ASR and
VAD threads do: every time the loop thread lets the GIL go it may wait a switch interval,
5 ms, to get it back; at most 50 frames).
Reported per frame: `loop_us`, CPU time of the event-loop thread (`time.thread_time`; it
includes C code the thread runs with the GIL released); `process_us`, CPU time of the whole
process (adds the thread-pool workers, and the busy thread when there is one); `wall_us`, the
time to produce each packet (on the executor paths mostly spent waiting for the pool; with the
busy thread, each GIL hand-back in it can add up to 5 ms). ×50 gives ms per second
of audio per call. Paths are interleaved, `--rounds` times; the median round is reported.
The default run (1,500 frames, 50 with the busy thread, × 3 paths × 3 rounds) takes ~25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiortc.codecs import CODECS
from aiortc.rtcrtpsender import RTCRtpSender

from agent.audio import OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16
from agent.media import patches
from agent.media.opus import OpusSendConfig
from agent.media.outbound import OutboundAudioTrack

PATHS = ("before", "frames+numpy level", "after")
LOADS = ("speech", "idle", "speech+busy thread")
BUSY_FRAMES = 50  # "before" needs ~30 ms a frame under contention


class VirtualClock:
    """Paces the track without sleeping: sleep() moves the time on and yields once."""

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)

    def timeout(self, seconds: float) -> contextlib.AbstractAsyncContextManager[object]:
        return asyncio.timeout(None)


class NoTransport:
    """RTCRtpSender only looks at `state` until it is started; nothing is sent here."""

    state = "new"


@dataclass
class Result:
    path: str
    load: str
    frames: int
    loop_us: float
    process_us: float
    wall_us: float

    @property
    def loop_ms_per_s(self) -> float:
        return self.loop_us * 50 / 1000


def speech_like(seconds: float, seed: int = 1) -> Pcm16:
    """Voiced, speech-like and never digitally silent (as tests/test_opus.py's signal)."""
    rng = np.random.default_rng(seed)
    sr = OUT_RATE_HZ
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 20))
    x = x * (0.3 + 0.7 * np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None))
    x = x / np.max(np.abs(x)) * 0.5 * 32767 + rng.normal(0, 30, t.size)
    return np.asarray(x, np.float64).astype(np.int16)


@contextlib.contextmanager
def aiortc_level(installed: patches.Patches, pure_python: bool) -> Iterator[None]:
    """aiortc's own audio level (pure Python) instead of the patch's numpy one, if asked."""
    import aiortc.rtp

    patched = aiortc.rtp.compute_audio_level_dbov
    if pure_python:
        aiortc.rtp.compute_audio_level_dbov = installed.original(
            "aiortc.rtp.compute_audio_level_dbov"
        )
    try:
        yield
    finally:
        aiortc.rtp.compute_audio_level_dbov = patched


@contextlib.contextmanager
def busy_thread(on: bool) -> Iterator[None]:
    """A thread running pure Python for as long as the block runs."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    thread = threading.Thread(target=spin, daemon=True) if on else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join()


async def measure(
    installed: patches.Patches, path: str, load: str, frames: int, speech: Pcm16
) -> Result:
    codec = next(c for c in CODECS["audio"] if c.name == "opus")
    track = OutboundAudioTrack(VirtualClock(), max_ahead_ms=10**9)
    transport: Any = NoTransport()
    sender = RTCRtpSender(track, transport)
    if path == "after" and not installed.encode_inline(sender, codec):
        raise RuntimeError("the track was not switched to inline encoding")
    if load != "idle":
        await track.enqueue(speech[: (frames + 20) * OUT_FRAME_SAMPLES], "speech")
    busy = load == "speech+busy thread"
    if busy:
        frames = min(frames, BUSY_FRAMES)
    with aiortc_level(installed, pure_python=path == "before"), busy_thread(busy):
        for _ in range(20):  # warm-up: encoder, thread pool, settled silence
            await sender._next_encoded_frame(codec)
        t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        for _ in range(frames):
            await sender._next_encoded_frame(codec)
        t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
    track.stop()
    return Result(
        path,
        load,
        frames,
        loop_us=(c1 - c0) / frames * 1e6,
        process_us=(p1 - p0) / frames * 1e6,
        wall_us=(t1 - t0) / frames * 1e6,
    )


async def run(frames: int, rounds: int) -> list[Result]:
    speech = speech_like((frames + 40) * OUT_FRAME_SAMPLES / OUT_RATE_HZ)
    runs: dict[tuple[str, str], list[Result]] = {}
    with patches.install("aiortc", OpusSendConfig()) as installed:  # the send path only
        for _ in range(rounds):
            for load in LOADS:
                for path in PATHS:
                    result = await measure(installed, path, load, frames, speech)
                    runs.setdefault((path, load), []).append(result)
    out = []
    for key in [(p, load) for load in LOADS for p in PATHS]:
        results = sorted(runs[key], key=lambda r: r.loop_us)
        out.append(results[len(results) // 2])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1500, help="per path and load (20 ms)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="150 frames, 1 round (a smoke run)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.rounds = 150, 1
    results = asyncio.run(run(args.frames, args.rounds))
    print(
        f"{'load':18} {'path':20} {'loop µs/frame':>14} {'process µs/frame':>17} "
        f"{'wall µs/frame':>14} {'loop ms/s':>10}"
    )
    for r in results:
        print(
            f"{r.load:18} {r.path:20} {r.loop_us:14.1f} {r.process_us:17.1f} "
            f"{r.wall_us:14.1f} {r.loop_ms_per_s:10.2f}"
        )
    by = {(r.path, r.load): r for r in results}
    for load in LOADS[:2]:
        before, after = by["before", load], by["after", load]
        print(
            f"{load}: event-loop CPU {before.loop_us:.0f} → {after.loop_us:.0f} µs/frame "
            f"({after.loop_us / before.loop_us:.2f}×), process CPU {before.process_us:.0f} → "
            f"{after.process_us:.0f} µs/frame ({after.process_us / before.process_us:.2f}×)"
        )
    load = LOADS[2]
    print(
        f"{load}: wall per packet {by['before', load].wall_us:.0f} → "
        f"{by['after', load].wall_us:.0f} µs"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "benchmark": "send_path",
            "frames": args.frames,
            "rounds": args.rounds,
            "python": sys.version.split()[0],
            "results": [asdict(r) | {"loop_ms_per_s": r.loop_ms_per_s} for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
