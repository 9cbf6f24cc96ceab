"""agent/engines/progress.py on real processes: a busy one advances, a stopped one does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from agent.engines.progress import CpuProgress, cpu_seconds


def test_a_busy_process_advances_and_a_stopped_one_does_not() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        progress = CpuProgress(proc.pid)
        time.sleep(0.5)  # a loaded machine still gives a spinning process well over 20 ms
        assert progress.advanced()  # spinning: it used CPU since the last look
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.05)
        progress.advanced()  # the last of its running time
        time.sleep(0.3)
        assert not progress.advanced()  # stopped: no CPU at all
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.5)
        assert progress.advanced()
    finally:
        proc.kill()
        proc.wait()


def test_an_idle_process_does_not_advance_and_a_gone_one_reads_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # past the interpreter's start-up
        progress = CpuProgress(proc.pid)
        time.sleep(0.3)
        assert not progress.advanced()
    finally:
        proc.kill()
        proc.wait()
    assert cpu_seconds(proc.pid) is None
    assert not progress.advanced()
    used = cpu_seconds(os.getpid())
    assert used is not None and used > 0


def test_a_process_waiting_for_a_cpu_is_runnable_a_stopped_one_is_not() -> None:
    from agent.engines.progress import runnable

    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert runnable(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.1)
        assert not runnable(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not runnable(proc.pid)
