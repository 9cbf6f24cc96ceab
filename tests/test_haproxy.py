"""deploy/haproxy.cfg as shipped, in front of two real `ringback serve` processes: health checks,
load from each server (agent-check), session resources routed to their owner, a real call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.peer import Caller
from harness.server import ROOT, Server, free_port, run_server, stop_process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="Debian haproxy not installed"),
]

LIGHT = ("--tts", "espeak", "--tts-workers", "1", "--whisper-workers", "1", "--trust-forwarded")


@contextlib.contextmanager
def ringback(log_dir: Path, name: str, agent_port: int) -> Iterator[Server]:
    args = ("--session-id-prefix", f"{name}.", "--agent-check-port", str(agent_port),
            "--max-sessions", "1", *LIGHT)  # fmt: skip
    with run_server(log_dir, *args) as server:
        yield server


def admin(sock_path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def server_status(sock_path: Path, backend: str) -> dict[str, str]:
    """{server: status} for a backend (`UP`, `DRAIN`, `DOWN`, …) from `show stat`."""
    lines = admin(sock_path, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {r["svname"]: r["status"] for r in rows
            if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}  # fmt: skip


@contextlib.contextmanager
def haproxy(
    tmp: Path, s1: Server, s2: Server, agents: tuple[int, int]
) -> Iterator[tuple[str, Path]]:
    port = free_port()
    sock = tmp / "admin.sock"
    env = {
        **os.environ,
        "RINGBACK_LISTEN": f"127.0.0.1:{port}",
        "RINGBACK_S1": s1.url.removeprefix("http://"),
        "RINGBACK_S2": s2.url.removeprefix("http://"),
        "RINGBACK_S1_AGENT": str(agents[0]),
        "RINGBACK_S2_AGENT": str(agents[1]),
        "HAPROXY_ADMIN_SOCKET": str(sock),
    }
    log = (tmp / "haproxy.log").open("wb")
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:  # both servers up by their /healthz check
            assert proc.poll() is None, (tmp / "haproxy.log").read_text()
            with contextlib.suppress(OSError):
                if {v.split(" ")[0] for v in server_status(sock, "ringback").values()} == {"UP"}:
                    break
            assert time.monotonic() < deadline, (tmp / "haproxy.log").read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", sock
    finally:
        stop_process(proc)
        log.close()


async def wait_status(sock: Path, name: str, status: str, timeout_s: float = 15) -> None:
    """Until HAProxy shows `status` for server `name` (`DRAIN (agent)` counts as `DRAIN`)."""
    deadline = time.monotonic() + timeout_s
    seen = ""
    while time.monotonic() < deadline:
        seen = server_status(sock, "ringback").get(name, "")
        if seen.split(" ")[0] == status:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} is {seen!r}, not {status}")


async def test_haproxy_routes_calls_by_load_and_resources_to_their_owner(
    tmp_path: Path, speech: dict[str, Any]
) -> None:
    agents = (free_port(), free_port())
    with (
        ringback(tmp_path, "s1", agents[0]) as s1,
        ringback(tmp_path, "s2", agents[1]) as s2,
        haproxy(tmp_path, s1, s2, agents) as (url, sock),
    ):
        servers = {"s1": s1, "s2": s2}
        first, second = Caller(url), Caller(url)
        try:
            await first.connect()
            assert first.session_id
            owner = first.session_id.split(".")[0]
            other = "s2" if owner == "s1" else "s1"
            assert servers[owner].health()["sessions"] == 1
            # Full (--max-sessions 1): its agent says `drain`, so the next call goes elsewhere.
            await wait_status(sock, owner, "DRAIN")
            await second.connect()
            assert second.session_id and second.session_id.startswith(other + ".")

            async with aiohttp.ClientSession() as http:
                for caller in (first, second):  # resources reach their owner every time
                    for _ in range(3):
                        async with http.get(f"{url}/sessions/{caller.session_id}") as resp:
                            assert resp.status == 200, await resp.text()
            question = "What time is it?"
            result = await first.say(question, speech[question])
            assert result.reply and result.reply.startswith("It's"), result

            await second.close()  # DELETE /session/{id} through HAProxy
            assert servers[other].health()["sessions"] == 0
            assert servers[owner].health()["sessions"] == 1
            await wait_status(sock, other, "UP")
        finally:
            await first.close()
            await second.close()
        assert servers[owner].health()["sessions"] == 0
