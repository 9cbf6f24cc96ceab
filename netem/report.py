"""What a netem run measured, per profile: `report.json`, `report.md` and PNG plots.

Per profile (from the caller's JSON and the reply WAVs it recorded):
- `v2v_ms_p50/p90/p99`: voice-to-voice at the caller, from the audio (harness convention);
- `wer`: the agent's transcript of each turn against the script (mean over turns; a turn
  with no transcript counts 1.0);
- `connect_ms`: offer sent -> events channel open;
- `agent_link`: the agent's last `link` event (uplink loss, FEC, concealment, playout delay;
  none with aiortc's receive path) and what it reported over RTCP (`rtcp_packets_lost`,
  `rtcp_jitter_ms`);
- `caller_link`: the caller's own receive path on the downlink (loss, FEC, concealment);
- `reply_gaps_ms`: per turn, the total of silent stretches >= 60 ms (peak < -50 dBFS) inside
  the received reply, between its first and last loud sample; p50 and max over turns.
  Natural pauses count too: compare with `clean`;
- `reply_wer`: the received reply audio transcribed by whisper tiny.en (the agent's own
  accurate recognizer) against the `reply` text the agent reports having said.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.audio import ASR_RATE_HZ, OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16, Resampler
from agent.metrics import summarize
from harness.peer import LOUD, first_speech_offset, last_speech_offset
from harness.wer import wer

log = logging.getLogger("netem.report")

SILENT = int(32768 * 10 ** (-50 / 20))
GAP_MIN_FRAMES = 3  # 60 ms


def reply_gaps_ms(pcm: Pcm16) -> float:
    """Total ms of silent runs >= 60 ms between the first and last loud sample."""
    start, end = first_speech_offset(pcm), last_speech_offset(pcm)
    if end <= start or not np.any(np.abs(pcm.astype(np.int32)) > LOUD):
        return 0.0
    span = pcm[start:end].astype(np.int32)
    n = span.size // OUT_FRAME_SAMPLES
    silent = [
        int(np.max(np.abs(span[i * OUT_FRAME_SAMPLES : (i + 1) * OUT_FRAME_SAMPLES]))) < SILENT
        for i in range(n)
    ]
    total, run = 0, 0
    for s in [*silent, False]:
        if s:
            run += 1
        else:
            if run >= GAP_MIN_FRAMES:
                total += run
            run = 0
    return total * 20.0


def speech_16k(pcm48: Pcm16) -> Pcm16:
    """The loud span of a received reply, at 16 kHz for the recognizer (max 29 s)."""
    start, end = first_speech_offset(pcm48), last_speech_offset(pcm48)
    pcm = pcm48[max(0, start - OUT_RATE_HZ // 5) : min(pcm48.size, end + OUT_RATE_HZ // 5)]
    pcm = pcm[: 29 * OUT_RATE_HZ]
    r = Resampler(ASR_RATE_HZ)
    return np.concatenate([r.push(pcm, OUT_RATE_HZ), r.flush()]).astype(np.int16)


@dataclass(frozen=True)
class Thresholds:
    wer: float = 0.5
    v2v_ms_p99: float = 3000.0
    answered: float = 1.0  # fraction of turns answered
    reply_wer: float = 0.6

    @classmethod
    def parse(cls, text: str) -> Thresholds:
        kv = {k.strip(): float(v) for k, _, v in (i.partition("=") for i in text.split(",") if i)}
        unknown = set(kv) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown thresholds {sorted(unknown)}")
        return cls(**kv)

    def breaches(self, p: dict[str, Any]) -> list[str]:
        out = []
        if p["wer"] is None or p["wer"] > self.wer:
            out.append(f"wer {p['wer']} > {self.wer}")
        if p["v2v_ms_p99"] is None or p["v2v_ms_p99"] > self.v2v_ms_p99:
            out.append(f"v2v p99 {p['v2v_ms_p99']} > {self.v2v_ms_p99}")
        if p["answered"] < self.answered * p["turns"]:
            out.append(f"answered {p['answered']}/{p['turns']}")
        if p["reply_wer"] is not None and p["reply_wer"] > self.reply_wer:
            out.append(f"reply wer {p['reply_wer']} > {self.reply_wer}")
        return out


AGENT_LINK_KEYS = (
    "packets_received", "packets_lost", "packets_late", "packets_reordered",
    "frames_delivered", "frames_fec_recovered", "frames_concealed",
    "playout_delay_ms_p50", "playout_delay_ms_p99", "target_delay_ms", "path",
)  # fmt: skip


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None or math.isnan(v) else round(v, nd)


def profile_entry(
    name: str,
    receive_path: str,
    profile_info: dict[str, Any],
    call: dict[str, Any] | None,
    record_dir: Path,
    transcribe: Callable[[Pcm16], str] | None,
    error: str | None = None,
) -> dict[str, Any]:
    from harness.speech import load_wav

    turns = (call or {}).get("turns", [])
    v2v = [t["v2v_ms"] for t in turns if t["v2v_ms"] is not None]
    wers = [1.0 if not t["heard"] else wer(t["said"], t["heard"]) for t in turns]
    gaps: list[float] = []
    reply_wers: list[float] = []
    per_turn = []
    for i, t in enumerate(turns, 1):
        wav = record_dir / f"turn{i:02d}.wav"
        gap = rwer = None
        heard_reply = None
        if wav.exists() and t.get("reply"):
            pcm = load_wav(wav)
            gap = reply_gaps_ms(pcm)
            gaps.append(gap)
            if transcribe is not None:
                heard_reply = transcribe(speech_16k(pcm))
                rwer = wer(t["reply"], heard_reply)
                reply_wers.append(rwer)
        per_turn.append({
            "said": t["said"], "voice": t.get("voice"), "speed": t.get("speed"),
            "heard": t["heard"], "reply": t["reply"], "v2v_ms": t["v2v_ms"],
            "reply_heard_by_caller": heard_reply, "reply_gaps_ms": gap, "reply_wer": rwer,
        })  # fmt: skip
    last_link: dict[str, Any] = next((t["link"] for t in reversed(turns) if t.get("link")), {})
    agent_link = {k: last_link.get(k) for k in AGENT_LINK_KEYS if k in last_link}
    if last_link.get("packets_received") is not None:
        got, lost = last_link["packets_received"], last_link.get("packets_lost", 0)
        agent_link["loss_pct"] = _r(100 * lost / max(1, got + lost), 2)
    rtc = (call or {}).get("rtc", {})
    # What the agent reported over RTCP (the only view with aiortc's receive path).
    for key, src in (("rtcp_packets_lost", "agent_reported_packets_lost"),
                     ("rtcp_jitter_ms", "agent_reported_jitter_ms")):  # fmt: skip
        if src in rtc:
            agent_link[key] = rtc[src]
    caller_rx = rtc.get("caller_receive_path", {})
    caller_link = {k: caller_rx.get(k) for k in AGENT_LINK_KEYS if k in caller_rx}
    s = summarize(v2v, "v2v_ms")
    gs = summarize(gaps, "g")
    return {
        "name": name,
        "receive_path": receive_path,
        "profile": profile_info,
        "turns": len(turns),
        "answered": len(v2v),
        "v2v_ms_p50": _r(s["v2v_ms_p50"]),
        "v2v_ms_p90": _r(s["v2v_ms_p90"]),
        "v2v_ms_p99": _r(s["v2v_ms_p99"]),
        "wer": _r(float(np.mean(wers)), 3) if wers else None,
        "connect_ms": (call or {}).get("connect_ms"),
        "agent_link": agent_link,
        "caller_link": caller_link,
        "reply_gaps_ms": {"p50": _r(gs["g_p50"]), "max": _r(max(gaps) if gaps else None)},
        "reply_wer": _r(float(np.mean(reply_wers)), 3) if reply_wers else None,
        "error": error,
        "per_turn": per_turn,
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# netem run",
        "",
        f"Mechanism: **{report['mechanism']}**. Started {report['started']}; "
        f"{report['turns']} turns per profile. Every profile impairs both directions.",
        "",
        "| profile | path | v2v p50 / p90 / p99 ms | WER | answered | connect ms | agent: lost / FEC / concealed, playout p50/p99 ms | caller: lost / FEC / concealed | reply gaps p50 / max ms | reply WER | breaches |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["profiles"]:
        a, c = p["agent_link"], p["caller_link"]
        lines.append(
            f"| {p['name']} | {p['receive_path']} | {_fmt(p['v2v_ms_p50'])} / {_fmt(p['v2v_ms_p90'])} / "
            f"{_fmt(p['v2v_ms_p99'])} | {_fmt(p['wer'])} | {p['answered']}/{p['turns']} | "
            f"{_fmt(p['connect_ms'])} | {_fmt(a.get('packets_lost', a.get('rtcp_packets_lost')))} / {_fmt(a.get('frames_fec_recovered'))} / "
            f"{_fmt(a.get('frames_concealed'))}, {_fmt(a.get('playout_delay_ms_p50'))}/{_fmt(a.get('playout_delay_ms_p99'))} | "
            f"{_fmt(c.get('packets_lost'))} / {_fmt(c.get('frames_fec_recovered'))} / {_fmt(c.get('frames_concealed'))} | "
            f"{_fmt(p['reply_gaps_ms']['p50'])} / {_fmt(p['reply_gaps_ms']['max'])} | {_fmt(p['reply_wer'])} | "
            f"{'; '.join(p.get('breaches', [])) or 'ok'} |"
        )
    lines += ["", "## Profiles", ""]
    seen = set()
    for p in report["profiles"]:
        if p["name"] not in seen:
            seen.add(p["name"])
            lines.append(f"- `{p['name']}`: {p['profile'].get('description', '')}")
    lines += ["", "## Turns", ""]
    for p in report["profiles"]:
        lines.append(f"### {p['name']} ({p['receive_path']})")
        if p.get("error"):
            lines.append(f"error: {p['error']}")
        for t in p["per_turn"]:
            lines.append(
                f"- {t['said']!r} ({t['voice']} x{t['speed']}) -> heard {t['heard']!r}, "
                f"v2v {_fmt(t['v2v_ms'])} ms; reply {t['reply']!r}, caller heard "
                f"{t['reply_heard_by_caller']!r}"
            )
        lines.append("")
    lines += [
        "Plots: `latency.png` (v2v per profile), `loss.png` (WER, concealment, reply gaps vs loss).",
        "",
    ]
    return "\n".join(lines)


def plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profs = report["profiles"]
    labels = [f"{p['name']}\n{p['receive_path']}" for p in profs]
    data = [
        [t["v2v_ms"] for t in p["per_turn"] if t["v2v_ms"] is not None] or [np.nan] for p in profs
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(profs)), 4))
    ax.boxplot(data, tick_labels=labels, whis=(0, 100))
    ax.set_ylabel("voice-to-voice at the caller (ms)")
    ax.set_title(f"Latency per profile ({report['mechanism']})")
    fig.tight_layout()
    latency = out / "latency.png"
    fig.savefig(latency, dpi=100)
    plt.close(fig)

    loss = [p["profile"].get("mean_loss_pct", 0.0) for p in profs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    series = (
        ("WER (agent's transcript)", [p["wer"] for p in profs]),
        ("frames concealed (agent + caller)", [
            (p["agent_link"].get("frames_concealed") or 0) + (p["caller_link"].get("frames_concealed") or 0)
            for p in profs]),
        ("reply gaps p50 (ms)", [p["reply_gaps_ms"]["p50"] for p in profs]),
    )  # fmt: skip
    for ax, (title, ys) in zip(axes, series, strict=True):
        xs = [x for x, y in zip(loss, ys, strict=True) if y is not None]
        ys2 = [y for y in ys if y is not None]
        colors = ["tab:blue" if p["receive_path"] == "ringback" else "tab:orange" for p in profs]
        ax.scatter(xs, ys2, c=[c for c, y in zip(colors, ys, strict=True) if y is not None])
        for x, y, lab in zip(loss, ys, labels, strict=True):
            if y is not None:
                ax.annotate(lab.replace("\n", " "), (x, y), fontsize=7)
        ax.set_xlabel("profile loss per direction (%)")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
    fig.tight_layout()
    lossp = out / "loss.png"
    fig.savefig(lossp, dpi=100)
    plt.close(fig)
    return [latency, lossp]
