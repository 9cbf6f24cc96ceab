"""Tests for agent.media.rtp_jitter.AdaptiveJitterBuffer on a simulated link (deterministic, synchronous).

The simulator: a sender makes 20 ms Opus-like packets (seq += 1, timestamp += 960 at 48 kHz), a
network delivers them (drop / extra delay / duplicate / reorder, seeded or explicit, Gilbert–Elliott
bursts), and a consumer calls pop() every 20 ms. Each slot is recorded with what it played and its
*added delay*: slot time − send time of the played packet − the path's base (minimum) delay, i.e.
how much later than on an ideal zero-buffer receiver the frame is heard — and with what that pop()
added to stats.underruns / inserted / lost / gaps, which tells an UNDERRUN that keeps playout on its
frame (inserted: one frame more delay) from one that moves it on (overdue, nothing newer here).
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.media.rtp_jitter import (
    REF_PCT,
    AdaptiveJitterBuffer,
    JitterConfig,
    RtpIn,
    Slot,
    SlotKind,
)

FRAME_S = 0.020
FRAME_TS = 960
RATE = 48_000
PHASES = (0.0, 0.0051, 0.0137, 0.0193)  # consumer clock offsets (no ties with arrivals)


# --- sender ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    index: int  # global running number, unique across SSRCs (payload carries it)
    packet: RtpIn
    send_s: float  # in the receiver's clock


def sender(
    n: int,
    *,
    start_seq: int = 1000,
    start_ts: int = 123_456,
    ssrc: int = 0x1234,
    t0: float = 0.0,
    first_index: int = 0,
    drift: float = 0.0,
    pauses: Mapping[int, float] | None = None,
) -> list[Sent]:
    """`n` packets; `drift` = sender clock rate error (+0.005 → 20 ms of timestamps every 19.9 ms);
    `pauses` = {i: gap_s}: before packet i, send time and timestamp both jump by gap_s."""
    interval = FRAME_S / (1 + drift)
    out: list[Sent] = []
    t, ts = t0, start_ts
    for i in range(n):
        if pauses and i in pauses:
            t += pauses[i]
            ts += round(pauses[i] / FRAME_S) * FRAME_TS
        index = first_index + i
        packet = RtpIn((start_seq + i) % 2**16, ts % 2**32, ssrc, index.to_bytes(4, "big"))
        out.append(Sent(index, packet, t))
        t += interval
        ts += FRAME_TS
    return out


def index_of(packet: RtpIn | None) -> int | None:
    return None if packet is None else int.from_bytes(packet.payload, "big")


# --- network --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    arrival_s: float
    packet: RtpIn


@dataclass
class Network:
    base_s: float = 0.030  # minimum one-way delay
    drop: Collection[int] = ()  # indices never delivered
    extra: Mapping[int, float] = field(default_factory=dict)  # index → extra delay (s)
    jitter: Callable[[Sent], float] | None = None  # extra delay for every packet
    dups: Mapping[int, Sequence[float]] = field(default_factory=dict)  # index → copies' lags (s)
    fifo: bool = False  # a queue: nothing overtakes (a delay spike drains as a burst)

    def deliver(self, sent: Sequence[Sent]) -> list[Delivery]:
        out: list[Delivery] = []
        last = float("-inf")
        for s in sent:
            if s.index in self.drop:
                continue
            arrival = s.send_s + self.base_s + self.extra.get(s.index, 0.0)
            if self.jitter is not None:
                arrival += self.jitter(s)
            if self.fifo:
                arrival = last = max(arrival, last)
            out.append(Delivery(arrival, s.packet))
            out.extend(Delivery(arrival + lag, s.packet) for lag in self.dups.get(s.index, ()))
        out.sort(key=lambda d: d.arrival_s)  # stable: equal arrivals keep send order
        return out


def uniform_jitter(lo: float, hi: float, seed: int) -> Callable[[Sent], float]:
    rng = random.Random(seed)
    return lambda _s: rng.uniform(lo, hi)


def gaussian_jitter(
    mean: float, sigma: float, lo: float, hi: float, seed: int
) -> Callable[[Sent], float]:
    rng = random.Random(seed)
    return lambda _s: min(hi, max(lo, rng.gauss(mean, sigma)))


def random_loss(n: int, rate: float, seed: int) -> set[int]:
    """Independent losses (the first and last 10 packets always get through)."""
    rng = random.Random(seed)
    return {i for i in range(10, n - 10) if rng.random() < rate}


def burst_loss(
    n: int, seed: int, lengths: tuple[int, int] = (2, 5), gap: tuple[int, int] = (10, 40)
) -> set[int]:
    """Bursts of `lengths` consecutive packets separated by `gap` good ones."""
    rng = random.Random(seed)
    lost: set[int] = set()
    i = 10 + rng.randint(*gap)
    while i < n - 10:
        k = rng.randint(*lengths)
        lost.update(range(i, i + k))
        i += k + rng.randint(*gap)
    return lost


def gilbert_elliott(n: int, p_gb: float, p_bg: float, seed: int) -> set[int]:
    """Two-state Markov loss: good→bad with p_gb, bad→good with p_bg; all packets lost in bad
    (the first and last 10 packets always get through)."""
    rng = random.Random(seed)
    bad = False
    lost: set[int] = set()
    for i in range(10, n - 10):
        bad = rng.random() < (1 - p_bg if bad else p_gb)
        if bad:
            lost.add(i)
    return lost


# --- consumer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    t: float
    slot: Slot | None
    index: int | None = None  # index of the packet played in this slot
    added_ms: float | None = None
    underrun: bool = False  # stats.underruns went up in this pop()
    inserted: bool = False  # stats.inserted went up in this pop(): playout stayed on its frame
    lost: int = 0  # how much stats.lost went up in this pop()
    gaps: int = 0  # how much stats.gaps went up in this pop()

    @property
    def kind(self) -> SlotKind | None:
        return None if self.slot is None else self.slot.kind

    @property
    def next_index(self) -> int | None:
        return None if self.slot is None else index_of(self.slot.next_packet)

    @property
    def advanced(self) -> bool:
        """An UNDERRUN that moved playout on to the next frame (overdue, nothing newer here)."""
        return self.kind is SlotKind.UNDERRUN and not self.inserted


@dataclass
class Run:
    buf: AdaptiveJitterBuffer
    sent: list[Sent]
    recs: list[Rec]
    targets: list[float]  # target_delay_ms after each pop (when tracked)

    @functools.cached_property
    def started(self) -> list[Rec]:
        first = next(i for i, r in enumerate(self.recs) if r.slot is not None)
        return self.recs[first:]

    def kinds(self, kind: SlotKind) -> list[Rec]:
        return [r for r in self.started if r.kind is kind]

    @property
    def played(self) -> list[int]:
        return [r.index for r in self.kinds(SlotKind.PACKET) if r.index is not None]

    def added(self, t_from: float = float("-inf"), t_to: float = float("inf")) -> list[float]:
        return [r.added_ms for r in self.started if r.added_ms is not None and t_from <= r.t < t_to]

    @functools.cached_property
    def last_packet(self) -> int:
        """Position in `started` of the last PACKET slot (after it: the idle tail)."""
        return max(i for i, r in enumerate(self.started) if r.kind is SlotKind.PACKET)

    @property
    def tail(self) -> list[Rec]:
        """The slots after the last packet was played (the sender has stopped)."""
        return self.started[self.last_packet + 1 :]

    @property
    def stalls(self) -> list[Rec]:
        """Slots up to the last packet in which playout stayed on its frame (UNDERRUN, inserted)."""
        return [r for r in self.started[: self.last_packet] if r.inserted]

    def coverage(self, first: int | None = None) -> tuple[list[tuple[int, SlotKind]], list[int]]:
        """(answered, skipped) up to the last PACKET slot: (frame index, kind) answered by each
        slot that moves playout on — PACKET (its packet), LOST and advancing UNDERRUN (the frame
        after the previous answer; a LOST's next_packet, when given, must be the frame after
        that) — and the frames a PACKET slot jumped over (drops), from frame `first` on when
        given (a drop in the very first slot skips it)."""
        answered: list[tuple[int, SlotKind]] = []
        skipped: list[int] = []
        for r in self.started[: self.last_packet + 1]:
            if r.kind is SlotKind.PACKET:
                assert r.index is not None
                last = answered[-1][0] if answered else None if first is None else first - 1
                if last is not None:
                    assert r.index > last, f"played out of order: {r.index} after {last}"
                    skipped.extend(range(last + 1, r.index))
                answered.append((r.index, SlotKind.PACKET))
            elif r.kind is SlotKind.LOST or r.advanced:
                assert r.kind is not None and answered, f"{r.kind} before any packet"
                answered.append((answered[-1][0] + 1, r.kind))
                if r.next_index is not None:
                    assert r.next_index == answered[-1][0] + 1, "next_packet is not the next frame"
        return answered, skipped

    def concealed(self) -> list[tuple[int, SlotKind]]:
        """(frame index, kind) of the frames answered without their packet (LOST, or UNDERRUN
        when nothing newer had arrived yet), in order."""
        answered, _ = self.coverage()
        return [(i, k) for i, k in answered if k is not SlotKind.PACKET]

    def lost_indices(self) -> list[int]:
        return [i for i, _ in self.concealed()]

    def assert_no_hole(self, indices: Sequence[int]) -> None:
        """Every frame from the first to the last is answered once (PACKET, LOST or advancing
        UNDERRUN) or skipped by a counted drop; no None slot after start; no resync."""
        assert all(r.slot is not None for r in self.started), "pop() returned None after start"
        answered, skipped = self.coverage(first=indices[0])
        assert sorted([i for i, _ in answered] + skipped) == list(indices)
        assert len(skipped) == self.buf.stats.dropped
        assert self.buf.stats.resyncs == 0


def simulate(
    net: Network,
    sent: list[Sent],
    *,
    config: JitterConfig | None = None,
    phase_s: float = 0.0051,
    tail_s: float = 1.0,
    quiet: Callable[[int], bool] | None = None,
    track_target: bool = False,
) -> Run:
    """Pop every 20 ms (after pushing everything that has arrived by then) until `tail_s` after
    the last arrival."""
    buf = AdaptiveJitterBuffer(config)
    deliveries = net.deliver(sent)
    send_time = {s.index: s.send_s for s in sent}
    end = max(d.arrival_s for d in deliveries) + tail_s
    recs: list[Rec] = []
    targets: list[float] = []
    k, j = 0, 0
    while (t := phase_s + k * FRAME_S) < end:
        while j < len(deliveries) and deliveries[j].arrival_s <= t:
            buf.push(deliveries[j].packet, deliveries[j].arrival_s)
            j += 1
        st = buf.stats
        underruns, inserted, dropped = st.underruns, st.inserted, st.dropped
        lost, gaps = st.lost, st.gaps
        slot = buf.pop(t, quiet=True if quiet is None else quiet(k))
        index = index_of(slot.packet) if slot is not None else None
        added = None if index is None else (t - send_time[index] - net.base_s) * 1000
        rec = Rec(
            t,
            slot,
            index,
            added,
            underrun=st.underruns > underruns,
            inserted=st.inserted > inserted,
            lost=st.lost - lost,
            gaps=st.gaps - gaps,
        )
        # Every UNDERRUN is counted as an underrun (nothing to play) or an insert (playout
        # stays), drops only happen in PACKET slots, and a slot adds at most one of each.
        assert st.underruns - underruns <= 1 and st.inserted - inserted <= 1
        assert (rec.kind is SlotKind.UNDERRUN) == (rec.underrun or rec.inserted)
        assert st.dropped == dropped or rec.kind is SlotKind.PACKET
        recs.append(rec)
        if track_target:
            targets.append(buf.target_delay_ms)
        k += 1
    return Run(buf, sent, recs, targets)


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round((len(s) - 1) * p / 100))]


def spans(flags: Sequence[bool]) -> int:
    """Longest run of True."""
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


MIN_DELAY_MS = JitterConfig().min_delay_ms
FRAME_MS = FRAME_S * 1000


def assert_idle_tail(run: Run) -> None:
    """After the sender stops every slot is an UNDERRUN counted in stats.underruns: the first may
    stay on its frame (on time: the packet may still come, counted inserted), the others are
    overdue and advance (not inserted: no delay piles up). Whether they were losses or a pause
    only a later packet could tell, so nothing is counted lost or as a gap."""
    tail = run.tail
    assert tail and all(r.kind is SlotKind.UNDERRUN and r.underrun for r in tail)
    assert all(r.advanced for r in tail[1:])
    st = run.buf.stats
    assert st.inserted == len(run.stalls) + sum(r.inserted for r in tail)
    assert st.gaps == 0


# --- clean link -------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_clean_link_plays_every_packet_once_at_min_delay(phase: float) -> None:
    sent = sender(500)
    run = simulate(Network(), sent, phase_s=phase)
    first = run.started[0]
    # Playout starts at the first pop at or after first arrival + target (min_delay).
    assert first.t >= sent[0].send_s + 0.030 + MIN_DELAY_MS / 1000
    assert first.t < sent[0].send_s + 0.030 + MIN_DELAY_MS / 1000 + FRAME_S
    assert run.played == [s.index for s in sent]
    assert all(r.kind is SlotKind.PACKET for r in run.started[: run.last_packet + 1])
    assert all(r.slot is not None for r in run.started)
    added = run.added()
    # The headline: min_delay plus less than one frame of slot phase (aiortc: ~80 ms).
    assert MIN_DELAY_MS - 1e-6 <= min(added) <= max(added) < MIN_DELAY_MS + FRAME_MS
    assert max(added) - min(added) < 1e-6  # steady: no drift, no adjustment
    st = run.buf.stats
    assert st.received == 500
    assert st.lost == st.late == st.dropped == st.duplicates == st.reordered == st.gaps == 0
    assert_idle_tail(run)
    assert st.underruns == len(run.tail) == len(run.started) - 500  # only the idle tail
    assert st.inserted <= 1
    assert run.buf.target_delay_ms == MIN_DELAY_MS
    # wait_ms is the time a played packet sat in the buffer: here exactly the added delay.
    assert list(st.wait_ms)[-1] == pytest.approx(added[-1])


def test_current_delay_ms_and_start_gate() -> None:
    buf = AdaptiveJitterBuffer()
    assert buf.pop(0.0) is None
    assert buf.current_delay_ms(0.0) is None
    p0, p1 = sender(2)
    buf.push(p0.packet, 0.030)
    assert buf.pop(0.040) is None  # before first arrival + min_delay
    assert buf.current_delay_ms(0.040) is None  # not started
    buf.push(p1.packet, 0.050)
    slot = buf.pop(0.050)
    assert slot is not None and slot.kind is SlotKind.PACKET and index_of(slot.packet) == 0
    assert buf.current_delay_ms(0.060) == pytest.approx(10.0)  # packet 1 has waited 10 ms
    assert buf.buffered == 1


# --- the due frame missing: one pop() at a time ------------------------------------------------


def started_buffer() -> tuple[AdaptiveJitterBuffer, list[RtpIn]]:
    """Packet k is due to arrive at 30 + 20k ms; p0 arrives and plays at 50 ms (min_delay), so
    with on-schedule arrivals p_k's playout point is 50 + 20k ms: lag = (now - that) / 20 ms."""
    packets = [s.packet for s in sender(5)]
    buf = AdaptiveJitterBuffer()
    buf.push(packets[0], 0.030)
    slot = buf.pop(0.050)
    assert slot is not None and index_of(slot.packet) == 0
    return buf, packets


def counts(buf: AdaptiveJitterBuffer) -> tuple[int, int, int, int, int]:
    st = buf.stats
    return st.underruns, st.inserted, st.lost, st.gaps, st.late


def test_missing_frame_early_waits_even_with_newer_here() -> None:
    buf, p = started_buffer()
    buf.push(p[2], 0.070)
    slot = buf.pop(0.0555, quiet=False)  # p1 due, lag -0.725: early
    assert slot == Slot(SlotKind.UNDERRUN)
    assert counts(buf) == (1, 1, 0, 0, 0)  # underrun + inserted: playout stays on p1
    buf.push(p[1], 0.058)  # overtaken by p2, but before its playout point
    assert [index_of(s.packet) for s in (buf.pop(0.0755), buf.pop(0.0955)) if s] == [1, 2]
    assert counts(buf) == (1, 1, 0, 0, 0)


def test_missing_frame_on_time_nothing_newer_waits() -> None:
    buf, p = started_buffer()
    slot = buf.pop(0.0655, quiet=False)  # p1 due, lag -0.225: on time
    assert slot == Slot(SlotKind.UNDERRUN)
    assert counts(buf) == (1, 1, 0, 0, 0)
    buf.push(p[1], 0.068)
    slot = buf.pop(0.0855, quiet=False)
    assert slot is not None and index_of(slot.packet) == 1
    assert counts(buf) == (1, 1, 0, 0, 0)


def test_missing_frame_overdue_nothing_newer_advances_then_counts_the_loss() -> None:
    buf, p = started_buffer()
    slot = buf.pop(0.0855, quiet=False)  # p1 due, lag 0.775: overdue, nothing newer
    assert slot == Slot(SlotKind.UNDERRUN)
    assert counts(buf) == (1, 0, 0, 0, 0)  # an underrun, not an insert; not yet a loss
    buf.push(p[2], 0.090)
    slot = buf.pop(0.1055, quiet=False)  # playout has moved on to p2
    assert slot is not None and index_of(slot.packet) == 2
    assert counts(buf) == (1, 0, 1, 0, 0)  # p2's sequence number shows p1 missing: a loss
    buf.push(p[1], 0.110)
    assert counts(buf) == (1, 0, 1, 0, 1)  # p1 after its slot: late, dropped
    assert buf.buffered == 0


def test_missing_frame_with_newer_here_is_lost_at_once() -> None:
    buf, p = started_buffer()
    buf.push(p[2], 0.070)
    slot = buf.pop(0.0755, quiet=False)  # p1 due, lag 0.275, p2 here
    assert slot == Slot(SlotKind.LOST, next_packet=p[2])  # FEC source for p1
    assert counts(buf) == (0, 0, 1, 0, 0)
    slot = buf.pop(0.0955, quiet=False)
    assert slot is not None and index_of(slot.packet) == 2
    assert counts(buf) == (0, 0, 1, 0, 0)  # not counted twice


def test_missing_frames_lost_next_packet_only_for_the_following_frame() -> None:
    buf, p = started_buffer()
    buf.push(p[3], 0.090)
    assert buf.pop(0.0955, quiet=False) == Slot(SlotKind.LOST)  # p1: p2 is not here
    assert buf.pop(0.1155, quiet=False) == Slot(SlotKind.LOST, next_packet=p[3])  # p2
    slot = buf.pop(0.1355, quiet=False)
    assert slot is not None and index_of(slot.packet) == 3
    assert counts(buf) == (0, 0, 2, 0, 0)


# --- loss ---------------------------------------------------------------------------------


N_LONG = 1000  # 20 s


@pytest.mark.parametrize("phase", PHASES[1:2])
@pytest.mark.parametrize(
    "pattern",
    [
        ("random 5%", lambda: random_loss(N_LONG, 0.05, 1)),
        ("random 5%", lambda: random_loss(N_LONG, 0.05, 2)),
        ("bursts 2-5", lambda: burst_loss(N_LONG, 3)),
        ("bursts 2-5", lambda: burst_loss(N_LONG, 4)),
        ("gilbert-elliott", lambda: gilbert_elliott(N_LONG, 0.02, 0.45, 5)),
        ("gilbert-elliott", lambda: gilbert_elliott(N_LONG, 0.03, 0.5, 6)),
    ],
    ids=lambda p: p[0] if isinstance(p, tuple) else None,
)
def test_loss_every_slot_answered_no_hole(
    pattern: tuple[str, Callable[[], set[int]]], phase: float
) -> None:
    dropped = pattern[1]()
    sent = sender(N_LONG)
    run = simulate(Network(drop=dropped), sent, phase_s=phase)
    run.assert_no_hole(range(N_LONG))
    assert_losses_accounted(run, dropped)
    st = run.buf.stats
    assert st.late == 0
    # A dropped (skipped) frame only ever pays back an inserted one: delay does not ratchet.
    assert st.dropped <= st.inserted
    assert pct(run.added(), 50) == pytest.approx(pct(run.added(0, 0.5), 50))


def assert_losses_accounted(run: Run, dropped: Collection[int]) -> None:
    """On an in-order link that drops `dropped`: the concealed frames are exactly those; in each
    loss run playout waits at most one slot (on time, nothing newer yet), then advances with
    UNDERRUN while nothing newer has arrived and with LOST once something has; a LOST carries
    next_packet exactly when the following frame was delivered (FEC source). stats.lost counts a
    LOST at once and an advancing UNDERRUN when the next packet played shows the sequence gap;
    nothing is taken for a pause."""
    concealed = run.concealed()
    assert [i for i, _ in concealed] == sorted(dropped)
    runs = [i for i in sorted(dropped) if i - 1 not in dropped]
    assert len(run.stalls) <= len(runs)
    frames = iter(concealed)
    pending = 0  # advancing UNDERRUNs since the last packet played
    for r in run.started[: run.last_packet + 1]:
        if r.kind is SlotKind.LOST:
            frame, _ = next(frames)
            assert r.lost == 1
            assert (r.next_index is not None) == (frame + 1 not in dropped)
        elif r.advanced:
            next(frames)
            assert r.lost == 0
            pending += 1
        elif r.kind is SlotKind.PACKET:
            assert r.lost == pending  # the sequence gap confirms the provisional losses
            pending = 0
        else:
            assert r.lost == 0
    # U* L*: within a loss run no advancing UNDERRUN follows a LOST.
    for a, b in itertools.pairwise(concealed):
        if b[0] == a[0] + 1:
            assert not (a[1] is SlotKind.LOST and b[1] is SlotKind.UNDERRUN)
    st = run.buf.stats
    assert st.lost == len(dropped) and st.gaps == 0


@pytest.mark.parametrize("phase", PHASES)
def test_single_loss_one_lost_slot_with_fec_packet(phase: float) -> None:
    run = simulate(Network(drop={100}), sender(300), phase_s=phase)
    lost = run.kinds(SlotKind.LOST)
    assert len(lost) == 1
    assert lost[0].next_index == 101  # Opus in-band FEC of 100 is in 101
    i = run.started.index(lost[0])
    assert run.started[i - 1].index == 99 and run.started[i + 1].index == 101
    run.assert_no_hole(range(300))
    assert_losses_accounted(run, {100})
    assert not run.stalls  # 101 is here when 100 is due: no waiting
    assert_idle_tail(run)
    assert run.buf.stats.underruns == len(run.tail)  # only the idle tail
    assert pct(run.added(2.5, 5.0), 50) == pytest.approx(pct(run.added(0.0, 1.9), 50))


@pytest.mark.parametrize("phase", PHASES)
def test_burst_of_three_lost_slots_only_last_has_next(phase: float) -> None:
    run = simulate(Network(drop={100, 101, 102}), sender(300), phase_s=phase)
    run.assert_no_hole(range(300))
    assert_losses_accounted(run, {100, 101, 102})
    # Measured: UNDERRUN-UNDERRUN-LOST (phase 5.1 ms), UNDERRUN-LOST-LOST (others, after one
    # slot of waiting). Only the last LOST has the following packet for FEC.
    concealed = run.concealed()
    assert concealed[0][1] is SlotKind.UNDERRUN and concealed[-1][1] is SlotKind.LOST
    lost = run.kinds(SlotKind.LOST)
    assert [r.next_index for r in lost] == [None] * (len(lost) - 1) + [103]
    # The first packet played after the burst confirms the provisional losses. (After a slot of
    # waiting, that slot is paid back at once by dropping 103: 104 is played.)
    first_after = next(r for r in run.started if r.index is not None and r.index > 99)
    assert first_after.index == (103 if not run.stalls else 104)
    assert first_after.lost == sum(k is SlotKind.UNDERRUN for _, k in concealed)
    # No ratchet: a second after the burst the added delay is what it was before.
    before = pct(run.added(0.5, 1.9), 50)
    assert pct(run.added(3.5, 5.5), 50) == pytest.approx(before)
    assert max(run.added(3.5, 5.5)) == pytest.approx(before)


@pytest.mark.parametrize("phase", PHASES[1:3])
@pytest.mark.parametrize("burst", [3, 10, 30])
def test_loss_burst_does_not_stall_playout(burst: int, phase: float) -> None:
    # Long bursts too: playout moves on through the burst, so no max-gap resync either.
    run = simulate(Network(drop=set(range(100, 100 + burst))), sender(400), phase_s=phase)
    before = pct(run.added(0.5, 1.9), 50)
    run.assert_no_hole(range(400))
    assert_losses_accounted(run, set(range(100, 100 + burst)))
    assert run.buf.stats.lost == burst
    # One slot of waiting is fair (the packet might be late, not lost); more is a stall.
    slots = run.started
    before_burst = next(i for i, r in enumerate(slots) if r.index == 99)
    after_burst = next(i for i, r in enumerate(slots) if r.index is not None and r.index > 99)
    concealing = slots[before_burst + 1 : after_burst]
    assert len(concealing) - burst == len(run.stalls) <= 1
    assert max(run.added(1.9, 8.0)) <= before + FRAME_MS + 1e-6
    # ... and that one frame is paid back: a second later the delay is what it was before.
    assert max(run.added(3.5, 8.0)) == pytest.approx(before)


# --- reorder, late, duplicates ------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_reorder_inside_target_plays_both_in_order(phase: float) -> None:
    # 100 arrives 3 ms after 101 (20 ms spacing + 23 ms extra): still before its slot.
    run = simulate(Network(extra={100: 0.023, 200: 0.021}), sender(300), phase_s=phase)
    assert run.played == list(range(300))
    st = run.buf.stats
    assert (st.reordered, st.late, st.lost) == (2, 0, 0)
    assert not run.kinds(SlotKind.LOST)


@pytest.mark.parametrize("phase", PHASES[1:3])
@pytest.mark.parametrize("extra", [0.080, 0.150, 0.400])
def test_reorder_beyond_target_is_late_never_out_of_order(extra: float, phase: float) -> None:
    run = simulate(Network(extra={100: extra}), sender(300), phase_s=phase)
    assert 100 not in run.played
    assert run.played == sorted(run.played)  # never out of order
    (lost,) = run.kinds(SlotKind.LOST)
    assert lost.next_index == 101  # FEC from the following packet
    st = run.buf.stats
    assert (st.late, st.lost, st.duplicates) == (1, 1, 0)
    run.assert_no_hole(range(300))


@pytest.mark.parametrize("phase", PHASES)
def test_duplicates_counted_and_played_once(phase: float) -> None:
    # Copies: while the original is buffered, right with it, and long after it was played.
    dups = {50: [0.004], 60: [0.0, 0.001], 70: [0.150], 80: [2.0]}
    run = simulate(Network(dups=dups), sender(300), phase_s=phase)
    assert run.played == list(range(300))
    st = run.buf.stats
    assert st.duplicates == 5
    assert (st.received, st.late, st.lost) == (305, 0, 0)


@pytest.mark.parametrize("phase", PHASES)
def test_packet_after_its_slot_is_late_and_dropped(phase: float) -> None:
    # 80 arrives 100 ms late, after its slot was concealed (LOST); a copy of 80 arrives later still.
    run = simulate(Network(extra={80: 0.100}, dups={80: [0.5]}), sender(300), phase_s=phase)
    assert 80 not in run.played and run.played == sorted(run.played)
    st = run.buf.stats
    assert (st.late, st.duplicates, st.lost) == (2, 0, 1)
    (lost,) = run.kinds(SlotKind.LOST)
    assert lost.next_index == 81


# --- wrap-around ------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES[:2])
@pytest.mark.parametrize(
    ("start_seq", "start_ts", "wrap_at"),
    [
        (2**16 - 5, 7_777, 5),  # seq wraps at packet 5
        (1000, 2**32 - FRAME_TS * 5, 5),  # timestamp wraps at packet 5
        (2**16 - 50, 2**32 - FRAME_TS * 50, 50),  # both, mid-stream
        (2**16 - 1, 2**32 - FRAME_TS * 120 + 17, 120),  # seq at 1, ts (unaligned) at 120
    ],
)
def test_wrap_around_keeps_order_and_continuity(
    start_seq: int, start_ts: int, wrap_at: int, phase: float
) -> None:
    sent = sender(400, start_seq=start_seq, start_ts=start_ts)
    assert any(s.packet.seq == 0 for s in sent) or any(s.packet.timestamp < FRAME_TS for s in sent)
    # Around the wrap: w-1 arrives after w, w+2 is lost, w+4 duplicated.
    w = wrap_at
    net = Network(extra={w - 1: 0.023}, drop={w + 2}, dups={w + 4: [0.005]})
    run = simulate(net, sent, phase_s=phase)
    assert run.played == [i for i in range(400) if i != w + 2]
    assert run.lost_indices() == [w + 2]
    (lost,) = run.kinds(SlotKind.LOST)
    assert lost.next_index == w + 3
    run.assert_no_hole(range(400))
    st = run.buf.stats
    assert (st.reordered, st.duplicates, st.late, st.lost, st.resyncs) == (1, 1, 0, 1, 0)
    played_seqs = [
        r.slot.packet.seq for r in run.kinds(SlotKind.PACKET) if r.slot and r.slot.packet
    ]
    assert all((b - a) % 2**16 in (1, 2) for a, b in itertools.pairwise(played_seqs))
    assert max(run.added()) < MIN_DELAY_MS + FRAME_MS + 1e-6


# --- SSRC change ------------------------------------------------------------------------------


def two_streams(straggler_extra: float | None = None) -> tuple[list[Sent], Network]:
    a = sender(200, ssrc=0xAAAA, start_seq=100, start_ts=5_000)
    b = sender(200, ssrc=0xBBBB, start_seq=40_000, start_ts=3_000_000_000, t0=4.0, first_index=200)
    net = Network(extra={} if straggler_extra is None else {199: straggler_extra})
    return a + b, net


@pytest.mark.parametrize("phase", PHASES)
def test_ssrc_change_restarts_cleanly(phase: float) -> None:
    sent, net = two_streams()
    run = simulate(net, sent, phase_s=phase)
    st = run.buf.stats
    assert st.ssrc_changes == 1
    played = run.played
    first_b = played.index(200)
    assert played[first_b:] == list(range(200, 400))  # new stream from its first packet
    # A plays in order up to the switch; its not-yet-played tail (here #199, buffered when B#200
    # arrived) is discarded, never played after B started.
    assert played[:first_b] == list(range(first_b))
    assert first_b >= 199 - 1
    assert st.lost == st.late == st.gaps == 0
    # Playout was running, so B starts without a fresh start-up wait: no None slot at the switch,
    # B#200 plays in the first slot after it arrives.
    assert all(r.slot is not None for r in run.started)
    arrival_200 = next(d.arrival_s for d in net.deliver(sent) if index_of(d.packet) == 200)
    (rec_200,) = [r for r in run.started if r.index == 200]
    assert 0 <= rec_200.t - arrival_200 < FRAME_S
    # The margin is then rebuilt by quiet-frame inserts, up to the -0.5 frame deadband
    # (measured: 10.0 / 15.1 / 23.7 / 29.3 ms at the four phases, vs 30.0 / 35.1 / 23.7 / 29.3
    # for A), and never above the clean-link delay.
    added_b = run.added(4.5)
    assert min(added_b) >= MIN_DELAY_MS - FRAME_MS / 2 - 1e-6
    assert max(added_b) < MIN_DELAY_MS + FRAME_MS + 1e-6


@pytest.mark.parametrize(("straggler", "phase"), [(0.045, 0.0), (0.045, 0.0051), (1.0, 0.0051)])
def test_ssrc_change_ignores_old_stream_straggler(straggler: float, phase: float) -> None:
    # A#199 is delayed until after B started: it is late, not a third stream.
    sent, net = two_streams(straggler_extra=straggler)
    run = simulate(net, sent, phase_s=phase)
    st = run.buf.stats
    assert st.ssrc_changes == 1
    assert st.late == 1
    assert st.lost == st.duplicates == 0
    played = run.played
    assert 200 in played and played[played.index(200) :] == list(range(200, 400))
    assert 199 not in played
    assert all(r.slot is not None for r in run.started)


# --- clock drift ------------------------------------------------------------------------------


def talk_spurts(k: int) -> bool:
    """quiet flag per slot: 2.6 s of speech then 0.86 s of silence (period 173 slots)."""
    return k % 173 >= 130


@pytest.mark.parametrize(
    ("drift", "quiet"),
    [(+0.005, None), (+0.005, talk_spurts), (-0.005, None)],
    ids=["fast-always-quiet", "fast-talk-spurts", "slow-always-quiet"],
)
def test_clock_drift_delay_stays_bounded(drift: float, quiet: Callable[[int], bool] | None) -> None:
    n = 3000  # 60 s
    run = simulate(Network(), sender(n, drift=drift), quiet=quiet, track_target=True)
    assert run.played == sorted(run.played)
    st = run.buf.stats
    assert st.lost == st.late == st.resyncs == 0
    # Never above target + 2 frames for long (no 0.5 s stretch), and no growth over the minute.
    targets = dict(zip((r.t for r in run.recs), run.targets, strict=True))
    over = [r.added_ms > targets[r.t] + 2 * FRAME_MS for r in run.started if r.added_ms is not None]
    assert spans(over) < 25
    assert max(run.added(50, 60)) <= max(run.added(10, 20)) + FRAME_MS
    assert max(run.added()) <= MIN_DELAY_MS + 2 * FRAME_MS + 1e-6
    # 0.5 % of 3000 frames = 15 frames must be dropped (fast sender) or inserted (slow sender).
    if drift > 0:
        assert 12 <= st.dropped <= 18
    else:
        assert st.dropped == 0
        mid_inserts = [r for r in run.started[: run.last_packet] if r.kind is SlotKind.UNDERRUN]
        assert 12 <= len(mid_inserts) <= 18
        assert all(r.inserted for r in mid_inserts)
        # Every frame quiet: the insert comes at lag < -0.5, while the due packet is still here,
        # before the buffer runs dry (at lag ~ -0.65): no empty-buffer underrun at all.
        assert not any(r.underrun for r in mid_inserts)


def test_clock_drift_continuous_speech_forced_drops_keep_it_bounded() -> None:
    # Never quiet: drops are only forced when playout is > 4 frames behind.
    run = simulate(Network(), sender(3000, drift=0.005), quiet=lambda _k: False)
    assert run.played == sorted(run.played)
    assert run.buf.stats.dropped >= 10
    assert max(run.added()) <= MIN_DELAY_MS + 5 * FRAME_MS
    assert max(run.added(50, 60)) <= max(run.added(10, 20)) + 1e-6


@pytest.mark.xfail(
    strict=True,
    reason="BUG (still open with the -0.5 insert threshold): with a slow sender clock (-0.5 %) "
    "7 of the 14 inserts per minute are empty-buffer UNDERRUNs in speech (quiet=False) and "
    "buffering sits at p50 11.1 ms, below min_delay_ms=20. The reference transit (5th "
    "percentile over the 1.5 s window) trails the drifting transit by ~7.1 ms, so the playout "
    "point is ~7 ms early and the buffer runs dry at lag -0.646; the quiet-frame insert window "
    "(lag in [-0.646, -0.5)) lasts only ~29 slots, shorter than a 130-slot talk spurt.",
)
@pytest.mark.parametrize("phase", PHASES[1:2])
def test_slow_sender_inserts_land_in_quiet_frames(phase: float) -> None:
    run = simulate(Network(), sender(3000, drift=-0.005), quiet=talk_spurts, phase_s=phase)
    last = max(i for i, r in enumerate(run.recs) if r.kind is SlotKind.PACKET)
    speech_inserts = [
        k
        for k, r in enumerate(run.recs[:last])
        if r.kind is SlotKind.UNDERRUN and not talk_spurts(k)
    ]
    assert speech_inserts == []
    assert pct(run.added(5), 50) >= MIN_DELAY_MS


# --- jitter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("shape", ["uniform", "gaussian"])
def test_jitter_50_pm_20_target_covers_it(shape: str, seed: int) -> None:
    # One-way delay 50 ± 20 ms: base 30 ms + extra in [0, 40] ms.
    jitter = (
        uniform_jitter(0.0, 0.040, seed)
        if shape == "uniform"
        else gaussian_jitter(0.020, 0.010, 0.0, 0.040, seed)
    )
    n = 1000
    run = simulate(Network(base_s=0.030, jitter=jitter), sender(n), track_target=True)
    st = run.buf.stats
    assert st.late / n < 0.05
    assert st.reordered > 0  # 40 ms spread on 20 ms spacing reorders
    settled = run.targets[150:-60]  # after 3 s, before the idle tail
    assert 25 <= pct(settled, 50) <= 45
    assert max(run.targets) <= 45
    run.assert_no_hole(range(n))
    assert run.played == sorted(run.played)
    # Heard at the jitter's p95 plus up to a frame of phase, not at the worst case.
    assert pct(run.added(3), 50) <= 40 + 2 * FRAME_MS


@pytest.mark.parametrize("phase", PHASES)
def test_reference_transit_ignores_one_early_outlier(phase: float) -> None:
    # Packet 0 takes a 30 ms path, every later one 60 ms (say it left just before the source
    # stalled). The reference transit is the 5th percentile of the window, not its minimum, so
    # once a handful of packets are in, the one fast packet no longer reads as 30 ms of jitter;
    # with the minimum the target would stay at 30 ms until packet 0 leaves the 1.5 s window.
    net = Network(base_s=0.060, jitter=lambda s: -0.030 if s.index == 0 else 0.0)
    run = simulate(net, sender(150), phase_s=phase, track_target=True)
    late_targets = [tg for r, tg in zip(run.recs, run.targets, strict=True) if r.t >= 0.3]
    assert late_targets and set(late_targets) == {MIN_DELAY_MS}
    assert max(run.targets) < 30  # measured 27.0, right after packet 1 (2 transits)
    assert max(run.added(0.3)) < MIN_DELAY_MS + FRAME_MS + 1e-6
    st = run.buf.stats
    assert run.played == list(range(150)) and st.late == st.lost == 0


def spike(start: float, end: float, extra: float) -> Callable[[Sent], float]:
    return lambda s: extra if start <= s.send_s < end else 0.0


@pytest.mark.parametrize("phase", PHASES[1:3])
@pytest.mark.parametrize("fifo", [True, False], ids=["queue", "path-switch"])
def test_jitter_spike_recovers_within_2s(fifo: bool, phase: float) -> None:
    net = Network(jitter=spike(10.0, 12.0, 0.200), fifo=fifo)
    sent = sender(1000)
    run = simulate(net, sent, phase_s=phase, track_target=True)
    # The spike ends when its last delayed packet has arrived.
    spiked = [s for s in sent if 10.0 <= s.send_s < 12.0]
    spike_end = max(d.arrival_s for d in net.deliver(spiked))
    # At the onset nothing arrives for 200 ms, which pop() cannot tell from a loss burst: playout
    # moves on (advancing UNDERRUNs) instead of stalling, so the first ~spike/frame frames are
    # concealed and their packets come late. Measured: 11-12 frames, lost == late.
    concealed = run.concealed()
    first = spiked[0].index
    assert [i for i, _ in concealed] == list(range(first, first + len(concealed)))
    assert all(k is SlotKind.UNDERRUN for _, k in concealed)
    assert 1 <= len(concealed) <= 0.200 / FRAME_S + 2
    st = run.buf.stats
    assert st.lost == st.late == len(concealed) and st.gaps == 0
    assert max(run.targets) >= 180  # grew to cover the spike
    assert max(run.targets) <= JitterConfig().max_delay_ms
    limit = MIN_DELAY_MS + FRAME_MS
    last_over = max(
        r.t for r in run.started if r.added_ms is not None and r.added_ms > limit + 1e-6
    )
    recovered = min(r.t for r in run.started if r.added_ms is not None and r.t > last_over)
    # Product target. Measured 1.80-1.83 s; counted from the sender-side end (12.0 s) it would
    # be 2.03-2.06 s, since packets delayed by the spike keep arriving until ~12.21 s.
    assert recovered - spike_end <= 2.0
    assert max(run.added(recovered)) <= limit + 1e-6
    run.assert_no_hole(range(1000))


# --- ceiling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("hi", "seed"), [(0.120, 1), (0.150, 2)])
def test_max_delay_ceiling(hi: float, seed: int) -> None:
    config = JitterConfig(max_delay_ms=100)
    run = simulate(
        Network(jitter=uniform_jitter(0.0, hi, seed)),
        sender(1000),
        config=config,
        track_target=True,
    )
    assert max(run.targets) == 100  # the spread (>100 ms) is clamped
    added = run.added(3)
    assert pct(added, 95) <= config.max_delay_ms + 2 * FRAME_MS
    assert run.played == sorted(run.played)


@pytest.mark.xfail(
    strict=True,
    reason="BUG (still open after the no-stall fix): with jitter far beyond max_delay_ms "
    "(uniform 0-400 ms, max_delay_ms=100, seed 1; ~66 % of packets late) played packets' added "
    "delay is p50 135 / p95 175 / max 195 ms (target: p95 <= 140). Each on-time empty-buffer "
    "UNDERRUN (lag <= 0.5, nothing newer) adds a frame (54 inserts), but a drop needs the "
    "following frame buffered, which at this loss rate it rarely is (29 drops), so playout "
    "drifts up to 3-4 frames behind its playout point; the hard ceiling only engages at lag > "
    "max_delay_ms (5 frames).",
)
def test_max_delay_ceiling_under_extreme_jitter() -> None:
    config = JitterConfig(max_delay_ms=100)
    run = simulate(
        Network(jitter=uniform_jitter(0.0, 0.400, 1)),
        sender(1000),
        config=config,
        track_target=True,
    )
    assert max(run.targets) == 100
    assert pct(run.added(3), 95) <= config.max_delay_ms + 2 * FRAME_MS


def drops_per_slot(run: Run) -> list[int]:
    """Frames skipped between consecutive played packets (on a lossless link: drops)."""
    return [b - a - 1 for a, b in itertools.pairwise(run.played)]


@pytest.mark.parametrize("phase", PHASES[1:3])
def test_hard_ceiling_drops_every_slot_even_in_speech(phase: float) -> None:
    # The consumer starts ~1 s late, so playout begins ~47 frames behind its playout point;
    # no frame is ever quiet.
    def late_consumer(config: JitterConfig | None) -> Run:
        return simulate(
            Network(), sender(300), config=config, phase_s=1.0 + phase, quiet=lambda _k: False
        )

    run = late_consumer(JitterConfig(max_delay_ms=60))
    run.assert_no_hole(range(300))
    # Beyond max_delay_ms (3 frames) behind the playout point a frame is dropped in every slot,
    # then none: playout settles inside the ceiling (measured 75 ms of buffering), not below it.
    drops = drops_per_slot(run)
    n = drops.index(0)
    assert n >= 40 and set(drops[:n]) == {1} and set(drops[n:]) == {0}
    settled = run.added(run.started[n + 1].t)
    assert max(settled) - min(settled) < 1e-6
    assert MIN_DELAY_MS + 60 - FRAME_MS < settled[0] <= MIN_DELAY_MS + 60 + 1e-6
    # Without the ceiling in play (250 ms), speech frames are dropped only every other slot once
    # playout is within 10 frames, and it stops 4 frames behind (measured 95 ms).
    loose = late_consumer(None)
    drops = drops_per_slot(loose)
    last = max(i for i, d in enumerate(drops) if d)
    assert 0 in drops[:last]
    assert loose.added()[-1] > MIN_DELAY_MS + 60 + 1e-6


def test_max_delay_ceiling_on_a_spike_above_it() -> None:
    run = simulate(
        Network(jitter=spike(10.0, 12.0, 0.400), fifo=True), sender(1000), track_target=True
    )
    assert max(run.targets) == JitterConfig().max_delay_ms
    assert run.played == sorted(run.played)
    run.assert_no_hole(range(1000))
    # The target is capped at 250 ms, so packets 400 ms late are lost until the reference (5th
    # percentile of the window) has moved up to the spike: measured 59 frames. Nothing else.
    st = run.buf.stats
    assert st.lost == st.late == len(run.concealed()) <= 1.5 / FRAME_S


# --- sender pause -----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES[1:3])
@pytest.mark.parametrize("gap", [3.0, 1.0, 0.2, 0.1])
def test_sender_pause_resyncs_without_lost_flood(gap: float, phase: float) -> None:
    # Timestamps and arrivals jump by `gap`, sequence numbers stay contiguous.
    sent = sender(400, pauses={200: gap})
    run = simulate(Network(), sent, phase_s=phase)
    st = run.buf.stats
    assert st.resyncs == 1
    assert st.lost == 0 and not run.kinds(SlotKind.LOST)
    assert run.played == list(range(400))
    # The pause is bridged with UNDERRUN slots (conceal / comfort noise), one per slot.
    pause_slots = [r for r in run.started if sent[199].send_s + 0.1 < r.t < sent[200].send_s]
    assert pause_slots and all(r.kind is SlotKind.UNDERRUN for r in pause_slots)
    # Overdue slots move playout on (no delay piles up); #200's contiguous sequence number then
    # shows they were a pause, not losses: counted as gaps when #200 is played.
    i199, i200 = (next(i for i, r in enumerate(run.started) if r.index == k) for k in (199, 200))
    between = run.started[i199 + 1 : i200]
    assert all(r.kind is SlotKind.UNDERRUN and r.lost == r.gaps == 0 for r in between)
    advanced = sum(r.advanced for r in between)
    assert advanced >= round(gap / FRAME_S) - 2
    assert st.gaps == run.started[i200].gaps == advanced
    assert st.inserted == len(run.stalls) + sum(r.inserted for r in run.tail)
    assert max(run.added(sent[200].send_s)) < MIN_DELAY_MS + FRAME_MS + 1e-6


@pytest.mark.parametrize("phase", PHASES)
def test_resync_restores_min_delay_margin(phase: float) -> None:
    sent = sender(400, pauses={200: 3.0})
    run = simulate(Network(extra={100: 0.010, 300: 0.010}), sent, phase_s=phase)
    st = run.buf.stats
    assert st.resyncs == 1 and st.lost == st.late == 0
    # Between #200's arrival and its playout point playout waits (UNDERRUN, inserted).
    arrival_200 = sent[200].send_s + 0.030
    i200 = next(i for i, r in enumerate(run.started) if r.index == 200)
    waits = [r for r in run.started[:i200] if r.t >= arrival_200]
    assert all(r.kind is SlotKind.UNDERRUN and r.inserted for r in waits)
    assert min(run.added(sent[200].send_s)) >= MIN_DELAY_MS - 1e-6


# --- capacity -----------------------------------------------------------------------------------


def test_overflow_bounded_and_counted() -> None:
    buf = AdaptiveJitterBuffer()
    cap = buf.config.capacity
    for s in sender(1000):
        buf.push(s.packet, 0.001 * s.index)
        assert buf.buffered <= cap
    st = buf.stats
    assert (buf.buffered, st.overflow, st.received) == (cap, 1000 - cap, 1000)
    # What is kept is the newest, and it drains in order.
    played: list[int] = []
    for k in range(150):
        slot = buf.pop(1.0 + k * FRAME_S)
        if slot is not None and slot.kind is SlotKind.PACKET:
            index = index_of(slot.packet)
            assert index is not None
            played.append(index)
    assert played and played[0] >= 1000 - cap and played[-1] == 999
    assert played == sorted(played)


def test_small_capacity_during_playout() -> None:
    config = JitterConfig(capacity=4)
    run = simulate(Network(jitter=spike(2.0, 3.0, 0.200), fifo=True), sender(300), config=config)
    assert run.played == sorted(run.played)
    assert run.buf.buffered <= 4


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_delay_ms": 0},
        {"min_delay_ms": -5},
        {"min_delay_ms": 300, "max_delay_ms": 250},
        {"max_delay_ms": 10},
        {"frame_ms": 0},
        {"frame_ms": -20},
        {"clock_rate_hz": 0},
        {"capacity": 3},
        {"min_delay_ms": float("nan")},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JitterConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"percentile": 150.0},
        {"percentile": 100.0001},
        {"percentile": -5.0},
        {"percentile": 0.0},
        {"percentile": REF_PCT},  # the spread above the reference would always be 0
        {"percentile": float("nan")},
        {"window_s": -1.0},
        {"window_s": 0.0},
    ],
)
def test_config_validation_percentile_and_window(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        JitterConfig(**kwargs)


def test_config_validation_window_nan() -> None:
    with pytest.raises(ValueError):
        JitterConfig(window_s=float("nan"))


@pytest.mark.parametrize(
    "cfg",
    [
        JitterConfig(min_delay_ms=100, max_delay_ms=100),
        JitterConfig(capacity=4),
        JitterConfig(percentile=100.0),
        JitterConfig(percentile=REF_PCT + 0.001, window_s=0.001),
    ],
    ids=["fixed delay", "smallest capacity", "percentile 100", "tiny window"],
)
def test_config_boundaries_accepted_and_working(cfg: JitterConfig) -> None:
    buf = AdaptiveJitterBuffer(cfg)
    kinds: list[SlotKind] = []
    for i in range(100):  # 2 s of packets with ±5 ms of jitter, popped every 20 ms
        arrival = 1.0 + 0.02 * i + (0.005 if i % 2 else -0.005)
        buf.push(RtpIn(seq=i, timestamp=960 * i, ssrc=7, payload=bytes([i])), arrival)
        slot = buf.pop(arrival + 0.001)
        if slot is not None:
            kinds.append(slot.kind)
    assert cfg.min_delay_ms <= buf.target_delay_ms <= cfg.max_delay_ms
    assert kinds.count(SlotKind.PACKET) >= 80, kinds


def test_the_delay_model_percentiles_are_numpys() -> None:
    import numpy as np

    from agent.media.rtp_jitter import _percentile

    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 75, 150):
        values = sorted(rng.normal(0.05, 0.01, n).tolist())
        for pct in (0.0, 5.0, 50.0, 95.0, 100.0):
            assert _percentile(values, pct) == pytest.approx(np.percentile(values, pct), abs=1e-12)
