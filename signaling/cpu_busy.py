"""How busy the server's process tree keeps the CPUs: the server and its engine workers
(ASR, whisper, TTS), from /proc (Linux; elsewhere nothing is reported).

`CpuMonitor.run()` is one task, owned by whoever starts it (the app's lifecycle); about once a
second it reads the tree's CPU times in a thread (a few small files, off the event loop) and
reports the fraction of `cores` the tree used since the last reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from agent.clock import Clock

Report = Callable[[float, float], None]  # (now, busy: 1.0 = every core)


def _ticks(pid: int) -> int | None:
    """utime + stime of one process, in clock ticks (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids.extend(int(k) for k in (task / "children").read_text().split())
    return kids


def tree_ticks(root: int) -> dict[int, int]:
    """CPU ticks of `root` and every descendant, by pid."""
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        ticks = _ticks(pid)
        if ticks is None or pid in out:
            continue
        out[pid] = ticks
        todo.extend(_children(pid))
    return out


class TreeCpu:
    """CPU used by a process tree between two readings. A process that ended in between is
    not counted for its last moments (its parent's cutime would count its whole life)."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self._tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        self._last: dict[int, int] | None = None
        self._at = 0.0

    def sample(self, now: float) -> float | None:
        """CPU seconds per second since the last reading (None the first time)."""
        ticks = tree_ticks(self.root)
        last, at = self._last, self._at
        self._last, self._at = ticks, now
        if not ticks or last is None or now <= at:  # no /proc (not Linux), or the first time
            return None
        used = sum(t - last.get(pid, 0) for pid, t in ticks.items() if t >= last.get(pid, 0))
        return used * self._tick_s / (now - at)


class CpuMonitor:
    def __init__(self, clock: Clock, report: Report, cores: int, interval_s: float = 1.0) -> None:
        self.clock = clock
        self.report = report
        self.cores = max(1, cores)
        self.interval_s = interval_s

    async def run(self) -> None:
        """Sample until cancelled (the cancellation propagates); no reports off Linux."""
        tree = TreeCpu()
        while True:
            busy = await asyncio.to_thread(tree.sample, self.clock.now())
            if busy is not None:
                self.report(self.clock.now(), busy / self.cores)
            await self.clock.sleep(self.interval_s)
