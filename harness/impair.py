"""Seeded, in-process network impairment on a peer's outgoing RTP (tests and benchmarks).

Hooks the outgoing RTP of one RTCPeerConnection (agent.media.patches) so that its RTP packets
(never RTCP) are dropped — at random or in Gilbert–Elliott bursts — delayed, jittered and
reordered, deterministically for a given seed. Real kernels do this with `tc netem` (see
netem/); this works anywhere, inside one process, and repeats exactly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.media import patches


@dataclass(frozen=True)
class Impairment:
    loss_pct: float = 0.0  # independent random loss
    burst_enter_pct: float = 0.0  # Gilbert–Elliott: P(good → bad) per packet, in %
    burst_exit_pct: float = 100.0  # P(bad → good) per packet, in % (mean burst = 100/exit)
    burst_loss_pct: float = 100.0  # loss while in the bad state
    delay_ms: float = 0.0
    jitter_ms: float = 0.0  # uniform ± around delay_ms (packets may overtake each other)
    reorder_pct: float = 0.0  # this share of packets is held back an extra reorder_ms
    reorder_ms: float = 30.0
    seed: int = 1

    @classmethod
    def parse(cls, spec: str) -> Impairment:
        """`loss=5,burst=2:50,delay=50,jitter=20,reorder=2,seed=7` (all optional)."""
        kwargs: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = item.partition("=")
            if key == "loss":
                kwargs["loss_pct"] = float(value)
            elif key == "burst":
                enter, _, exit_ = value.partition(":")
                kwargs["burst_enter_pct"] = float(enter)
                kwargs["burst_exit_pct"] = float(exit_ or 50)
            elif key in ("delay", "jitter"):
                kwargs[f"{key}_ms"] = float(value)
            elif key == "reorder":
                kwargs["reorder_pct"] = float(value)
            elif key == "seed":
                kwargs["seed"] = int(value)
            else:
                raise ValueError(
                    f"unknown impairment {key!r} (loss, burst, delay, jitter, reorder, seed)"
                )
        return cls(**kwargs)

    @property
    def active(self) -> bool:
        return any(
            (self.loss_pct, self.burst_enter_pct, self.delay_ms, self.jitter_ms, self.reorder_pct)
        )


@dataclass
class ImpairedLink:
    impairment: Impairment
    sent: int = 0
    dropped: int = 0
    _rng: random.Random = field(init=False)
    _bad: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.impairment.seed)

    def drop(self) -> bool:
        imp, rng = self.impairment, self._rng
        if imp.burst_enter_pct:
            if self._bad:
                self._bad = rng.random() * 100 >= imp.burst_exit_pct
            else:
                self._bad = rng.random() * 100 < imp.burst_enter_pct
            if self._bad and rng.random() * 100 < imp.burst_loss_pct:
                return True
        return rng.random() * 100 < imp.loss_pct

    def delay_s(self) -> float:
        imp, rng = self.impairment, self._rng
        d = imp.delay_ms + (rng.uniform(-imp.jitter_ms, imp.jitter_ms) if imp.jitter_ms else 0.0)
        if imp.reorder_pct and rng.random() * 100 < imp.reorder_pct:
            d += imp.reorder_ms
        return max(0.0, d) / 1000

    async def hook(self, data: bytes, send: patches.SendRtp) -> None:
        """An outgoing-RTP hook (agent.media.patches.hook_outgoing_rtp)."""
        self.sent += 1
        if self.drop():
            self.dropped += 1
            return
        delay = self.delay_s()
        if delay <= 0:
            await send(data)
            return
        task = asyncio.get_running_loop().create_task(_later(delay, send, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _later(delay_s: float, send: Callable[[bytes], Awaitable[None]], data: bytes) -> None:
    await asyncio.sleep(delay_s)
    await send(data)


def impair_sender(pc: Any, impairment: Impairment) -> ImpairedLink:
    """Impair the RTP that `pc` sends (call after setLocalDescription)."""
    link = ImpairedLink(impairment)
    patches.hook_outgoing_rtp(pc, link.hook)
    return link
