"""Receive-path benchmark: ringback's jitter buffer + Opus FEC/PLC vs aiortc's own path.

    python -m bench.audio_path [--quick] [--json PATH] [--seed N]

Method. Two real aiortc RTCPeerConnections in this process talk over loopback ICE. The sender
plays a reference recording (several piper sentences with short pauses, 48 kHz) through an
OutboundAudioTrack, Opus at 32 kb/s with in-band FEC; its outgoing RTP is impaired in-process
and seeded (harness/impair.py). The receiver reads the remote track with `playout_frames`.
Every profile is measured on both receive paths in the same run, each on a fresh pair of
peer connections: each call installs the patches (agent/media/patches.py) with its receive
path before the peers are created ("aiortc": aiortc's own) and uninstalls them after.

- Timeline. Each received 20 ms frame is placed on a playout timeline at max(its delivery
  time, the end of the previous frame), gaps under 10 ms closed: a sound card playing frames
  back to back, silence when it has none. ringback's frames carry their slot time (a virtual
  20 ms clock, so a busy event loop is not taken for delay); aiortc's path has no clock, so
  this is what an app playing its frames as they come would output.
- Delay. Every 100 ms, a 200 ms window of the reference (if not silent) is located on that
  timeline by normalized cross-correlation (16 kHz, lag 0..800 ms, peak >= 0.7). Its lag is the
  time from the moment the window's first sample was handed to the sender (on_mark_started
  + sample offset) to the moment it is played out, so it includes Opus' own algorithmic
  delay (~6.5 ms) and encode/decode time; nothing is subtracted. p50/p99 over the windows.
- Delivered: 20 ms frames placed within the reference's span (shifted by the median lag),
  over the frames it spans, capped at 100. ringback delivers every slot (real, FEC-recovered
  or concealed); aiortc's path delivers only the frames it decoded.
- Concealed / FEC %: ringback's LinkStats over the whole call (aiortc's path has neither: 0).
- Aligned audio: the timeline cut into sentences (mid-pause), each shifted by the median lag
  of its own windows, so a delay change between sentences costs nothing; within one it does.
- PESQ-WB (P.862.2; it also re-aligns per utterance itself) and STOI, at 16 kHz on it.
- WER: pocketsphinx, one utterance per sentence of the aligned audio, against the text;
  `reference_wer` is the same recognizer on the unimpaired reference (its own floor).
- Spike (full run): the sender's RTP is held for an extra 200 ms for 2 s from 3 s into the
  reference (a stalled queue that then drains in order); `recovery_ms` is how long after the
  stall ends the lag is back within 20 ms of its pre-spike median, in 3 located windows
  running (None: not by the end of the recording).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pesq
import pystoi
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from scipy import signal

from agent.audio import ASR_RATE_HZ, OUT_FRAME_SAMPLES, OUT_RATE_HZ, Decimator, Pcm16
from agent.clock import MonotonicClock
from agent.engines.pocketsphinx_asr import AsrPoolConfig, PocketsphinxEngine, PocketsphinxRecognizer
from agent.media import patches
from agent.media.inbound import LinkStats, playout_frames
from agent.media.opus import OpusSendConfig
from agent.media.outbound import OutboundAudioTrack
from agent.metrics import percentile
from harness.impair import Impairment, impair_sender
from harness.speech import synthesize, synthesizer
from harness.wer import wer

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "What time is it?",
    "Can you help me book a table for two people tomorrow evening?",
    "Please call me back when you get this message.",
    "The weather is nice today, so we could walk to the station.",
    "Thank you very much.",
    "What is your name?",
]
QUICK_SENTENCES = [SENTENCES[0], SENTENCES[2]]
PAUSE_S = 0.35  # between sentences
WARMUP_S = 1.0  # silence sent before the reference, so both receive paths have settled
TAIL_S = 0.8  # time left after the reference for late audio
SNAP_S = 0.010  # timeline: a frame due this soon after the previous one's end follows it
WINDOW_S, STEP_S, MAX_LAG_S, MIN_CORR = 0.2, 0.1, 0.8, 0.7
QUIET_RMS = 32768 * 10 ** (-40 / 20)  # windows below -40 dBFS are not located
SPIKE_AT_S, SPIKE_S, SPIKE_EXTRA_S = 3.0, 2.0, 0.2
RECOVERED_S, RECOVERED_WINDOWS = 0.020, 3


@dataclass(frozen=True)
class Profile:
    name: str
    impairment: Impairment = field(default_factory=Impairment)
    spike: bool = False


PROFILES = [
    Profile("clean"),
    Profile("loss 5%", Impairment(loss_pct=5)),
    # Gilbert–Elliott: mean burst 100/33.3 = 3 packets, P(bad) = 3.7/(3.7+33.3) = 10 %.
    Profile("burst 10%", Impairment(burst_enter_pct=3.7, burst_exit_pct=33.3)),
    Profile("jitter 50±20", Impairment(delay_ms=50, jitter_ms=20)),
    Profile("reorder 2%", Impairment(reorder_pct=2)),
    Profile("spike +200ms", spike=True),
]
PATHS = ("ringback", "aiortc")


@dataclass
class Reference:
    pcm48: Pcm16
    texts: list[str]
    spans16: list[tuple[int, int]]  # each sentence's [start, end) at 16 kHz
    pcm16: Pcm16 = field(init=False)

    def __post_init__(self) -> None:
        self.pcm16 = Decimator(3).process(self.pcm48)


async def make_reference(texts: list[str]) -> Reference:
    parts: list[Pcm16] = []
    spans: list[tuple[int, int]] = []
    pause = np.zeros(int(PAUSE_S * OUT_RATE_HZ), np.int16)
    n = 0
    async with synthesizer("piper") as pool:
        for text in texts:
            pcm = await synthesize(pool, text)
            spans.append((n // 3, (n + pcm.size) // 3))
            parts += [pcm, pause]
            n += pcm.size + pause.size
    return Reference(np.concatenate(parts), texts, spans)


class DelaySpike:
    """Holds the RTP sent during `window` an extra `extra_s`, in order (a stalled queue)."""

    def __init__(self, extra_s: float) -> None:
        self.extra_s = extra_s
        self.window: tuple[float, float] | None = None
        self._queue: asyncio.Queue[tuple[float, bytes, patches.SendRtp]] = asyncio.Queue()
        self._release = 0.0
        self._task: asyncio.Task[None] | None = None

    def install(self, pc: Any) -> None:
        patches.hook_outgoing_rtp(pc, self._hook)

    async def _drain(self) -> None:
        while True:
            release, data, send = await self._queue.get()
            await asyncio.sleep(release - time.monotonic())
            await send(data)

    async def _hook(self, data: bytes, send: patches.SendRtp) -> None:
        now = time.monotonic()
        w = self.window
        self._release = max(now + self.extra_s if w and w[0] <= now < w[1] else now, self._release)
        if self._release <= now:
            await send(data)
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        self._queue.put_nowait((self._release, data, send))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Capture:
    frames: list[tuple[float, Pcm16]]  # (playout time, 48 kHz mono)
    t_sent: float  # when the reference's first sample was handed to the sender
    link: LinkStats | None
    packets_sent: int
    packets_dropped: int


async def call(ref: Reference, profile: Profile, path: str, seed: int) -> Capture:
    """One fresh pair of peer connections; returns what the receiver played out."""
    with patches.install(path, OpusSendConfig(), ["127.0.0.1"]):
        return await _call(ref, profile, path, seed)


async def _call(ref: Reference, profile: Profile, path: str, seed: int) -> Capture:
    """`call` with the patches installed."""
    clock = MonotonicClock()
    started: list[float] = []
    sending = asyncio.Event()
    spike = DelaySpike(SPIKE_EXTRA_S) if profile.spike else None

    def on_started(mark: Hashable, t: float) -> None:
        started.append(t)
        sending.set()
        if spike is not None:
            spike.window = (t + SPIKE_AT_S, t + SPIKE_AT_S + SPIKE_S)

    mic = OutboundAudioTrack(clock, max_ahead_ms=60_000, on_mark_started=on_started)
    tx = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    rx = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    frames: list[tuple[float, Pcm16]] = []
    stats: list[LinkStats] = []
    playing = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        async with contextlib.aclosing(playout_frames(track, clock, on_stats=stats.append)) as it:
            async for frame in it:
                if frame.rate_hz != OUT_RATE_HZ:
                    raise ValueError(f"expected 48 kHz, got {frame.rate_hz} Hz")
                frames.append((frame.t, frame.pcm))
                playing.set()

    @rx.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.get_running_loop().create_task(consume(track)))

    tx.addTransceiver(mic, direction="sendonly")
    await tx.setLocalDescription(await tx.createOffer())
    link = impair_sender(tx, dataclasses.replace(profile.impairment, seed=seed))
    if spike is not None:
        spike.install(tx)
    try:
        await rx.setRemoteDescription(tx.localDescription)
        await rx.setLocalDescription(await rx.createAnswer())
        await tx.setRemoteDescription(rx.localDescription)
        async with asyncio.timeout(20):
            await playing.wait()
        await asyncio.sleep(WARMUP_S)
        await mic.enqueue(ref.pcm48, "reference")
        await sending.wait()
        t_sent = started[0]
        await asyncio.sleep(t_sent + ref.pcm48.size / OUT_RATE_HZ + TAIL_S - clock.now())
    finally:
        mic.stop()
        await link.aclose()
        if spike is not None:
            await spike.aclose()
        await tx.close()
        await rx.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Capture(frames, t_sent, stats[-1] if stats else None, link.sent, link.dropped)


def timeline(frames: list[tuple[float, Pcm16]]) -> tuple[float, Pcm16, list[int]]:
    """Frames → (time of sample 0, 48 kHz PCM as played back to back, each frame's start)."""
    t0, snap = frames[0][0], int(SNAP_S * OUT_RATE_HZ)
    starts, end = [], 0
    for t, pcm in frames:
        at = round((t - t0) * OUT_RATE_HZ)
        starts.append(end if at < end + snap else at)
        end = starts[-1] + pcm.size
    out = np.zeros(end, np.int16)
    for start, (_, pcm) in zip(starts, frames, strict=True):
        out[start : start + pcm.size] = pcm
    return t0, out, starts


def locate(ref16: Pcm16, dev16: Pcm16, base: float) -> list[tuple[float, float]]:
    """(reference time, lag) of each 200 ms reference window found in `dev16`, in seconds.

    `base` is where reference sample 0 would be in `dev16` with no delay at all.
    """
    n, step, span = (int(x * ASR_RATE_HZ) for x in (WINDOW_S, STEP_S, MAX_LAG_S))
    dev = dev16.astype(np.float64)
    energy = np.concatenate([[0.0], np.cumsum(dev**2)])
    floor = n * (QUIET_RMS / 4) ** 2  # a near-silent stretch must not look like a match
    out = []
    for i in range(0, ref16.size - n + 1, step):
        w = ref16[i : i + n].astype(np.float64)
        if math.sqrt(float(np.mean(w**2))) < QUIET_RMS:
            continue
        lo = max(0, round(base + i))
        hi = min(dev.size, lo + span + n)
        if hi - lo < n:
            continue
        num = signal.correlate(dev[lo:hi], w, mode="valid", method="fft")
        seg_energy = np.maximum(energy[lo + n : hi + 1] - energy[lo : hi - n + 1], floor)
        ncc = num / (np.sqrt(seg_energy) * np.linalg.norm(w))
        k = int(np.argmax(ncc))
        if ncc[k] >= MIN_CORR:
            out.append((i / ASR_RATE_HZ, (lo + k - base - i) / ASR_RATE_HZ))
    return out


def recovery_ms(lags: list[tuple[float, float]]) -> float | None:
    """After the stall: how long until the lag is back within 20 ms of its pre-spike median
    (in 3 located windows running), in ms of the reference; None if it never is."""
    before = percentile([d for t, d in lags if t + WINDOW_S <= SPIKE_AT_S], 50)
    if before is None:
        return None
    run: list[float] = []
    for t, d in lags:
        if t < SPIKE_AT_S + SPIKE_S:
            continue
        run = [*run, t] if abs(d - before) <= RECOVERED_S else []
        if len(run) == RECOVERED_WINDOWS:
            return round((run[0] - SPIKE_AT_S - SPIKE_S) * 1000)
    return None


def score(fn: Callable[[], Any], digits: int) -> float | None:
    try:
        return round(float(fn()), digits)
    except Exception:  # e.g. pesq.NoUtterancesError on silence
        return None


async def transcribe(asr: PocketsphinxRecognizer, ref: Reference, pcm16: Pcm16) -> str:
    """One utterance per sentence, cut from the aligned audio with a little margin."""
    heard = []
    for start, end in ref.spans16:
        await asr.start()
        await asr.push(pcm16[max(0, start - 1600) : end + 4000])
        heard.append(await asr.finish())
    return " ".join(heard)


def shifted(pcm: Pcm16, offset: int, size: int) -> Pcm16:
    """pcm[offset : offset + size], zero-padded where out of range."""
    out = np.zeros(size, np.int16)
    lo, hi = max(0, offset), min(pcm.size, offset + size)
    if hi > lo:
        out[lo - offset : hi - offset] = pcm[lo:hi]
    return out


def aligned(ref: Reference, dev16: Pcm16, base: float, lags: list[tuple[float, float]]) -> Pcm16:
    """The played audio under the reference, sentence by sentence (cut mid-pause), each
    shifted by the median lag of its own windows (the run's median if it has none)."""
    overall = percentile([d for _, d in lags], 50) or 0.0
    mids = [(end + start) // 2 for (_, end), (start, _) in itertools.pairwise(ref.spans16)]
    parts = []
    for lo, hi in itertools.pairwise([0, *mids, ref.pcm16.size]):
        lag = percentile([d for t, d in lags if lo <= t * ASR_RATE_HZ < hi], 50)
        offset = round(base + lo + (overall if lag is None else lag) * ASR_RATE_HZ)
        parts.append(shifted(dev16, offset, hi - lo))
    return np.concatenate(parts)


async def analyze(
    ref: Reference, cap: Capture, profile: Profile, path: str, asr: PocketsphinxRecognizer
) -> dict[str, Any]:
    t0, dev48, starts = timeline(cap.frames)
    lags = locate(ref.pcm16, Decimator(3).process(dev48), (cap.t_sent - t0) * ASR_RATE_HZ)
    delays = [d for _, d in lags]
    lag = percentile(delays, 50) or 0.0
    first = round((cap.t_sent - t0 + lag) * OUT_RATE_HZ)  # reference sample 0 on the timeline
    in_span = sum(first <= s < first + ref.pcm48.size for s in starts)
    expected = ref.pcm48.size // OUT_FRAME_SAMPLES
    deg16 = aligned(ref, Decimator(3).process(dev48), (cap.t_sent - t0) * ASR_RATE_HZ, lags)
    r, d = ref.pcm16.astype(np.float64), deg16.astype(np.float64)
    heard = await transcribe(asr, ref, deg16)
    s = cap.link
    delivered = max(1, s.frames_delivered) if s else 1
    row: dict[str, Any] = {
        "profile": profile.name,
        "path": path,
        "frames_delivered_pct": round(min(100.0, 100 * in_span / expected), 1),
        "playout_delay_ms_p50": _ms(percentile(delays, 50)),
        "playout_delay_ms_p99": _ms(percentile(delays, 99)),
        "concealed_pct": round(100 * s.frames_concealed / delivered, 1) if s else 0.0,
        "fec_recovered_pct": round(100 * s.frames_fec_recovered / delivered, 1) if s else 0.0,
        "pesq_wb": score(lambda: pesq.pesq(ASR_RATE_HZ, r, d, "wb"), 2),
        "stoi": score(lambda: pystoi.stoi(r, d, ASR_RATE_HZ), 3),
        "wer": round(wer(" ".join(ref.texts), heard), 3),
        "heard": heard,
        "packets_sent": cap.packets_sent,
        "packets_dropped": cap.packets_dropped,
        "packets_lost_seen": s.packets_lost if s else None,
        "windows_located": len(lags),
    }
    if profile.spike:
        row["recovery_ms"] = recovery_ms(lags)
    return row


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def run(quick: bool, seed: int) -> list[dict[str, Any]]:
    texts = QUICK_SENTENCES if quick else SENTENCES
    profiles = PROFILES[:2] if quick else PROFILES
    ref = await make_reference(texts)
    engine = PocketsphinxEngine(AsrPoolConfig(processes=1, preload=1))
    await engine.start()
    asr = engine.create()
    await asr.open()
    rows = []
    try:
        floor = round(wer(" ".join(texts), await transcribe(asr, ref, ref.pcm16)), 3)
        for profile in profiles:
            for path in PATHS:
                cap = await call(ref, profile, path, seed)
                row = await analyze(ref, cap, profile, path, asr)
                row.update(reference_s=round(ref.pcm48.size / OUT_RATE_HZ, 1), reference_wer=floor)
                rows.append(row)
                print(f"  {profile.name:<13} {path:<9} done", file=sys.stderr, flush=True)
    finally:
        await asr.aclose()
        await engine.aclose()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    def f(v: Any, digits: int = 0) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    print(
        f"{'profile':<13} {'path':<9} {'deliv %':>7} {'delay p50':>9} {'p99':>5} {'conc %':>6} "
        f"{'FEC %':>5} {'PESQ-WB':>7} {'STOI':>5} {'WER':>5}  sent/dropped"
    )
    for r in rows:
        print(
            f"{r['profile']:<13} {r['path']:<9} {f(r['frames_delivered_pct'], 1):>7} "
            f"{f(r['playout_delay_ms_p50']):>9} {f(r['playout_delay_ms_p99']):>5} "
            f"{f(r['concealed_pct'], 1):>6} {f(r['fec_recovered_pct'], 1):>5} "
            f"{f(r['pesq_wb'], 2):>7} {f(r['stoi'], 2):>5} {f(r['wer'], 2):>5}  "
            f"{r['packets_sent']}/{r['packets_dropped']}"
        )
    for r in rows:
        if "recovery_ms" in r:
            rec = r["recovery_ms"]
            back = "not within the recording" if rec is None else f"{rec} ms"
            print(f"{r['profile']} / {r['path']}: lag back within 20 ms of before: {back}")
    if rows:
        print(f"(reference {rows[0]['reference_s']} s; its own WER {rows[0]['reference_wer']:.2f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short reference, clean + 5 %% loss")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    name = "audio_path_quick.json" if args.quick else "audio_path.json"
    out: Path = args.json or ROOT / "bench" / "results" / name
    rows = asyncio.run(run(args.quick, args.seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print_table(rows)
    print(f"(JSON: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
