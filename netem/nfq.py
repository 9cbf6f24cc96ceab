"""NFQUEUE handler: delay, jitter, reordering and bursty loss for kernels without sch_netem.

`python -m netem.nfq --queue num=1,delay=35,jitter=10,reorder=0,seed=1[,ge=p:r:bad:good]
[--queue ...] --max-s 900` binds each queue, holds every packet until its release time and
then accepts it (or drops it, for Gilbert-Elliott loss). The decision per packet is netem's:
delay + uniform(-jitter, +jitter) (so jitter may reorder, as with netem), `reorder` % sent at
once ahead of the rest. The iptables rule uses `--queue-bypass`, so when this process is gone
packets pass unimpaired; it exits by itself after `--max-s` and never holds more than
`--max-held` packets (beyond that, packets pass at once).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import random
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

log = logging.getLogger("netem.nfq")


class Verdict(Protocol):
    def accept(self) -> None: ...
    def drop(self) -> None: ...


@dataclass(frozen=True)
class QueueSpec:
    num: int
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder_pct: float = 0.0
    seed: int = 0
    ge: tuple[float, float, float, float] | None = None  # p, r, loss_bad, loss_good (percent)

    @classmethod
    def parse(cls, text: str) -> QueueSpec:
        kv = dict(item.split("=", 1) for item in text.split(",") if item)
        ge = None
        if "ge" in kv:
            parts = tuple(float(x) for x in kv.pop("ge").split(":"))
            if len(parts) != 4:
                raise ValueError(f"ge wants p:r:loss_bad:loss_good, got {parts}")
            ge = (parts[0], parts[1], parts[2], parts[3])
        unknown = set(kv) - {"num", "delay", "jitter", "reorder", "seed"}
        if unknown or "num" not in kv:
            raise ValueError(f"bad queue spec {text!r}")
        return cls(
            num=int(kv["num"]),
            delay_ms=float(kv.get("delay", 0)),
            jitter_ms=float(kv.get("jitter", 0)),
            reorder_pct=float(kv.get("reorder", 0)),
            seed=int(kv.get("seed", 0)),
            ge=ge,
        )


class Impairer:
    """Per-packet decision for one queue: when to release it, or None to drop it."""

    def __init__(self, spec: QueueSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.bad = False  # Gilbert-Elliott state

    def lost(self) -> bool:
        if self.spec.ge is None:
            return False
        p, r, loss_bad, loss_good = self.spec.ge
        if self.bad:
            self.bad = self.rng.random() * 100 >= r
        else:
            self.bad = self.rng.random() * 100 < p
        return self.rng.random() * 100 < (loss_bad if self.bad else loss_good)

    def release_at(self, now: float) -> float | None:
        if self.lost():
            return None
        s = self.spec
        if s.reorder_pct and self.rng.random() * 100 < s.reorder_pct:
            return now
        jitter = self.rng.uniform(-s.jitter_ms, s.jitter_ms) if s.jitter_ms else 0.0
        return now + max(0.0, s.delay_ms + jitter) / 1000


class Holder:
    """Packets waiting for release, earliest first; bounded."""

    def __init__(self, max_held: int) -> None:
        self.max_held = max_held
        self._heap: list[tuple[float, int, Verdict]] = []
        self._order = itertools.count()
        self.passed = self.dropped = self.overflow = 0

    def add(self, packet: Verdict, release: float | None, now: float) -> None:
        if release is None:
            packet.drop()
            self.dropped += 1
        elif release <= now:
            packet.accept()
            self.passed += 1
        elif len(self._heap) >= self.max_held:
            packet.accept()
            self.overflow += 1
        else:
            heapq.heappush(self._heap, (release, next(self._order), packet))

    def release_due(self, now: float) -> float | None:
        """Accept every packet due by `now`; returns the next release time (None: empty)."""
        while self._heap and self._heap[0][0] <= now:
            heapq.heappop(self._heap)[2].accept()
            self.passed += 1
        return self._heap[0][0] if self._heap else None

    def flush(self) -> None:
        while self._heap:
            heapq.heappop(self._heap)[2].accept()
            self.passed += 1

    def __len__(self) -> int:
        return len(self._heap)


def serve(specs: list[QueueSpec], max_s: float, max_held: int, now: Callable[[], float]) -> None:
    from netfilterqueue import NetfilterQueue, Packet

    holder = Holder(max_held)
    queues: list[NetfilterQueue] = []
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for spec in specs:
        impairer = Impairer(spec)

        def on_packet(pkt: Packet, impairer: Impairer = impairer) -> None:
            t = now()
            holder.add(pkt, impairer.release_at(t), t)

        nfq = NetfilterQueue()
        nfq.bind(spec.num, on_packet, max_len=4096)
        queues.append(nfq)
    fds = {nfq.get_fd(): nfq for nfq in queues}
    deadline = now() + max_s
    log.info("nfq: serving queues %s for at most %.0f s", [s.num for s in specs], max_s)
    try:
        while not stop and now() < deadline:
            nxt = holder.release_due(now())
            timeout = 0.2 if nxt is None else max(0.0, min(0.2, nxt - now()))
            readable, _, _ = select.select(list(fds), [], [], timeout)
            for fd in readable:
                fds[fd].run(block=False)
    finally:
        holder.flush()
        for nfq in queues:
            nfq.unbind()
        log.info(
            "nfq: done: passed %d dropped %d overflow %d",
            holder.passed, holder.dropped, holder.overflow,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netem.nfq", description=__doc__.splitlines()[0])
    p.add_argument("--queue", action="append", required=True, help="num=N,delay=,jitter=,...")
    p.add_argument("--max-s", type=float, default=1800.0, help="exit after this long")
    p.add_argument("--max-held", type=int, default=20000, help="most packets held at once")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    serve([QueueSpec.parse(q) for q in args.queue], args.max_s, args.max_held, time.monotonic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
