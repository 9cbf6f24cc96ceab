"""`netem/apply PROFILE` and `netem/clear`: impair (or restore) both directions of the lab.

The router's egress interfaces are impaired: `r-ag` (caller -> agent, uplink) and `r-ca`
(agent -> caller, downlink), each with the whole one-way profile. Mechanism `auto` uses
`tc netem` when the kernel has sch_netem and the fallback otherwise (see `netem.commands`);
the one used is printed and kept in the lab's state. Applying clears first, so it is
idempotent; clearing removes qdiscs, the nft loss table, the NFQUEUE rules and stops the
handler by PID, and never fails on what is already gone.

`--print --dev IF` only prints the commands for one interface (to use on another host).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from netem import commands as cmd
from netem.lab import (
    DOWNLINK_QUEUE,
    ROUTER_AGENT_DEV,
    ROUTER_CALLER_DEV,
    UPLINK_QUEUE,
    Lab,
    proc_start,
    sh,
)
from netem.profiles import Profile, resolve

log = logging.getLogger("netem.apply")

ROOT = Path(__file__).resolve().parent.parent
LINKS = ((ROUTER_AGENT_DEV, UPLINK_QUEUE), (ROUTER_CALLER_DEV, DOWNLINK_QUEUE))


def has_netem(lab: Lab) -> bool:
    ns = lab.ns("router")
    ok = (
        subprocess.run(cmd.tc_netem_probe(ROUTER_AGENT_DEV, ns), capture_output=True).returncode
        == 0
    )
    if ok:
        sh(cmd.tc_clear(ROUTER_AGENT_DEV, ns), check=False)
    return ok


def clear(lab: Lab) -> None:
    ns = lab.ns("router")
    state = lab.state()
    handlers = [
        int(p["pid"]) for p in state["pids"]
        if p["what"] == "nfq" and proc_start(int(p["pid"])) == p["start"]
    ]  # fmt: skip
    lab.kill_pids(handlers, 3.0)
    for dev, queue in LINKS:
        sh(cmd.tc_clear(dev, ns), check=False)
        while (
            subprocess.run(
                cmd.iptables_queue(dev, queue, ns, add=False), capture_output=True
            ).returncode
            == 0
        ):
            pass
    sh(cmd.nft_delete(ns), check=False)
    state = lab.state()
    state["pids"] = [p for p in state["pids"] if p["what"] != "nfq"]
    state["profile"] = None
    lab.write_state(state)


def apply(
    lab: Lab,
    profile: Profile,
    mechanism: str = "auto",
    max_s: float = 1800.0,
    log_dir: Path | None = None,
) -> str:
    """Impair both directions; returns the mechanism used ("netem" or "fallback"). The
    fallback handler exits after `max_s` and logs to `log_dir` (default: /tmp)."""
    if len(lab.existing()) != 3:
        raise RuntimeError(f"lab {lab.name} is not up (netem/lab up --name {lab.name})")
    clear(lab)
    ns = lab.ns("router")
    if mechanism == "auto":
        mechanism = "netem" if has_netem(lab) else "fallback"
    if profile.is_clean:
        pass
    elif mechanism == "netem":
        for dev, _ in LINKS:
            sh(cmd.tc_netem(dev, profile, ns))
    elif mechanism == "fallback":
        tc, nft, queues = cmd.fallback_plan(LINKS, profile, ns)
        for argv in tc:
            sh(argv)
        if nft is not None:
            sh(cmd.nft_apply(ns), stdin=nft)
        if queues:
            _start_handler(lab, queues, max_s, log_dir or Path("/tmp"))
            for dev, queue in LINKS:
                sh(cmd.iptables_queue(dev, queue, ns))
    else:
        raise ValueError(f"unknown mechanism {mechanism!r}")
    lab.set_state("mechanism", mechanism)
    lab.set_state("profile", profile.name)
    log.info("lab %s: profile %s applied with %s", lab.name, profile.name, mechanism)
    return mechanism


def _start_handler(lab: Lab, queues: list[str], max_s: float, log_dir: Path) -> None:
    argv = [sys.executable, "-m", "netem.nfq", "--max-s", str(max_s)]
    for q in queues:
        argv += ["--queue", q]
    log_path = log_dir / f"{lab.name}-nfq.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            lab.exec_argv("router", argv), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        )  # fmt: skip
    lab.record_pid("router", proc.pid, "nfq")
    time.sleep(0.5)  # bound before the rules send packets (bypass covers the gap anyway)
    if proc.poll() is not None:
        raise RuntimeError(f"NFQUEUE handler exited at once; see {log_path}")


def print_commands(profile: Profile, dev: str, mechanism: str) -> None:
    if mechanism in ("auto", "netem"):
        print(" ".join(cmd.tc_netem(dev, profile)))
    if mechanism in ("auto", "fallback"):
        tc, nft, queues = cmd.fallback_plan([(dev, UPLINK_QUEUE)], profile)
        for argv in tc:
            print(" ".join(argv))
        if nft:
            print("nft -f - <<'EOF'\n" + nft + "EOF")
        if queues:
            print(" ".join(cmd.iptables_queue(dev, UPLINK_QUEUE)))
            print("python -m netem.nfq " + " ".join(f"--queue {q}" for q in queues))


def main_apply(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netem/apply", description="impair both directions of the lab")
    p.add_argument(
        "profile", help="a name from netem/profiles.toml or key=value,... (delay=50,loss=5)"
    )
    p.add_argument("--name", default="rbk", help="lab name")
    p.add_argument("--mechanism", choices=("auto", "netem", "fallback"), default="auto")
    p.add_argument("--max-s", type=float, default=1800.0, help="fallback handler lifetime")
    p.add_argument("--print", action="store_true", help="only print the commands for --dev")
    p.add_argument("--dev", default="eth0", help="interface for --print")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(name)s: %(message)s")
    profile = resolve(args.profile)
    if args.print:
        print_commands(profile, args.dev, args.mechanism)
        return 0
    try:
        print(f"mechanism: {apply(Lab(args.name), profile, args.mechanism, args.max_s)}")
    except RuntimeError as e:
        raise SystemExit(f"netem/apply: {e}") from None
    return 0


def main_clear(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="netem/clear", description="restore both directions of the lab"
    )
    p.add_argument("--name", default="rbk", help="lab name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    clear(Lab(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_clear() if sys.argv[1:2] == ["--clear"] else main_apply())
