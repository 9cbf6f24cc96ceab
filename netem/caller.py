"""The caller side of a netem run, started inside the lab's caller namespace.

`python -m netem.caller --url URL --manifest utterances.json --json OUT --record DIR` waits
for the agent's /healthz, places one call with the harness's `Caller`, says each utterance
(WAVs prepared by `netem.run`), and writes the harness's report plus `connect_ms` (offer
sent -> events channel open) and each reply as a WAV. `--wait-only` just waits for health.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

from harness.cli import report
from harness.peer import Caller, TurnResult
from harness.speech import load_wav, write_wav

log = logging.getLogger("netem.caller")


async def wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=3)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not healthy after {timeout_s:.0f} s")
            await asyncio.sleep(0.3)


async def call(
    args: argparse.Namespace, manifest: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[TurnResult]]:
    caller = Caller(args.url, receive_path=args.receive_path)
    results: list[TurnResult] = []
    rtc: dict[str, Any] = {}
    t0 = time.monotonic()
    connect_ms: float | None = None
    try:
        await caller.connect(timeout_s=args.connect_timeout_s)
        connect_ms = round((time.monotonic() - t0) * 1000, 1)
        for item in manifest:
            results.append(
                await caller.say(item["text"], load_wav(Path(item["wav"])), args.timeout_s)
            )
        rtc = await caller.rtc_stats()
    finally:
        await caller.close()
    data = report(results, rtc)
    data["connect_ms"] = connect_ms
    for turn, item in zip(data["turns"], manifest, strict=True):
        turn["voice"], turn["speed"] = item["voice"], item["speed"]
    return data, results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netem.caller")
    p.add_argument("--url", required=True)
    p.add_argument("--manifest", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--record", type=Path)
    p.add_argument("--receive-path", default="ringback")
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--connect-timeout-s", type=float, default=30.0)
    p.add_argument("--wait-only", type=float, default=0.0, help="only wait this long for health")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    if args.wait_only:
        asyncio.run(wait_healthy(args.url, args.wait_only))
        return 0
    manifest = json.loads(Path(args.manifest).read_text())
    data, results = asyncio.run(call(args, manifest))
    args.json.write_text(json.dumps(data, indent=2))
    args.record.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results, 1):
        write_wav(args.record / f"turn{i:02d}.wav", r.reply_pcm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
