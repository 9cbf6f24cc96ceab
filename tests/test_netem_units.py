"""netem at string and logic level: profiles, generated tc/nft/iptables commands, the NFQUEUE
handler's decisions, reply-gap measurement and thresholds. Covers the `tc netem` path on
kernels that cannot run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from netem import commands as cmd
from netem.nfq import Holder, Impairer, QueueSpec
from netem.profiles import GeModel, Profile, load, parse_inline, resolve, resolve_list
from netem.report import Thresholds, reply_gaps_ms

pytestmark = pytest.mark.netem

REQUIRED = ["clean", "lan", "wifi-congested", "4g", "3g", "satellite", "lossy-5", "lossy-10",
            "bursty", "reorder"]  # fmt: skip


def test_profiles_file_has_every_required_profile_and_they_parse() -> None:
    profiles = load()
    assert set(REQUIRED) <= set(profiles)
    assert profiles["clean"].is_clean
    p4g = profiles["4g"]
    assert (p4g.delay_ms, p4g.jitter_ms, p4g.loss_pct, p4g.rate_kbit) == (35, 10, 0.5, 10000)
    assert profiles["bursty"].gemodel is not None
    assert profiles["bursty"].mean_loss_pct == pytest.approx(5.0, abs=0.1)
    assert profiles["reorder"].reorder_pct == 10
    assert all(p.description for p in profiles.values())


def test_inline_specs_and_lists() -> None:
    p = parse_inline("x", "delay=50,jitter=20,loss=5,rate=1000")
    assert (p.delay_ms, p.jitter_ms, p.loss_pct, p.rate_kbit) == (50, 20, 5, 1000)
    g = parse_inline("g", "gemodel=2:40")
    assert g.gemodel == GeModel(2, 40, 100, 0)
    assert resolve("slow:delay=200,loss=1").name == "slow"
    assert [p.name for p in resolve_list("clean,lossy-5,4g")] == ["clean", "lossy-5", "4g"]
    named = resolve_list("clean;slow:delay=200,loss=1")
    assert [p.name for p in named] == ["clean", "slow"] and named[1].delay_ms == 200


@pytest.mark.parametrize(
    "spec",
    ["delay=-1", "loss=101", "bogus=3", "delay=abc", "loss=5,gemodel=1:2", "reorder=10", "delay"],
)
def test_bad_specs_are_errors(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_inline("bad", spec)


def test_unknown_profile_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        resolve("5g-dreams")


def test_tc_netem_command_strings() -> None:
    profiles = load()
    assert " ".join(cmd.tc_netem("r-ag", profiles["4g"], "lab-router")) == (
        "ip netns exec lab-router tc qdisc replace dev r-ag root netem limit 10000 "
        "delay 35ms 10ms loss random 0.5% rate 10000kbit"
    )
    assert " ".join(cmd.tc_netem("eth0", profiles["bursty"])) == (
        "tc qdisc replace dev eth0 root netem limit 10000 delay 20ms loss gemodel 1.75% 33% 100% 0%"
    )
    assert " ".join(cmd.tc_netem("eth0", profiles["reorder"])) == (
        "tc qdisc replace dev eth0 root netem limit 10000 delay 20ms reorder 10%"
    )
    assert cmd.netem_args(profiles["clean"]) == ["limit", "10000"]
    assert " ".join(cmd.tc_clear("eth0", "ns")) == "ip netns exec ns tc qdisc del dev eth0 root"


def test_fallback_plan_for_random_loss_rate_and_delay() -> None:
    links = [("r-ag", 1), ("r-ca", 2)]
    tc, nft, queues = cmd.fallback_plan(links, load()["4g"], "R")
    assert [" ".join(a) for a in tc] == [
        "ip netns exec R tc qdisc replace dev r-ag root tbf rate 10000kbit burst 12500 latency 300ms",
        "ip netns exec R tc qdisc replace dev r-ca root tbf rate 10000kbit burst 12500 latency 300ms",
    ]
    assert nft is not None
    assert 'oifname "r-ag" numgen random mod 10000 < 50 counter drop' in nft
    assert 'oifname "r-ca" numgen random mod 10000 < 50 counter drop' in nft
    assert "type filter hook forward priority -200; policy accept;" in nft
    # Re-applying replaces the table instead of adding rules twice.
    assert nft.startswith("table inet ringback_netem\ndelete table inet ringback_netem\n")
    assert queues == [
        "num=1,delay=35,jitter=10,reorder=0,seed=1",
        "num=2,delay=35,jitter=10,reorder=0,seed=2",
    ]
    assert " ".join(cmd.iptables_queue("r-ag", 1, "R")) == (
        "ip netns exec R iptables -t mangle -A FORWARD -o r-ag -m comment --comment "
        "ringback-netem -j NFQUEUE --queue-num 1 --queue-bypass"
    )
    assert cmd.iptables_queue("r-ag", 1, add=False)[3] == "-D"


def test_fallback_plan_bursty_loss_goes_to_the_handler_and_pure_loss_needs_none() -> None:
    links = [("a", 1)]
    tc, nft, queues = cmd.fallback_plan(links, load()["bursty"])
    assert tc == [] and nft is None
    assert queues == ["num=1,delay=20,jitter=0,reorder=0,seed=1,ge=1.75:33:100:0"]
    tc, nft, queues = cmd.fallback_plan(links, load()["lossy-5"])
    assert tc == [] and queues == [] and nft is not None and "< 500 counter drop" in nft
    assert cmd.fallback_plan(links, load()["clean"]) == ([], None, [])


def test_queue_spec_round_trip() -> None:
    text = cmd.queue_spec(2, load()["wifi-congested"], seed=9)
    spec = QueueSpec.parse(text)
    assert (spec.num, spec.delay_ms, spec.jitter_ms, spec.seed) == (2, 15, 15, 9)
    assert spec.ge == (0.5, 50, 100, 0)
    with pytest.raises(ValueError):
        QueueSpec.parse("delay=3")


def test_impairer_delay_jitter_bounds_and_reorder_share() -> None:
    imp = Impairer(QueueSpec(num=1, delay_ms=50, jitter_ms=20, reorder_pct=10, seed=3))
    delays = [(imp.release_at(100.0) or 0) - 100.0 for _ in range(5000)]
    at_once = sum(d == 0 for d in delays) / len(delays)
    held = [d for d in delays if d > 0]
    assert 0.08 < at_once < 0.12
    assert min(held) >= 0.030 - 1e-9 and max(held) <= 0.070 + 1e-9
    assert np.mean(held) == pytest.approx(0.050, abs=0.002)


def test_impairer_gilbert_elliott_mean_loss_and_bursts() -> None:
    ge = load()["bursty"].gemodel
    assert ge is not None
    imp = Impairer(QueueSpec(num=1, seed=5, ge=(ge.p, ge.r, ge.loss_bad, ge.loss_good)))
    lost = [imp.release_at(0.0) is None for _ in range(40000)]
    assert np.mean(lost) == pytest.approx(ge.mean_loss_pct() / 100, abs=0.01)
    runs, run = [], 0
    for x in [*lost, False]:
        if x:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert np.mean(runs) == pytest.approx(100 / ge.r, rel=0.15)  # mean burst ~ 1/r packets


class FakePacket:
    def __init__(self, log: list[tuple[str, int]], n: int) -> None:
        self.log, self.n = log, n

    def accept(self) -> None:
        self.log.append(("accept", self.n))

    def drop(self) -> None:
        self.log.append(("drop", self.n))


def test_holder_releases_in_time_order_and_is_bounded() -> None:
    log: list[tuple[str, int]] = []
    h = Holder(max_held=2)
    h.add(FakePacket(log, 1), 1.5, now=1.0)
    h.add(FakePacket(log, 2), 1.2, now=1.0)
    h.add(FakePacket(log, 3), 1.9, now=1.0)  # over the bound: passes at once
    h.add(FakePacket(log, 4), None, now=1.0)  # lost
    assert log == [("accept", 3), ("drop", 4)]
    assert h.release_due(1.3) == 1.5
    assert log[-1] == ("accept", 2)
    assert h.release_due(2.0) is None and log[-1] == ("accept", 1)
    assert (h.passed, h.dropped, h.overflow) == (2, 1, 1)


def test_reply_gaps_counts_only_silences_of_60_ms_or_more_inside_the_reply() -> None:
    rate = 48_000
    tone = (np.sin(np.arange(rate // 5) * 0.05) * 8000).astype(np.int16)  # 200 ms

    def silence(ms: int) -> npt.NDArray[np.int16]:
        return np.zeros(rate * ms // 1000, np.int16)

    pcm = np.concatenate([silence(300), tone, silence(40), tone, silence(100), tone, silence(500)])
    assert reply_gaps_ms(pcm) == pytest.approx(100, abs=20)
    assert reply_gaps_ms(np.zeros(rate, np.int16)) == 0.0


def test_thresholds() -> None:
    t = Thresholds.parse("wer=0.3,v2v_ms_p99=1500")
    ok = {"wer": 0.1, "v2v_ms_p99": 900.0, "answered": 3, "turns": 3, "reply_wer": 0.1}
    assert t.breaches(ok) == []
    bad = {**ok, "wer": 0.5, "v2v_ms_p99": 2000.0, "answered": 2}
    assert len(t.breaches(bad)) == 3
    with pytest.raises(ValueError):
        Thresholds.parse("speed=3")


def test_entry_scripts_are_executable() -> None:
    root = Path(__file__).resolve().parent.parent / "netem"
    for name in ("apply", "clear", "lab", "run"):
        assert (root / name).stat().st_mode & 0o111, name


def test_profile_dataclass_flags() -> None:
    assert Profile("x", loss_pct=5).needs_queue is False
    assert Profile("x", jitter_ms=5).needs_queue is True


def test_apply_print_shows_the_tc_netem_and_fallback_commands_for_any_interface() -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [str(root / "netem" / "apply"), "3g", "--print", "--dev", "eth1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert (
        "tc qdisc replace dev eth1 root netem limit 10000 delay 100ms 30ms loss random 2% "
        "rate 768kbit" in out
    )
    assert "tc qdisc replace dev eth1 root tbf rate 768kbit" in out
    assert 'oifname "eth1" numgen random mod 10000 < 200 counter drop' in out
    assert "--queue-bypass" in out and "python -m netem.nfq --queue num=1,delay=100" in out
