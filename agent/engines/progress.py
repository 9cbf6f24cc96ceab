"""Is a worker process busy or hung? Its CPU time and its scheduler state say.

A worker that owes an answer and gives none may be hung (stopped, deadlocked) or merely slow:
on a loaded machine a nice'd worker gets little CPU and a sentence that takes 0.1 s alone can
take seconds. Killing a slow worker makes a loaded machine worse (the replacement loads its
model, on the same CPUs, and the request is lost), so a pool asks this first: a process that
spent at least `min_cpu_s` of CPU since the last look, or is runnable right now (state R:
waiting for a CPU that busier processes hold), is making progress. A stopped (SIGSTOP) or
deadlocked process is neither; a process spinning forever would look busy, so pools keep a
hard ceiling besides.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process has used, None if it is gone or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def runnable(pid: int) -> bool:
    """The process is running or waiting for a CPU (state R), not sleeping or stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "R"


class CpuProgress:
    """Remembers a process's CPU time; `advanced()` says whether it grew since the last call
    (or the process is runnable now: starved of CPU is not stuck)."""

    def __init__(self, pid: int, min_cpu_s: float = 0.02) -> None:
        self.pid = pid
        self.min_cpu_s = min_cpu_s
        self._last = cpu_seconds(pid)

    def advanced(self) -> bool:
        now = cpu_seconds(self.pid)
        if now is None or self._last is None:
            self._last = now
            return False  # gone (or never seen): no progress to wait for
        grew = now - self._last >= self.min_cpu_s
        self._last = now
        return grew or runnable(self.pid)
