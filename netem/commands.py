"""The shell commands that impair one direction of a link, as argv lists (no side effects).

Two mechanisms, applied on the egress interface of that direction (in the lab: the router's
interface toward the receiver):

- `netem`: one `tc qdisc replace ... root netem` with delay/jitter, loss (`random` or
  `gemodel`), `reorder` and `rate` — on kernels with sch_netem.
- `fallback`: random loss in an nftables `forward` chain (`numgen random`), rate with `tbf`,
  and delay, jitter, reordering and bursty loss by the NFQUEUE handler (`netem.nfq`), fed by
  an iptables `NFQUEUE --queue-bypass` rule (packets pass unimpaired if the handler is gone).
"""

from __future__ import annotations

from collections.abc import Sequence

from netem.profiles import Profile

NFT_TABLE = "ringback_netem"
RULE_COMMENT = "ringback-netem"


def _num(v: float) -> str:
    """`35` not `35.0`; tc and nft take plain decimals."""
    return f"{v:g}"


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def netem_args(profile: Profile) -> list[str]:
    """The netem options of a profile (after `netem`)."""
    args: list[str] = ["limit", "10000"]
    if profile.delay_ms or profile.jitter_ms:
        args += ["delay", f"{_num(profile.delay_ms)}ms"]
        if profile.jitter_ms:
            args += [f"{_num(profile.jitter_ms)}ms"]
    if profile.gemodel is not None:
        g = profile.gemodel
        args += ["loss", "gemodel", f"{_num(g.p)}%", f"{_num(g.r)}%"]
        args += [f"{_num(g.loss_bad)}%", f"{_num(g.loss_good)}%"]
    elif profile.loss_pct:
        args += ["loss", "random", f"{_num(profile.loss_pct)}%"]
    if profile.reorder_pct:
        args += ["reorder", f"{_num(profile.reorder_pct)}%"]
    if profile.rate_kbit:
        args += ["rate", f"{_num(profile.rate_kbit)}kbit"]
    return args


def tc_netem(dev: str, profile: Profile, netns: str | None = None) -> list[str]:
    return in_netns(
        netns, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", *netem_args(profile)]
    )


def tc_netem_probe(dev: str, netns: str | None = None) -> list[str]:
    """Does this kernel have sch_netem? (`replace` with a no-op netem; cleared afterwards.)"""
    return in_netns(netns, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", "0ms"])


def tc_clear(dev: str, netns: str | None = None) -> list[str]:
    """Back to the default qdisc (fails harmlessly when there is no root qdisc)."""
    return in_netns(netns, ["tc", "qdisc", "del", "dev", dev, "root"])


def tbf_burst_bytes(rate_kbit: float) -> int:
    """Bucket of 10 ms at the rate, at least a few full-size packets."""
    return max(3200, int(rate_kbit * 1000 / 8 / 100))


def tc_tbf(dev: str, rate_kbit: float, netns: str | None = None) -> list[str]:
    """Rate limit with a token bucket; the queue holds at most 300 ms at that rate."""
    return in_netns(
        netns,
        ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{_num(rate_kbit)}kbit",
         "burst", str(tbf_burst_bytes(rate_kbit)), "latency", "300ms"],
    )  # fmt: skip


def nft_loss_ruleset(losses: Sequence[tuple[str, float]]) -> str:
    """An nft script that (re)creates the loss table: `(oif, loss_pct)` per direction.

    Runs before the NFQUEUE rule (iptables mangle, priority -150) so loss and delay compose
    the way netem applies them. Resolution 0.01 %.
    """
    lines = [
        f"table inet {NFT_TABLE}",
        f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
        "  chain loss {",
        "    type filter hook forward priority -200; policy accept;",
    ]
    for dev, pct in losses:
        if pct > 0:
            lines.append(
                f'    oifname "{dev}" numgen random mod 10000 < {round(pct * 100)} counter drop'
            )
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def nft_apply(netns: str | None = None) -> list[str]:
    """Reads the script from stdin."""
    return in_netns(netns, ["nft", "-f", "-"])


def nft_delete(netns: str | None = None) -> list[str]:
    return in_netns(netns, ["nft", "delete", "table", "inet", NFT_TABLE])


def iptables_queue(
    dev: str, queue_num: int, netns: str | None = None, add: bool = True
) -> list[str]:
    """Send forwarded packets leaving `dev` to the handler; fail-open with --queue-bypass."""
    return in_netns(
        netns,
        ["iptables", "-t", "mangle", "-A" if add else "-D", "FORWARD", "-o", dev,
         "-m", "comment", "--comment", RULE_COMMENT,
         "-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass"],
    )  # fmt: skip


def queue_spec(queue_num: int, profile: Profile, seed: int) -> str:
    """How one queue of the handler impairs: `--queue` argument of `netem.nfq`."""
    parts = [
        f"num={queue_num}",
        f"delay={_num(profile.delay_ms)}",
        f"jitter={_num(profile.jitter_ms)}",
        f"reorder={_num(profile.reorder_pct)}",
        f"seed={seed}",
    ]
    if profile.gemodel is not None:
        g = profile.gemodel
        parts.append(f"ge={_num(g.p)}:{_num(g.r)}:{_num(g.loss_bad)}:{_num(g.loss_good)}")
    return ",".join(parts)


def fallback_plan(
    links: Sequence[tuple[str, int]], profile: Profile, netns: str | None = None
) -> tuple[list[list[str]], str | None, list[str]]:
    """For `(dev, queue_num)` per direction: the tc commands, the nft loss script (or None),
    and the handler's `--queue` specs (empty: no handler needed)."""
    tc = [tc_tbf(dev, profile.rate_kbit, netns) for dev, _ in links if profile.rate_kbit]
    nft = None
    if profile.loss_pct and profile.gemodel is None:
        nft = nft_loss_ruleset([(dev, profile.loss_pct) for dev, _ in links])
    queues = []
    if profile.needs_queue:
        queues = [queue_spec(q, profile, seed=q) for _, q in links]
    return tc, nft, queues
