"""`netem/run --profiles a,b,c --turns N --out DIR`: scripted calls through the impaired lab.

Builds the lab (`netem.lab`), starts the real agent (`ringback serve`, ICE pinned to the agent
namespace's address) in the agent namespace, synthesizes N utterances (the harness's question
list, several voices and speeds), and per profile: applies it to both directions
(`netem.apply`), places one call from the caller namespace (`netem.caller`, the harness's
`Caller`), clears it. Then writes `DIR/report.json`, `DIR/report.md`, `DIR/latency.png`,
`DIR/loss.png` (`netem.report`) and exits 1 if a profile breaks a threshold, 2 on an error.
`--compare-receive-path` runs every profile against a second agent using aiortc's own
receive path, side by side. SIGTERM/SIGINT and any error tear the lab down; after a
`kill -9`, `netem/lab down` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from agent.audio import Pcm16
from netem.apply import apply, clear
from netem.lab import AGENT_IP, Lab
from netem.profiles import Profile, resolve_list
from netem.report import Thresholds, markdown, plots, profile_entry

log = logging.getLogger("netem.run")

ROOT = Path(__file__).resolve().parent.parent
VOICES = "piper:1.0,piper:1.25,espeak:1.0,piper:0.85"


def pythonpath_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def parse_voices(text: str) -> list[tuple[str, float]]:
    out = []
    for item in text.split(","):
        engine, _, speed = item.strip().partition(":")
        if engine not in ("piper", "espeak"):
            raise ValueError(f"voice engine must be piper or espeak: {engine!r}")
        out.append((engine, float(speed or 1.0)))
    return out


async def synthesize_all(
    turns: int, voices: list[tuple[str, float]], out: Path
) -> list[dict[str, Any]]:
    """Turn i says QUESTIONS[i] with voice i mod len(voices) (speed = 1/length_scale)."""
    from harness.speech import QUESTIONS, synthesize, synthesizer, write_wav

    plan = [(QUESTIONS[i % len(QUESTIONS)], *voices[i % len(voices)]) for i in range(turns)]
    manifest: list[dict[str, Any]] = [{} for _ in plan]
    for engine in sorted({e for _, e, _ in plan}):
        async with synthesizer(engine) as pool:
            for i, (text, eng, speed) in enumerate(plan):
                if eng != engine:
                    continue
                scale = 1.0 / speed if engine == "piper" else None
                pcm = await synthesize(pool, text, scale, deterministic=True)
                if engine == "espeak" and speed != 1.0:
                    raise ValueError("espeak speed other than 1.0 is not supported")
                wav = out / f"utt{i:02d}.wav"
                write_wav(wav, pcm)
                manifest[i] = {"text": text, "voice": engine, "speed": speed, "wav": str(wav)}
    return manifest


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lab = Lab(args.name)
        self.out: Path = args.out
        self.servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}

    def start_server(self, receive_path: str, port: int) -> str:
        ringback = Path(sys.executable).with_name("ringback")
        argv = [str(ringback)] if ringback.exists() else [sys.executable, "-m", "signaling"]
        argv += ["serve", "--host", AGENT_IP, "--port", str(port), "--ice-host", AGENT_IP,
                 "--receive-path", receive_path, "--max-call-s", "900",
                 "--tts", self.args.tts, "--log-level", "INFO",
                 "--workers", "1"]  # one event loop: the network is what is measured  # fmt: skip
        log_path = self.out / f"server-{receive_path}.log"
        with log_path.open("wb") as logf:
            proc = subprocess.Popen(
                self.lab.exec_argv("agent", argv), cwd=ROOT, stdout=logf,
                stderr=subprocess.STDOUT, env=pythonpath_env(), start_new_session=True,
            )  # fmt: skip
        self.lab.record_pid("agent", proc.pid, f"server-{receive_path}")
        url = f"http://{AGENT_IP}:{port}"
        self.servers[receive_path] = (url, proc)
        return url

    def caller_argv(self, *args: str) -> list[str]:
        return self.lab.exec_argv("caller", [sys.executable, "-m", "netem.caller", *args])

    def wait_healthy(self, url: str, timeout_s: float = 180.0) -> None:
        proc = subprocess.run(
            self.caller_argv("--url", url, "--wait-only", str(timeout_s)),
            cwd=ROOT, env=pythonpath_env(), capture_output=True, text=True, timeout=timeout_s + 30,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"agent at {url} did not come up: {proc.stderr[-2000:]}")

    def call_bound_s(self) -> float:
        """The longest one call may take (connect + every turn at its timeout)."""
        return 60.0 + int(self.args.turns) * (float(self.args.turn_timeout_s) + 15)

    def call(self, url: str, receive_path: str, tag: str, manifest_path: Path) -> dict[str, Any]:
        record = self.out / "replies" / tag
        out_json = self.out / "calls" / f"{tag}.json"
        out_json.parent.mkdir(parents=True, exist_ok=True)
        argv = self.caller_argv(
            "--url", url, "--manifest", str(manifest_path), "--json", str(out_json),
            "--record", str(record), "--timeout-s", str(self.args.turn_timeout_s),
        )  # fmt: skip
        bound = self.call_bound_s()
        with (self.out / "calls" / f"{tag}.log").open("wb") as logf:
            proc = subprocess.Popen(argv, cwd=ROOT, env=pythonpath_env(), stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            self.lab.record_pid("caller", proc.pid, f"caller-{tag}")
            try:
                rc = proc.wait(bound)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"call {tag} took longer than {bound:.0f} s") from None
        if rc != 0:
            raise RuntimeError(f"call {tag} failed ({rc}); see calls/{tag}.log")
        data: dict[str, Any] = json.loads(out_json.read_text())
        return data

    def execute(self) -> int:
        args = self.args
        profiles: list[Profile] = resolve_list(args.profiles)
        paths = ["ringback", "aiortc"] if args.compare_receive_path else [args.receive_path]
        thresholds = Thresholds.parse(args.thresholds)
        (self.out / "utterances").mkdir(parents=True, exist_ok=True)
        manifest = asyncio.run(
            synthesize_all(args.turns, parse_voices(args.voices), self.out / "utterances")
        )
        manifest_path = self.out / "utterances" / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2))
        self.lab.up()
        urls = {p: self.start_server(p, args.port + i) for i, p in enumerate(paths)}
        for url in urls.values():
            self.wait_healthy(url)
        transcribe = None if args.no_reply_asr else _recognizer()
        entries: list[dict[str, Any]] = []
        mechanism = "netem"
        t_start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        for profile in profiles:
            for path in paths:
                tag = f"{profile.name}-{path}"
                mech = apply(
                    self.lab,
                    profile,
                    args.mechanism,
                    max_s=self.call_bound_s() + 30,
                    log_dir=self.out,
                )
                if mech == "fallback":
                    mechanism = "fallback"
                info = {
                    **asdict(profile),
                    "mean_loss_pct": profile.mean_loss_pct,
                    "mechanism": mech,
                }
                log.info("profile %s (%s), receive path %s", profile.name, mech, path)
                call, error = None, None
                try:
                    call = self.call(urls[path], path, tag, manifest_path)
                except RuntimeError as e:
                    error = str(e)
                    log.error("%s", e)
                finally:
                    clear(self.lab)
                entry = profile_entry(profile.name, path, info, call,
                                      self.out / "replies" / tag, transcribe, error)  # fmt: skip
                entry["breaches"] = thresholds.breaches(entry) + ([error] if error else [])
                entries.append(entry)
                self.write(mechanism, t_start, entries, plot=False)
        report = self.write(mechanism, t_start, entries, plot=True)
        for p in report["profiles"]:
            log.info("%s/%s: v2v p50 %s p99 %s, wer %s, reply wer %s, %s", p["name"],
                     p["receive_path"], p["v2v_ms_p50"], p["v2v_ms_p99"], p["wer"],
                     p["reply_wer"], "; ".join(p["breaches"]) or "ok")  # fmt: skip
        return 1 if any(p["breaches"] for p in report["profiles"]) else 0

    def write(
        self, mechanism: str, started: str, entries: list[dict[str, Any]], plot: bool
    ) -> dict[str, Any]:
        report = {"mechanism": mechanism, "started": started, "turns": self.args.turns,
                  "thresholds": asdict(Thresholds.parse(self.args.thresholds)), "profiles": entries}  # fmt: skip
        (self.out / "report.json").write_text(json.dumps(report, indent=2))
        (self.out / "report.md").write_text(markdown(report))
        if plot:
            plots(report, self.out)
        return report


def _recognizer() -> Callable[[Pcm16], str]:
    """The agent's own accurate recognizer (whisper tiny.en), to transcribe received replies."""
    from agent.engines.whisper_final import WhisperFinal, model_dir

    return WhisperFinal(model_dir(), cpu_threads=2).transcribe


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netem/run", description=__doc__.splitlines()[0])
    p.add_argument("--profiles", default="clean,lossy-5,4g", help="names from netem/profiles.toml")
    p.add_argument("--turns", type=int, default=5, help="scripted turns per profile")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--name", default="rbk", help="lab name (namespace prefix)")
    p.add_argument("--mechanism", choices=("auto", "netem", "fallback"), default="auto")
    p.add_argument("--receive-path", choices=("ringback", "aiortc"), default="ringback")
    p.add_argument("--compare-receive-path", action="store_true",
                   help="run each profile against ringback's and aiortc's receive path")  # fmt: skip
    p.add_argument("--voices", default=VOICES, help="engine:speed,... used in turn")
    p.add_argument("--tts", default="piper", help="the agent's TTS (piper|espeak)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--turn-timeout-s", type=float, default=30.0)
    p.add_argument(
        "--thresholds", default="", help="e.g. wer=0.5,v2v_ms_p99=3000,answered=1,reply_wer=0.6"
    )
    p.add_argument("--no-reply-asr", action="store_true", help="skip transcribing the replies")
    p.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        raise SystemExit("netem/run needs root (network namespaces)")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    run = Run(args)
    try:
        return run.execute()
    except (RuntimeError, ValueError, OSError) as e:
        log.error("run failed: %s", e)
        return 2
    finally:
        if not args.keep_lab:
            run.lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
