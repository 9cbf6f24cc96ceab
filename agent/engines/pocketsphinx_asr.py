"""Streaming ASR with pocketsphinx (BSD; the wheel ships the en-us model, LM and dictionary).

pocketsphinx holds the GIL while it decodes (~2 ms per 20 ms frame) and while it loads a
decoder (~0.25 s). In the server's process that stalled the event loop — every call's audio
— and was the largest item of a profile at 4 calls (58 % of the samples holding the GIL).
So the decoders live in worker processes (agent/engines/asr_worker.py), one per 4 cores by
default, shared by every call: a call's recognizer is bound to the process with the fewest
calls, and its audio goes down a pipe without waiting for an answer. `partial` does not wait
either: it returns the newest hypothesis the worker has sent and asks for the next one, so a
busy worker makes captions a little late but never holds up the call's audio (the listener
reads every frame through `push` and `partial`; a stalled listener stretches the silence
that ends the turn). Only `finish` waits, for one short answer.

Under load a worker falls behind (it runs at a low CPU priority): captions come late, and past
`MAX_BACKLOG_BYTES` of audio waiting in its pipe a call's audio is skipped rather than queued
(its captions miss words; the words the agent answers come from whisper). Behind is not hung:
besides its answers, which queue behind the audio, a worker sends a progress beat while it
gets through its input (asr_worker.PROGRESS), and the pool reads those as they come. A worker
that dies, or owes answers and shows no progress at all (no answer, no beat) for
`hung_after_s` and is not even waiting for a CPU (agent/engines/progress.py) — stopped,
deadlocked — is killed and replaced (logged at WARNING, counted in
`restarts`). The utterances
it was decoding lose their captions — `partial` returns "" — and their `finish` fails with a
retryable EngineError, which the listener answers with the accurate pass's text or an empty
final. Each call moves to a live worker at its next
utterance; with none alive it has no captions until the replacement is up.

Memory: a decoder holds ~90 MB (the acoustic model and the LM search), so a process keeps
`preload` of them idle and holds at most `max_decoders`: past that many people speaking at the
same moment, an utterance gets no decoder and no live captions (its `partial` is "").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import logging
import math
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.audio import ASR_RATE_HZ, Pcm16
from agent.clock import Clock, MonotonicClock
from agent.engines.asr_worker import (
    CANCEL,
    ERROR,
    FINISH,
    HEADER,
    HYP,
    PROGRESS,
    PUSH,
    READY,
    START,
    TEXT,
)
from agent.engines.interfaces import EngineError
from agent.engines.progress import runnable
from agent.engines.worker_setup import CAPTIONS

log = logging.getLogger(__name__)

# Audio waiting in a worker's pipe beyond this (8 s of one call's 16 kHz PCM, shared by all
# the worker's calls) is not added to: the worker is behind and captions would only lag more.
MAX_BACKLOG_BYTES = 256 * 1024


def default_processes() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 64-core host gets 2)."""
    cpus = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    return max(1, cpus)


@dataclass(frozen=True)
class AsrPoolConfig:
    processes: int = field(default_factory=default_processes)
    preload: int = 1  # idle decoders each process keeps (~90 MB each)
    # Decoders a process holds at most: people speaking at the same moment beyond it get no
    # live captions (the accurate pass still hears them), so memory stays bounded.
    max_decoders: int = 3
    niceness: int = CAPTIONS  # CRITICAL_PATH when its finals are the transcript
    start_timeout_s: float = 60.0
    answer_timeout_s: float = 2.0  # `finish` gives up (the turn's fallback text is "")
    hung_after_s: float = 10.0  # owing answers, no progress at all this long: killed, replaced

    def __post_init__(self) -> None:
        if self.processes < 1 or self.preload < 0 or self.max_decoders < max(1, self.preload):
            raise ValueError("ASR processes must be >= 1, preload >= 0, max_decoders >= preload")
        if min(self.answer_timeout_s, self.hung_after_s, self.start_timeout_s) <= 0:
            raise ValueError("ASR timeouts must be positive")


class _Process:
    """One worker process: requests down its stdin, answers matched by position."""

    def __init__(self, proc: asyncio.subprocess.Process, now: Callable[[], float]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.calls = 0  # recognizers bound to this process
        self.alive = True
        self._now = now
        self.progressed_at = now()  # its last answer or progress beat (or its start)
        self._answers: collections.deque[asyncio.Future[str]] = collections.deque()

    def stalled_for(self) -> float:
        """How long it has owed answers without any sign of progress (0 when it owes none):
        a worker behind on its audio answers late but keeps sending progress beats, and one
        waiting for a CPU (starved by busier processes at its low priority) is slow, not
        stuck: its beats resume when it runs."""
        if not self._answers:
            return 0.0
        if runnable(self.proc.pid):
            self.progressed_at = self._now()
        return self._now() - self.progressed_at

    def send(self, kind: int, stream: int, payload: bytes = b"") -> None:
        """Queue a request; a dead process takes nothing (its calls already degraded)."""
        if not self.alive:
            return
        self.stdin.write(HEADER.pack(kind, stream, len(payload)) + payload)

    def ask(self, kind: int, stream: int) -> asyncio.Future[str]:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if not self.alive:
            answer.set_exception(EngineError("the ASR worker is gone", retryable=True))
            return answer
        if not self._answers:
            self.progressed_at = self._now()  # owes nothing until now
        self._answers.append(answer)
        self.send(kind, stream)
        return answer

    async def read_answers(self) -> None:
        """Resolve the waiting questions in order until the process's stdout closes."""
        try:
            while True:
                head = await self.stdout.readexactly(HEADER.size)
                kind, _stream, size = HEADER.unpack(head)
                text = (await self.stdout.readexactly(size)).decode(errors="replace")
                self.progressed_at = self._now()
                if kind == PROGRESS:
                    continue
                if not self._answers:
                    raise EngineError(f"the ASR worker answered {kind!r} unasked")
                answer = self._answers.popleft()
                if answer.done():  # its caller gave up waiting
                    continue
                if kind == TEXT:
                    answer.set_result(text)
                elif kind == ERROR:
                    answer.set_exception(EngineError(f"pocketsphinx: {text}", retryable=True))
                else:
                    raise EngineError(f"the ASR worker sent {kind!r}")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.fail("the ASR worker is gone")

    def fail(self, why: str) -> None:
        self.alive = False
        while self._answers:
            answer = self._answers.popleft()
            if not answer.done():
                answer.set_exception(EngineError(why, retryable=True))

    def kill(self) -> None:
        self.fail("the ASR worker was stopped")
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class PocketsphinxEngine:
    name = "pocketsphinx"
    sample_rate_hz = ASR_RATE_HZ

    def __init__(self, config: AsrPoolConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or AsrPoolConfig()
        self._clock = clock or MonotonicClock()
        self._processes: list[_Process] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream_ids = itertools.count(1)
        self._closed = False
        self.restarts = 0
        """Worker processes that died or hung and were replaced."""

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn() for _ in range(self.config.processes)))

    async def _spawn(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.engines.asr_worker",
            str(self.config.preload),
            str(self.config.niceness),
            str(self.config.max_decoders),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        process = _Process(proc, self._clock.now)
        try:
            async with self._clock.timeout(self.config.start_timeout_s):
                head = await process.stdout.readexactly(HEADER.size)
            if HEADER.unpack(head)[0] != READY:
                raise EngineError("the ASR worker did not say ready")
        except BaseException as exc:
            process.kill()
            await proc.wait()
            if isinstance(exc, (TimeoutError, asyncio.IncompleteReadError, EngineError)):
                raise EngineError(f"the pocketsphinx worker failed to start: {exc!r}") from exc
            raise
        if self._closed:  # closed while it started: aclose no longer sees it
            process.kill()
            await proc.wait()
            return
        self._processes.append(process)
        self._own(self._watch(process))
        log.info("ASR worker pid=%d ready", proc.pid)

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        # A fresh context: started during some call, the chore must not log under its id.
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, process: _Process) -> None:
        """Read the process's answers; when it ends, reap it and (unless closing) replace it."""
        try:
            await process.read_answers()
        except Exception:  # it broke the protocol: replaced like a dead one
            log.exception("ASR worker pid=%d sent something unexpected", process.proc.pid)
        if process in self._processes:
            self._processes.remove(process)
        process.kill()
        await process.proc.wait()
        if self._closed:
            return
        self.restarts += 1
        log.warning(
            "ASR worker pid=%d ended (exit %s) with %d calls: replacing it",
            process.proc.pid,
            process.proc.returncode,
            process.calls,
        )
        delay = 0.5
        while not self._closed:
            try:
                await self._spawn()
                return
            except Exception as exc:  # e.g. out of file descriptors: try again later
                log.warning("ASR worker respawn failed (%s): retrying in %.1f s", exc, delay)
                await self._clock.sleep(delay)
                delay = min(delay * 2, 10.0)

    def bind(self) -> _Process | None:
        """The live process with the fewest calls (None while none is: being replaced)."""
        live = [p for p in self._processes if p.alive]
        if not live:
            return None
        process = min(live, key=lambda p: p.calls)
        process.calls += 1
        return process

    def hung(self, process: _Process, why: str) -> None:
        if not process.alive or self._closed:
            return
        log.warning("ASR worker pid=%d %s: killing it", process.proc.pid, why)
        process.kill()  # its watcher replaces it

    def create(self) -> PocketsphinxRecognizer:
        return PocketsphinxRecognizer(self, next(self._stream_ids))

    async def aclose(self) -> None:
        self._closed = True
        for process in self._processes:
            with contextlib.suppress(ConnectionError, RuntimeError):
                process.stdin.close()  # the worker exits at end of input
        tasks = list(self._tasks)
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(2.0):
                await asyncio.gather(*tasks, return_exceptions=True)
        for process in list(self._processes):
            process.kill()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class PocketsphinxRecognizer:
    def __init__(self, engine: PocketsphinxEngine, stream: int) -> None:
        self._engine = engine
        self._stream = stream
        self._process: _Process | None = None
        self._in_utt = False
        self._hypothesis = ""  # the newest partial the worker sent for this utterance
        self.skipped_frames = 0  # audio not sent because the worker was far behind
        self._asked: asyncio.Future[str] | None = None  # the partial asked for, not yet here

    async def open(self) -> None:
        self._process = self._engine.bind()

    def _rebind(self) -> None:
        """At an utterance's start: off a worker that died, onto a live one if there is one
        (a call outlives its worker; without one it has no captions until one is back)."""
        if self._process is not None and self._process.alive:
            return
        if self._process is not None:
            self._process.calls -= 1
        self._process = self._engine.bind()

    def _send(self, kind: int, payload: bytes = b"") -> None:
        if self._process is not None:
            self._process.send(kind, self._stream, payload)

    async def _ask(self, kind: int) -> str:
        if self._process is None:
            raise EngineError("the recognizer is not open")
        answer = self._process.ask(kind, self._stream)
        try:
            async with self._engine._clock.timeout(self._engine.config.answer_timeout_s):
                return await answer
        except TimeoutError:
            self._check_hung()
            raise EngineError("pocketsphinx did not answer in time", retryable=True) from None

    def _check_hung(self) -> None:
        """A worker that owes answers and has shown no progress for hung_after_s is hung; one
        that is only behind (busy with other calls' audio: late answers, progress beats) is
        left alone."""
        process = self._process
        if process is not None and process.stalled_for() > self._engine.config.hung_after_s:
            self._engine.hung(process, "made no progress in time")

    async def start(self) -> None:
        self._rebind()
        self._send(START)
        self._in_utt = True
        self._forget_partial()

    async def push(self, pcm16: Pcm16) -> None:
        if not self._in_utt or self._process is None or not self._process.alive:
            return
        if self._process.stdin.transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
            self.skipped_frames += 1  # the worker is far behind: captions miss this frame
            return
        self._send(PUSH, pcm16.tobytes())

    async def partial(self) -> str:
        """The newest hypothesis at hand (at once); the next one is asked for meanwhile."""
        if not self._in_utt or self._process is None:
            return ""
        asked = self._asked
        if asked is not None and not asked.done():
            self._check_hung()  # a kill fails `asked`
            return self._hypothesis
        if asked is not None and not asked.cancelled() and asked.exception() is None:
            self._hypothesis = asked.result()
        self._asked = self._process.ask(HYP, self._stream)
        return self._hypothesis

    def _forget_partial(self) -> None:
        asked = self._asked
        if asked is not None and not asked.done():
            asked.cancel()  # its answer still comes, in order, and is dropped
        elif asked is not None and not asked.cancelled():
            asked.exception()  # seen: a failed partial is not worth a log line
        self._asked, self._hypothesis = None, ""

    async def finish(self) -> str:
        if not self._in_utt:
            return ""
        self._in_utt = False
        self._forget_partial()
        return await self._ask(FINISH)

    async def cancel(self) -> None:
        if self._in_utt:
            self._in_utt = False
            self._forget_partial()
            self._send(CANCEL)

    async def aclose(self) -> None:
        """Free this call's decoder in its worker and unbind from it."""
        process, self._process = self._process, None
        if process is None:
            return
        self._in_utt = False
        self._forget_partial()
        with contextlib.suppress(ConnectionError, RuntimeError):
            process.send(CANCEL, self._stream)
        process.calls -= 1
