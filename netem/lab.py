"""`netem/lab up|down|status`: agent <-> router <-> caller network namespaces.

    agent ns            router ns                     caller ns
    ag0 198.18.1.2 ---- r-ag 198.18.1.1 | r-ca 198.18.2.1 ---- ca0 198.18.2.2

Addresses are in 198.18.0.0/15 (RFC 2544's benchmarking range). The namespaces have no link
to the host; besides, each end may only send to the lab's range (nftables output guard) and
the router forwards only between the two lab subnets (policy drop). IPv6 is off inside.
The router's `r-ag` carries the uplink (caller -> agent) on its egress, `r-ca` the downlink.

Processes started in the lab are recorded by PID (with their start time) in
`/run/ringback-netem/<name>.json`. `down` stops those, then every process still inside the
lab's namespaces (by PID, from `ip netns pids`), then deletes the namespaces — which removes
veths, qdiscs, nft tables and iptables rules with them. It needs nothing from the run that
created the lab, so it also cleans up after a crash or a `kill -9`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("netem.lab")

STATE_DIR = Path(os.environ.get("RINGBACK_NETEM_STATE", "/run/ringback-netem"))
LAB_RANGE = "198.18.0.0/15"
AGENT_NET, CALLER_NET = "198.18.1.0/24", "198.18.2.0/24"
AGENT_IP, ROUTER_AGENT_IP = "198.18.1.2", "198.18.1.1"
CALLER_IP, ROUTER_CALLER_IP = "198.18.2.2", "198.18.2.1"
AGENT_DEV, ROUTER_AGENT_DEV, ROUTER_CALLER_DEV, CALLER_DEV = "ag0", "r-ag", "r-ca", "ca0"
UPLINK_QUEUE, DOWNLINK_QUEUE = 1, 2  # NFQUEUE numbers in the router namespace
ROLES = ("agent", "router", "caller")


def sh(argv: Sequence[str], check: bool = True, stdin: str | None = None) -> str:
    log.debug("$ %s", " ".join(argv))
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _guard_ruleset(end: bool) -> str:
    """nft guard: ends may only talk to the lab range; the router forwards only lab <-> lab."""
    if end:
        chain = [
            "  chain out {",
            "    type filter hook output priority 0; policy drop;",
            '    oifname "lo" accept',
            f"    ip daddr {LAB_RANGE} accept",
            "  }",
        ]
    else:
        chain = [
            "  chain fwd_guard {",
            "    type filter hook forward priority 0; policy drop;",
            f"    ip saddr {AGENT_NET} ip daddr {CALLER_NET} accept",
            f"    ip saddr {CALLER_NET} ip daddr {AGENT_NET} accept",
            "  }",
            "  chain out {",
            "    type filter hook output priority 0; policy drop;",
            '    oifname "lo" accept',
            f"    ip daddr {LAB_RANGE} accept",
            "  }",
        ]
    return "\n".join(["table inet ringback_lab {", *chain, "}", ""])


def proc_start(pid: int) -> str | None:
    """Start time of a live process (field 22 of /proc/PID/stat), to not mistake a reused
    PID; None when it is gone or a zombie (dead, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


@dataclass(frozen=True)
class Lab:
    name: str = "rbk"

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").isalnum() or len(self.name) > 20:
            raise ValueError(f"lab name must be short and alphanumeric: {self.name!r}")

    def ns(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(role)
        return f"{self.name}-{role}"

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.name}.json"

    def exec_argv(self, role: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    # --- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("pids", [])
        return data

    def write_state(self, data: dict[str, Any]) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    def record_pid(self, role: str, pid: int, what: str) -> None:
        data = self.state()
        data["pids"].append({"pid": pid, "role": role, "what": what, "start": proc_start(pid)})
        self.write_state(data)

    def set_state(self, key: str, value: Any) -> None:
        data = self.state()
        data[key] = value
        self.write_state(data)

    # --- up / down / status --------------------------------------------------------------

    def existing(self) -> list[str]:
        names = {line.split()[0] for line in sh(["ip", "netns", "list"]).splitlines() if line}
        return [self.ns(r) for r in ROLES if self.ns(r) in names]

    def up(self) -> None:
        if self.existing():
            self.down()  # a leftover lab of the same name: start clean
        a, r, c = (self.ns(x) for x in ROLES)
        try:
            for ns in (a, r, c):
                sh(["ip", "netns", "add", ns])
                sh(["ip", "-n", ns, "link", "set", "lo", "up"])
                for key in ("all", "default"):
                    sh(
                        [
                            "ip",
                            "netns",
                            "exec",
                            ns,
                            "sysctl",
                            "-qw",
                            f"net.ipv6.conf.{key}.disable_ipv6=1",
                        ]
                    )
            sh(["ip", "link", "add", AGENT_DEV, "netns", a, "type", "veth",
                "peer", "name", ROUTER_AGENT_DEV, "netns", r])  # fmt: skip
            sh(["ip", "link", "add", CALLER_DEV, "netns", c, "type", "veth",
                "peer", "name", ROUTER_CALLER_DEV, "netns", r])  # fmt: skip
            for ns, dev, addr in (
                (a, AGENT_DEV, AGENT_IP),
                (r, ROUTER_AGENT_DEV, ROUTER_AGENT_IP),
                (r, ROUTER_CALLER_DEV, ROUTER_CALLER_IP),
                (c, CALLER_DEV, CALLER_IP),
            ):
                sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
                sh(["ip", "-n", ns, "link", "set", dev, "up"])
            sh(["ip", "-n", a, "route", "add", CALLER_NET, "via", ROUTER_AGENT_IP])
            sh(["ip", "-n", c, "route", "add", AGENT_NET, "via", ROUTER_CALLER_IP])
            sh(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            for ns, end in ((a, True), (r, False), (c, True)):
                sh(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=_guard_ruleset(end))
            self.write_state({"name": self.name, "created": time.time(), "pids": []})
        except BaseException:
            self.down()
            raise
        log.info("lab %s up: agent %s, caller %s", self.name, AGENT_IP, CALLER_IP)

    def kill_pids(self, pids: list[int], grace_s: float) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(proc_start(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            if proc_start(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0  # SIGKILL is not instant: wait until they are gone
        while time.monotonic() < deadline and any(proc_start(p) for p in pids):
            time.sleep(0.05)

    def ns_pids(self) -> list[int]:
        pids: list[int] = []
        for ns in self.existing():
            out = sh(["ip", "netns", "pids", ns], check=False)
            pids += [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
        return pids

    def down(self, grace_s: float = 5.0) -> None:
        """Stop every process of the lab (recorded ones, then any left inside), delete it."""
        recorded = [
            int(p["pid"]) for p in self.state()["pids"] if proc_start(int(p["pid"])) == p["start"]
        ]
        self.kill_pids(recorded, grace_s)
        for _ in range(3):  # a dying process may briefly leave children behind
            left = self.ns_pids()
            if not left:
                break
            self.kill_pids(left, 1.0)
        for ns in self.existing():
            sh(["ip", "netns", "del", ns], check=False)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        log.info("lab %s down", self.name)

    def status(self) -> dict[str, Any]:
        existing = self.existing()
        state = self.state()
        live = [p for p in state["pids"] if proc_start(int(p["pid"])) == p["start"]]
        return {
            "name": self.name,
            "namespaces": existing,
            "up": len(existing) == len(ROLES),
            "processes_in_lab": self.ns_pids(),
            "recorded_live": live,
            "mechanism": state.get("mechanism"),
            "profile": state.get("profile"),
            "agent": AGENT_IP,
            "caller": CALLER_IP,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netem/lab", description="agent <-> router <-> caller lab")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--name", default="rbk", help="lab name (namespace prefix)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(name)s: %(message)s")
    lab = Lab(args.name)
    if args.action == "up":
        lab.up()
    elif args.action == "down":
        lab.down()
    else:
        st = lab.status()
        print(json.dumps(st, indent=2))
        return 0 if st["up"] else 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
