"""Event-loop lag: how late the loop wakes a short timer, measured on the injected clock.

Work that blocks the loop (per-frame Python, a slow callback) delays every call on it; the
lag of a 50 ms timer is the plainest measure of that. `LoopLagMonitor.run()` is one task,
owned by whoever starts it (the app's lifecycle); it reports the worst lag of each second
and every sample through a callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.clock import Clock

log = logging.getLogger(__name__)

Report = Callable[[float, list[float]], None]  # (worst lag over the period, all samples), s


class LoopLagMonitor:
    def __init__(
        self, clock: Clock, report: Report, interval_s: float = 0.05, period_s: float = 1.0
    ) -> None:
        self.clock = clock
        self.report = report
        self.interval_s = interval_s
        self.period_s = period_s

    async def run(self) -> None:
        """Sample until cancelled (the cancellation propagates)."""
        samples: list[float] = []
        period_start = self.clock.now()
        while True:
            before = self.clock.now()
            await self.clock.sleep(self.interval_s)
            after = self.clock.now()
            samples.append(max(0.0, after - before - self.interval_s))
            if after - period_start >= self.period_s:
                worst = max(samples)
                if worst > 0.05:
                    log.warning("event loop lag %.0f ms", worst * 1000)
                self.report(worst, samples)
                samples = []
                period_start = after
