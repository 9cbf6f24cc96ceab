"""Start a real `ringback serve` process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, object]:
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
            return dict(json.load(r))


@contextlib.contextmanager
def run_server(
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    log_transcripts: bool = True,
    root: Path = ROOT,
) -> Iterator[Server]:
    """`ringback serve` on 127.0.0.1 (ICE pinned to loopback); stopped by PID afterwards.
    `root`: the checkout whose code runs (another one, to compare against it in one run).

    Tests read what the agent heard from the log, hence `--log-transcripts` by default. One
    server process (`--workers 1`) unless `args` ask for more."""
    port = port or free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "signaling", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--ice-host", "127.0.0.1", *(["--log-transcripts"] if log_transcripts else [])]
    cmd += ["--workers", "1", *args]  # later flags win
    env = {**os.environ, **(env or {})}
    if root != ROOT:
        env["PYTHONPATH"] = str(root)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()}")
            try:
                server.health()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start:\n{server.log()}") from None
                time.sleep(0.2)
        yield server
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
