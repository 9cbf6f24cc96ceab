"""netem as root: the namespace lab, the fallback impairment measured on real packets, the CI
sweep through the real agent and harness, and clean-up — also after a `kill -9` midway.

Only namespaces these tests create (unique lab names) and their 198.18.0.0/15 addresses are
used; every process is stopped by PID (`Lab.down`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.server import ROOT
from netem.apply import apply, clear
from netem.lab import AGENT_IP, Lab, proc_start
from netem.profiles import resolve

pytestmark = [
    pytest.mark.netem,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

ECHO_SERVER = textwrap.dedent(f"""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("{AGENT_IP}", 9999))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)
""")

ECHO_CLIENT = textwrap.dedent(f"""
    import json, socket, struct, time, sys
    n = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    rtts = {{}}
    def drain():
        while True:
            try:
                data = s.recv(2048)
            except BlockingIOError:
                return
            seq, sent = struct.unpack("!Id", data[:12])
            rtts[seq] = (time.monotonic() - sent) * 1000
    for i in range(n):
        s.sendto(struct.pack("!Id", i, time.monotonic()) + bytes(160), ("{AGENT_IP}", 9999))
        time.sleep(0.01)
        drain()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        time.sleep(0.01)
        drain()
    print(json.dumps({{"sent": n, "rtts": sorted(rtts.values())}}))
""")


def lab_name(tag: str) -> str:
    return f"nt{tag}{os.getpid() % 100000}"


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line}


def assert_gone(lab: Lab, pids: list[dict[str, Any]]) -> None:
    left = {lab.ns(r) for r in ("agent", "router", "caller")} & namespaces()
    assert not left, f"namespaces left behind: {left}"
    alive = [p for p in pids if proc_start(int(p["pid"])) == p["start"]]
    assert not alive, f"processes left behind: {alive}"
    assert not lab.state_file.exists()


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(lab_name("l"))
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def echo(lab: Lab, n: int = 300) -> tuple[float, float]:
    """Median RTT (ms) and fraction lost of `n` UDP packets caller -> agent -> caller."""
    proc = subprocess.run(
        lab.exec_argv("caller", [sys.executable, "-c", ECHO_CLIENT, str(n)]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(proc.stdout)
    rtts = data["rtts"]
    assert rtts, "no echo came back"
    return rtts[len(rtts) // 2], 1 - len(rtts) / data["sent"]


def test_lab_up_is_routed_guarded_and_down_removes_it() -> None:
    lab = Lab(lab_name("u"))
    lab.up()
    try:
        st = lab.status()
        assert st["up"] and st["namespaces"] == [lab.ns(r) for r in ("agent", "router", "caller")]
        ruleset = subprocess.run(
            lab.exec_argv("router", ["nft", "list", "ruleset"]), capture_output=True, text=True
        ).stdout
        assert "policy drop" in ruleset and "198.18.1.0/24" in ruleset
        # Nothing leaves the lab: an address outside the test range is refused at the caller.
        probe = "import socket; socket.create_connection(('10.1.2.3', 80), timeout=2)"
        out = subprocess.run(
            lab.exec_argv("caller", [sys.executable, "-c", probe]), capture_output=True, text=True
        )
        assert out.returncode != 0
        assert "Network is unreachable" in out.stderr or "not permitted" in out.stderr
    finally:
        lab.down()
    assert_gone(lab, [])
    lab.down()  # idempotent: nothing left to remove is not an error


def test_fallback_delays_and_drops_real_packets_in_both_directions(lab: Lab) -> None:
    server = subprocess.Popen(lab.exec_argv("agent", [sys.executable, "-c", ECHO_SERVER]))
    lab.record_pid("agent", server.pid, "echo")
    try:
        time.sleep(0.5)
        rtt0, lost0 = echo(lab)
        assert rtt0 < 30 and lost0 < 0.02
        mech = apply(lab, resolve("test:delay=40,jitter=5,loss=10"), "fallback")
        assert mech == "fallback" and lab.state()["mechanism"] == "fallback"
        handlers = [p for p in lab.state()["pids"] if p["what"] == "nfq"]
        assert len(handlers) == 1
        rtt, lost = echo(lab)
        assert 75 <= rtt <= 300, rtt  # 2 x 40 ms, both directions delayed
        assert 0.08 <= lost <= 0.32, lost  # 1 - 0.9^2 = 19 % round trip
        apply(lab, resolve("test:delay=40,jitter=5,loss=10"), "fallback")  # idempotent
        assert len([p for p in lab.state()["pids"] if p["what"] == "nfq"]) == 1
        clear(lab)
        assert all(proc_start(int(p["pid"])) != p["start"] for p in handlers)
        rtt1, lost1 = echo(lab)
        assert rtt1 < 30 and lost1 < 0.02
    finally:
        server.terminate()
        server.wait(10)


def run_argv(lab: Lab, out: Path, profiles: str, turns: int) -> list[str]:
    return [str(ROOT / "netem" / "run"), "--profiles", profiles, "--turns", str(turns),
            "--out", str(out), "--name", lab.name, "--mechanism", "fallback",
            "--voices", "piper:1.0,piper:1.25,piper:0.85",
            # answered: one turn in ~30 still goes unanswered on a clean link
            # (docs/measurements.md, "Hearing"); a profile must answer 2 of its 3, the sweep 8 of its 9.
            "--thresholds", "wer=0.5,v2v_ms_p99=4000,answered=0.66"]  # fmt: skip


def test_ci_sweep_clean_lossy5_4g(tmp_path: Path) -> None:
    lab = Lab(lab_name("s"))
    out = tmp_path / "sweep"
    try:
        proc = subprocess.run(
            run_argv(lab, out, "clean,lossy-5,4g", 3),
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        pids = lab.state()["pids"]
        lab.down()
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mechanism"] == "fallback"
    by_name = {p["name"]: p for p in report["profiles"]}
    assert list(by_name) == ["clean", "lossy-5", "4g"], log
    for name, p in by_name.items():
        assert p["turns"] == 3 and p["answered"] >= 2, (name, p, log)
        assert p["wer"] is not None and p["wer"] <= 0.5, (name, p["per_turn"])
        assert p["v2v_ms_p50"] is not None and p["connect_ms"] is not None
        assert p["agent_link"]["packets_received"] > 0
        assert p["reply_wer"] is not None and p["reply_wer"] <= 0.6, (name, p["per_turn"])
        assert p["breaches"] == [], (name, p["breaches"])
    assert sum(p["answered"] for p in by_name.values()) >= 8, log
    assert by_name["4g"]["v2v_ms_p99"] <= 1500, by_name["4g"]
    # The impairment reached the agent: lossy-5 loses packets on the uplink, clean barely.
    assert by_name["lossy-5"]["agent_link"]["packets_lost"] > 0
    assert by_name["lossy-5"]["caller_link"]["packets_lost"] > 0  # and on the downlink
    assert proc.returncode == 0, log
    md = (out / "report.md").read_text()
    for name in by_name:
        assert f"| {name} | ringback |" in md
    for png in ("latency.png", "loss.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert_gone(lab, pids)


def test_lab_down_cleans_up_after_the_run_is_killed_midway(tmp_path: Path) -> None:
    lab = Lab(lab_name("k"))
    proc = subprocess.Popen(
        run_argv(lab, tmp_path / "killed", "4g,clean", 3),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Midway: the agent, the NFQUEUE handler and a caller are all running in the lab.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            whats = {p["what"] for p in lab.state()["pids"]}
            if {"nfq", "server-ringback", "caller-4g-ringback"} <= whats:
                break
            assert proc.poll() is None, "the run ended before it got midway"
            time.sleep(0.2)
        else:
            pytest.fail("the run never got midway")
        time.sleep(2.0)
        pids = lab.state()["pids"]
        assert lab.ns_pids()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert lab.status()["up"]  # a killed run leaves the lab behind ...
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    down = subprocess.run(
        [str(ROOT / "netem" / "lab"), "down", "--name", lab.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert_gone(lab, pids)  # ... and `lab down` removes all of it
