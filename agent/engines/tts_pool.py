"""TTS interface and the worker-process pool that serves it.

`synthesize(text)` is an async iterator of 48 kHz mono int16 chunks, first chunk as soon as
the engine has one. The pool keeps N worker processes (agent/engines/tts_worker.py), each with
its voice loaded once, shared by every session.

Scheduling (critical path first). Each request carries an `Urgency` (agent/engines/priority.py;
default FIRST_AUDIO): the first audio of a committed reply, a speculative reply's first unit,
or the read-ahead of a later sentence. A free worker goes to the most urgent waiting request,
FIFO within a class; the class is read when the worker is handed out, so a request raised
while it waits (a speculative reply committed, a read-ahead the listener has reached) moves
up. A FIRST_AUDIO request that finds no idle worker pre-empts: the least urgent running
request (READ_AHEAD, then SPECULATIVE; the youngest, which has the least work to lose) that
has not yet delivered audio is sent a cancel and, once the worker confirms it stopped, is
queued again at the head of its class and sent again later, so its consumer just gets its
audio later, never an error. A request that has delivered audio is not cut (its units are
a sentence or so: it is nearly done). Only FIRST_AUDIO pre-empts: speculative work is off the
critical path until its reply is committed, and then it is raised to FIRST_AUDIO. Why this and not the alternatives, measured with real
piper on this 2-vCPU machine: the worker aborts piper's inference mid-sentence
(onnxruntime's terminate flag, ~10 ms), so a FIRST_AUDIO request starts within ~10-30 ms
instead of waiting up to a whole sentence (0.2-0.6 s unloaded, several times that with every
core busy); the cut request loses at most the part of one sentence already computed. Killing
and respawning a worker would cost ~0.65 s of a busy core to load the voice, more than the
sentence it saves. A reserve (lower classes never take the last idle worker) was not needed:
pre-emption already bounds the FIRST_AUDIO wait, and a reserve would idle a worker that
read-ahead could use. A waiting FIRST_AUDIO request re-checks every `PREEMPT_POLL_S` so a
class raised while waiting also pre-empts. `on_queue_wait(priority, wait_s)` observes every
dispatch (per-class queue waits for /metrics).

A request abandoned mid-stream (barge-in, a discarded speculative reply) sends the worker a
cancel, so it stops at once (piper's inference is aborted), and the pool reads and drops what
is still in the pipe before the worker serves again; one still waiting leaves the queue at
once. Frames are read so that a cancellation
landing between a frame's header and its payload loses nothing: the stream never falls out of
step. A worker that dies, hangs or breaks the protocol is killed and replaced; every restart
is logged at WARNING with its reason and counted in `restarts` (reason → count), and the
request fails with a retryable EngineError. Closing the pool kills the workers, closes their
pipes (unread audio can never hold a pipe open) and reaps them within a bounded wait.

`cache_phrases(texts)` synthesizes a few fixed phrases once (the filler and the apologies the
turn manager says when an engine fails); asking for one of them later plays the stored audio
at once, without a worker, so a fault is answered as fast as the end of the turn is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
import struct
import sys
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.clock import Clock, MonotonicClock
from agent.engines.interfaces import EngineError
from agent.engines.priority import Priority, Urgency
from agent.engines.tts_worker import CANCELLED

log = logging.getLogger(__name__)

# Restart reasons, the keys of TtsWorkerPool.restarts.
DIED = "died"  # the worker exited or closed its pipe
HUNG = "hung"  # no audio within the (first) chunk timeout while serving a request
DRAIN_HUNG = "drain_hung"  # an abandoned request did not end within the chunk timeout
PROTOCOL = "protocol"  # the worker sent a frame it should not have
REASONS = (DIED, HUNG, DRAIN_HUNG, PROTOCOL)
PREEMPT_POLL_S = 0.02  # a waiting request looks this often whether it may pre-empt


@dataclass(frozen=True)
class TtsPoolConfig:
    engine: str = "piper"  # piper | espeak
    voice: str | None = None  # piper: path to an .onnx voice; espeak: voice name
    workers: int = 3  # one thread each: a short sentence need not wait behind a long one
    start_timeout_s: float = 60.0
    first_chunk_timeout_s: float = 3.0
    chunk_timeout_s: float = 3.0
    acquire_timeout_s: float = 5.0
    reap_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("first_chunk_timeout_s", "chunk_timeout_s", "reap_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TTS {name} must be positive")


@dataclass(eq=False)
class _Job:
    """One synthesize request, as the scheduler sees it."""

    urgency: Urgency
    seq: int  # arrival order: FIFO within a class (kept when re-queued after pre-emption)
    queued_at: float
    granted: asyncio.Future[_Worker] = field(init=False)
    preempted: bool = False  # a cancel was sent to make room for FIRST_AUDIO
    delivered: bool = False  # some of its audio reached the consumer: never pre-empted


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self._head: bytes | None = None  # a frame header read whose payload has not arrived

    async def read_frame(self) -> tuple[bytes, bytes]:
        """The next frame. Safe to cancel at any await: `readexactly` consumes nothing until
        it has all it asked for, and a header already read is kept for the next call."""
        if self._head is None:
            self._head = await self.stdout.readexactly(5)
        (size,) = struct.unpack(">I", self._head[1:])
        payload = await self.stdout.readexactly(size) if size else b""
        kind, self._head = self._head[:1], None
        return kind, payload

    def send(self, message: dict[str, object]) -> None:
        self.stdin.write(json.dumps(message).encode() + b"\n")

    def cancel(self) -> None:
        """Ask the worker to stop the running request (it answers with its `E` soon)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.send({"cancel": True})

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def close_pipes(self) -> None:
        """Drop our ends of the pipes. `proc.wait()` returns only once every pipe has closed,
        and a pipe whose reader is paused on unread audio never would; asyncio has no public
        call for this, hence the transport."""
        transport = getattr(self.proc, "_transport", None)
        if isinstance(transport, asyncio.SubprocessTransport):
            transport.close()
        else:  # pragma: no cover - asyncio internals changed: at least close stdin
            self.stdin.close()


class TtsWorkerPool:
    sample_rate_hz = OUT_RATE_HZ

    def __init__(self, config: TtsPoolConfig, clock: Clock | None = None) -> None:
        if config.engine not in ("piper", "espeak"):
            raise ValueError(f"unknown TTS engine {config.engine!r} (piper | espeak)")
        self.config = config
        self._clock = clock or MonotonicClock()
        self.name = config.engine
        self.restarts: dict[str, int] = dict.fromkeys(REASONS, 0)
        """Workers killed and replaced, by reason (for metrics)."""
        self._idle: list[_Worker] = []
        self._waiting: list[_Job] = []  # requests waiting for a worker
        self._running: dict[_Worker, _Job] = {}  # requests being served, by worker
        self._seq = itertools.count(1)
        self.preemptions = 0
        """Requests cut before their first audio to let a FIRST_AUDIO one start."""
        self.on_queue_wait: Callable[[Priority, float], None] | None = None
        """Called with a request's class and its wait for a worker, at every dispatch."""
        self._all: set[_Worker] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._phrases: dict[str, list[Pcm16]] = {}

    async def cache_phrases(self, texts: Iterable[str]) -> None:
        """Synthesize `texts` now and keep their audio (a failure leaves a phrase uncached)."""
        for text in texts:
            try:
                self._phrases[text] = [pcm async for pcm in self.synthesize(text)]
            except EngineError as exc:
                log.warning("could not cache the phrase %r: %s", text, exc)

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.config.workers)))
        for w in workers:
            self._release(w)

    async def _spawn(self) -> _Worker:
        args = [sys.executable, "-m", "agent.engines.tts_worker", self.config.engine]
        args.append(self.config.voice or "")
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        worker = _Worker(proc)
        self._all.add(worker)
        try:
            async with self._clock.timeout(self.config.start_timeout_s):
                kind, payload = await worker.read_frame()
            if kind != b"R":
                raise EngineError(f"TTS worker sent {kind!r} instead of ready")
        except (TimeoutError, asyncio.IncompleteReadError, EngineError) as exc:
            self._discard(worker)
            raise EngineError(f"{self.config.engine} TTS worker failed to start: {exc!r}") from exc
        except BaseException:
            self._discard(worker)
            raise
        log.info("TTS worker pid=%d ready: %s", proc.pid, payload.decode())
        return worker

    async def synthesize(
        self,
        text: str,
        *,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
        urgency: Urgency | None = None,
    ) -> AsyncGenerator[Pcm16, None]:
        """Speak `text`. The options are piper's (tts_worker.py) and are sent only when given:
        `length_scale` < 1 speaks faster; `noise_scale=0, noise_w_scale=0` makes piper's
        output identical on every call (the harness's reproducible recordings). `urgency`
        (default FIRST_AUDIO) says when it is served: see the module docstring."""
        if self._closed:
            raise EngineError("TTS pool is closed")
        cached = self._phrases.get(text)
        if cached is not None and length_scale is noise_scale is noise_w_scale is None:
            for pcm in cached:
                yield pcm.copy()
            return
        options = {
            "length_scale": length_scale,
            "noise_scale": noise_scale,
            "noise_w_scale": noise_w_scale,
        }
        request: dict[str, object] = {"text": text}
        request.update((k, v) for k, v in options.items() if v is not None)
        job = _Job(urgency or Urgency(), next(self._seq), self._clock.now())
        while True:  # once, unless the request is pre-empted before its first audio
            worker = await self._acquire(job)
            held: list[Pcm16] = []  # audio read after a pre-emption, until the worker says
            outcome = "abandoned"  # until it ends: the consumer stopped early, or was cancelled
            try:
                worker.send(request)
                await worker.stdin.drain()
                timeout = self.config.first_chunk_timeout_s
                while True:
                    try:
                        async with self._clock.timeout(timeout):
                            kind, payload = await worker.read_frame()
                    except TimeoutError:
                        outcome = HUNG
                        raise EngineError(
                            f"TTS worker sent no audio for {timeout:g}s", retryable=True
                        ) from None
                    timeout = self.config.chunk_timeout_s
                    if kind == b"A":
                        pcm = np.frombuffer(payload, np.int16).copy()
                        if job.preempted:
                            held.append(pcm)  # complete or cut? the `E` will say
                            continue
                        job.delivered = True
                        yield pcm
                    elif kind == b"E":
                        outcome = "done"
                        if job.preempted and payload == CANCELLED:
                            break  # cut before any audio reached the consumer: queue again
                        for pcm in held:  # the pre-emption came too late: it is complete
                            yield pcm
                        return
                    elif kind == b"X":
                        outcome = "done"
                        raise EngineError(f"TTS failed for {text[:40]!r}: {payload.decode()}")
                    else:
                        outcome = PROTOCOL
                        raise EngineError(f"TTS worker protocol error: {kind!r}", retryable=True)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                outcome = DIED
                raise EngineError(f"TTS worker died: {exc!r}", retryable=True) from exc
            finally:
                self._running.pop(worker, None)
                if outcome == "done":
                    self._release(worker)
                elif outcome == "abandoned":
                    worker.cancel()
                    self._own(self._drain(worker))
                else:
                    self._replace(worker, outcome)
            self.preemptions += 1
            log.debug("TTS request %d pre-empted, queued again", job.seq)
            job.preempted = False
            job.queued_at = self._clock.now()

    async def _acquire(self, job: _Job) -> _Worker:
        """A worker for `job`: at once if one is idle and nothing more urgent waits, else
        when `_release` hands it one (most urgent first, FIFO within a class). While it
        waits it looks, every `PREEMPT_POLL_S` (its class may be raised meanwhile), for
        running work of a lower class to pre-empt. Only a FIRST_AUDIO request times out
        (`acquire_timeout_s` after it became one)."""
        if self._idle and not any(self._before(w, job) for w in self._waiting):
            worker = self._idle.pop()
        else:
            job.granted = asyncio.get_running_loop().create_future()
            self._waiting.append(job)
            deadline = self._clock.now() + self.config.acquire_timeout_s
            try:
                while not job.granted.done():
                    if self._closed:
                        raise EngineError("TTS pool is closed")
                    self._preempt_for(job)
                    if job.urgency.priority != Priority.FIRST_AUDIO:
                        # Lower classes may wait as long as their owner lets them (it
                        # raises or cancels them): the deadline runs from first audio on.
                        deadline = self._clock.now() + self.config.acquire_timeout_s
                    left = deadline - self._clock.now()
                    if left <= 0:
                        raise EngineError(
                            "no TTS worker free in time (all busy)", retryable=True
                        )
                    with contextlib.suppress(TimeoutError):
                        async with self._clock.timeout(min(PREEMPT_POLL_S, left)):
                            await asyncio.shield(job.granted)
            except BaseException:
                if job in self._waiting:
                    self._waiting.remove(job)  # it leaves the queue at once
                elif job.granted.done():
                    self._release(job.granted.result())  # granted as it left: pass it on
                raise
            worker = job.granted.result()
        self._running[worker] = job
        if self.on_queue_wait is not None:
            self.on_queue_wait(job.urgency.priority, self._clock.now() - job.queued_at)
        return worker

    @staticmethod
    def _before(a: _Job, b: _Job) -> bool:
        """`a` is served before `b`: more urgent, or as urgent and older."""
        return (a.urgency.priority, a.seq) < (b.urgency.priority, b.seq)

    def _release(self, worker: _Worker) -> None:
        """A worker is free: to the most urgent waiting request, else idle."""
        waiting = [j for j in self._waiting if not j.granted.done()]
        if waiting:
            job = min(waiting, key=lambda j: (j.urgency.priority, j.seq))
            self._waiting.remove(job)
            job.granted.set_result(worker)
        else:
            self._idle.append(worker)

    def _preempt_for(self, job: _Job) -> None:
        """If `job` is FIRST_AUDIO and no worker is idle, cut the least urgent running
        request that has not delivered audio and is of a lower class (READ_AHEAD first,
        then SPECULATIVE; the youngest of a class: it has the least work to lose), unless
        enough pre-emptions are already under way for every FIRST_AUDIO request waiting."""
        if job.urgency.priority != Priority.FIRST_AUDIO or self._idle:
            return
        urgent = sum(
            1 for j in self._waiting if j.urgency.priority == Priority.FIRST_AUDIO
        )
        cutting = sum(1 for j in self._running.values() if j.preempted)
        if cutting >= urgent:
            return
        victims = [
            (w, j)
            for w, j in self._running.items()
            if not j.preempted and not j.delivered and j.urgency.priority > Priority.FIRST_AUDIO
        ]
        if not victims:
            return
        worker, victim = max(victims, key=lambda wj: (wj[1].urgency.priority, wj[1].seq))
        victim.preempted = True
        log.debug(
            "TTS request %d (%s) pre-empted for %d (first audio)",
            victim.seq,
            victim.urgency.priority.label,
            job.seq,
        )
        worker.cancel()

    async def _drain(self, worker: _Worker) -> None:
        """Read and drop the rest of an abandoned (and cancelled) request, then return the
        worker; a worker that does not finish it in time is replaced."""
        try:
            while True:
                async with self._clock.timeout(self.config.chunk_timeout_s):
                    kind, _ = await worker.read_frame()
                if kind in (b"E", b"X"):
                    self._release(worker)
                    return
                if kind != b"A":
                    self._replace(worker, PROTOCOL)
                    return
        except TimeoutError:
            self._replace(worker, DRAIN_HUNG)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._replace(worker, DIED)

    def _replace(self, worker: _Worker, reason: str) -> None:
        if self._closed:
            self._discard(worker)
            return
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
        log.warning(
            "TTS worker pid=%d restarted: %s (restarts so far: %s)",
            worker.proc.pid,
            reason,
            ", ".join(f"{k}={v}" for k, v in self.restarts.items() if v) or "none",
        )
        self._discard(worker)
        self._own(self._respawn())

    async def _respawn(self) -> None:
        """Start a replacement, retrying with backoff: a failed start must not shrink the
        pool for good (every synthesize would then wait for a worker that never comes)."""
        delay_s = 0.5
        while not self._closed:
            try:
                self._release(await self._spawn())
                return
            except EngineError:
                log.exception("could not replace a TTS worker: retrying in %.1f s", delay_s)
            await self._clock.sleep(delay_s)
            delay_s = min(delay_s * 2, 30.0)

    def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()
        worker.close_pipes()
        if not self._closed:  # after aclose, which reaped every worker, nothing owns a task
            self._own(self._reaped(worker))

    async def _reaped(self, worker: _Worker) -> None:
        """Wait (bounded) until a killed worker, its pipes closed, is gone."""
        try:
            async with self._clock.timeout(self.config.reap_timeout_s):
                await worker.proc.wait()
        except TimeoutError:
            log.warning(
                "TTS worker pid=%d not reaped within %gs",
                worker.proc.pid,
                self.config.reap_timeout_s,
            )

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a pool chore as a task the pool owns (cancelled and awaited in aclose), in a
        fresh context: started during some call, it must not log under that call's id."""
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop every worker, busy or not, and reap it; never waits on a pipe that cannot
        drain, and returns within about `reap_timeout_s`."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()
            worker.close_pipes()
        await asyncio.gather(*(self._reaped(w) for w in workers))
