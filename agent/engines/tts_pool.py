"""TTS interface and the worker process that serves it.

`synthesize(text)` is an async iterator of 48 kHz mono int16 chunks, first chunk as soon as
the engine has one. One worker process (agent/engines/tts_worker.py), its voice loaded once,
serves every session with `workers` slots: that many syntheses run at once, each on its own
thread and core, all sharing the one copy of the model (issue 22; bench/tts_pool.py, 3
slots against the 3 worker processes this replaced: RSS idle 268 MB against 646, during 3
syntheses ~450-590 against ~850-990, idle after them ~220-430 against ~850-990; first
chunk alone and 3 at once the same within this machine's noise). Requests and their frames are
multiplexed over the process's pipes by a request id; one reader task per process routes the
frames to their requests (a queue per request: unbounded, it holds one unit of audio at most,
which reply.py reads ahead anyway), so a slot is free again as soon as the worker has sent a
request's last frame, however slowly its consumer reads.

Scheduling (critical path first). Each request carries an `Urgency` (agent/engines/priority.py;
default FIRST_AUDIO): the first audio of a committed reply, a speculative reply's first unit,
or the read-ahead of a later sentence. A free slot goes to the most urgent waiting request,
FIFO within a class; the class is read when the slot is handed out, so a request raised
while it waits (a speculative reply committed, a read-ahead the listener has reached) moves
up. A FIRST_AUDIO request that finds no idle slot pre-empts: the least urgent running
request (READ_AHEAD, then SPECULATIVE; the youngest, which has the least work to lose) that
has not yet delivered audio is sent a cancel and, once the worker confirms it stopped, is
queued again at the head of its class and sent again later, so its consumer just gets its
audio later, never an error. A request that has delivered audio is not cut (its units are
a sentence or so: it is nearly done). Only FIRST_AUDIO pre-empts: speculative work is off the
critical path until its reply is committed, and then it is raised to FIRST_AUDIO. Why this and not the alternatives, measured with real
piper on this 2-vCPU machine: the worker aborts piper's inference mid-sentence
(onnxruntime's terminate flag of that run only, ~10 ms), so a FIRST_AUDIO request starts
within ~10-30 ms instead of waiting up to a whole sentence (0.2-0.6 s unloaded, several
times that with every core busy); the cut request loses at most the part of one sentence
already computed. A reserve (lower classes never take the last idle slot) was not needed:
pre-emption already bounds the FIRST_AUDIO wait, and a reserve would idle a slot that
read-ahead could use. A waiting FIRST_AUDIO request re-checks every `PREEMPT_POLL_S` so a
class raised while waiting also pre-empts. `on_queue_wait(priority, wait_s)` observes every
dispatch (per-class queue waits for /metrics).

A request abandoned mid-stream (barge-in, a discarded speculative reply) sends the worker a
cancel for its id, so that synthesis stops at once (its inference is aborted; the other
slots' go on), and its late frames are dropped; one still waiting leaves the queue at once.

Busy is not hung (agent/engines/progress.py). A request with no audio within the (first)
chunk timeout is not failed while the worker process keeps using CPU: on a loaded machine
the nice'd worker is only slow, and killing it would lose every request it serves and cost
~0.6 s of a busy core to load the voice again. The pool looks again every timeout period;
only a process that used no CPU over a whole period (stopped, deadlocked) is hung, and so is
one that has sent a request nothing for `stall_ceiling_s` (spinning). A FIRST_AUDIO request
still waiting for a slot times out after `acquire_timeout_s`: that is a queue wait, not a
hang.

A worker process that dies, hangs or breaks the protocol is killed and replaced: EVERY
request in flight on it fails with a retryable EngineError (the caller may try again: the
replacement takes them), the restart is logged at WARNING with its reason and counted in
`restarts` (reason → count), and requests wait for the replacement's slots. Closing the pool
fails every stream still being read, kills the process, closes its pipes (unread audio can
never hold a pipe open) and reaps it within a bounded wait.

`cache_phrases(texts)` synthesizes a few fixed phrases once (the filler and the apologies the
reply says when an engine fails: conversation/engine_faults.py); asking for one of them later plays the stored audio
at once, without a worker, so a fault is answered as fast as the end of the turn is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import logging
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.clock import Clock, MonotonicClock
from agent.engines.interfaces import EngineError
from agent.engines.priority import Priority, Urgency
from agent.engines.progress import CpuProgress
from agent.engines.tts_worker import CANCELLED, HEADER

log = logging.getLogger(__name__)

T = TypeVar("T")

# Restart reasons, the keys of TtsWorkerPool.restarts.
DIED = "died"  # the worker exited or closed its pipe
HUNG = "hung"  # no audio, and no CPU used, for a (first) chunk timeout while serving a request
DRAIN_HUNG = "drain_hung"  # an abandoned request did not end, and no CPU was used, likewise
PROTOCOL = "protocol"  # the worker sent a frame it should not have
REASONS = (DIED, HUNG, DRAIN_HUNG, PROTOCOL)
PREEMPT_POLL_S = 0.02  # a waiting request looks this often whether it may pre-empt
_LOST = b"!"  # a pseudo-frame the pool queues for a request whose process is gone


@dataclass(frozen=True)
class TtsPoolConfig:
    engine: str = "piper"  # piper | espeak
    voice: str | None = None  # piper: path to an .onnx voice; espeak: voice name
    workers: int = 3  # syntheses at once (slots of one process): a short one need not wait
    start_timeout_s: float = 60.0
    first_chunk_timeout_s: float = 3.0  # then: hung if the worker used no CPU meanwhile
    chunk_timeout_s: float = 3.0
    stall_ceiling_s: float = 30.0  # no audio this long is hung, CPU used or not (spinning)
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
    granted: asyncio.Future[_Slot] = field(init=False)
    request_id: int = 0  # the id of its current attempt in the worker (0: not sent yet)
    preempted: bool = False  # a cancel was sent to make room for FIRST_AUDIO
    delivered: bool = False  # some of its audio reached the consumer: never pre-empted


@dataclass(eq=False)
class _Slot:
    """One of a process's concurrent syntheses."""

    proc: _Process
    index: int


class _Request:
    """One attempt of a request in the worker: its frames, as the reader routes them."""

    def __init__(self, request_id: int, slot: _Slot) -> None:
        self.id = request_id
        self.slot = slot
        self.frames: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self.ended = asyncio.Event()  # its E or X arrived, or its process was lost
        self.abandoned = False  # its consumer left: audio still arriving is dropped


class _Process:
    def __init__(self, proc: asyncio.subprocess.Process, slots: int) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.slots = [_Slot(self, i) for i in range(slots)]
        self.requests: dict[int, _Request] = {}  # sent and not ended, by id
        self.reader: asyncio.Task[None] | None = None
        self.lost = False  # killed or dead: its slots and requests are gone
        self._head: bytes | None = None  # a frame header read whose payload has not arrived

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    async def read_frame(self) -> tuple[bytes, int, bytes]:
        """The next frame: kind, request id, payload. Safe to cancel at any await:
        `readexactly` consumes nothing until it has all it asked for, and a header already
        read is kept for the next call."""
        if self._head is None:
            self._head = await self.stdout.readexactly(HEADER.size)
        kind, request_id, size = HEADER.unpack(self._head)
        payload = await self.stdout.readexactly(size) if size else b""
        self._head = None
        return kind, request_id, payload

    def send(self, message: dict[str, object]) -> None:
        self.stdin.write(json.dumps(message).encode() + b"\n")

    def cancel(self, request_id: int) -> None:
        """Ask the worker to stop a request (it answers with the request's `E` soon)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.send({"id": request_id, "cancel": True})

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


class _Stalled(Exception):
    """No answer, and the worker process hung (no CPU over a period, or past the ceiling)."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(waited_s)
        self.waited_s = waited_s


class TtsWorkerPool:
    sample_rate_hz = OUT_RATE_HZ

    def __init__(self, config: TtsPoolConfig, clock: Clock | None = None) -> None:
        if config.engine not in ("piper", "espeak"):
            raise ValueError(f"unknown TTS engine {config.engine!r} (piper | espeak)")
        self.config = config
        self._clock = clock or MonotonicClock()
        self.name = config.engine
        self.restarts: dict[str, int] = dict.fromkeys(REASONS, 0)
        """Worker processes killed and replaced, by reason (for metrics)."""
        self._idle: list[_Slot] = []
        self._waiting: list[_Job] = []  # requests waiting for a slot
        self._running: dict[_Slot, _Job] = {}  # requests being synthesized, by slot
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)  # request ids in the worker protocol
        self.preemptions = 0
        """Requests cut before their first audio to let a FIRST_AUDIO one start."""
        self.on_queue_wait: Callable[[Priority, float], None] | None = None
        """Called with a request's class and its wait for a slot, at every dispatch."""
        self._all: set[_Process] = set()  # the worker process (two while one is replaced)
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
        self._adopt(await self._spawn())

    async def _spawn(self) -> _Process:
        args = [sys.executable, "-m", "agent.engines.tts_worker", self.config.engine]
        args += [self.config.voice or "", str(self.config.workers)]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        worker = _Process(proc, self.config.workers)
        self._all.add(worker)
        try:
            async with self._clock.timeout(self.config.start_timeout_s):
                kind, _, payload = await worker.read_frame()
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

    def _adopt(self, worker: _Process) -> None:
        """A started process: read its frames, and offer its slots."""
        worker.reader = self._own(self._read(worker))
        for slot in worker.slots:
            self._release(slot)

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
        message: dict[str, object] = {"text": text}
        message.update((k, v) for k, v in options.items() if v is not None)
        job = _Job(urgency or Urgency(), next(self._seq), self._clock.now())
        while True:  # once, unless the request is pre-empted before its first audio
            slot = await self._acquire(job)
            worker = slot.proc
            request = _Request(next(self._ids), slot)
            job.request_id = request.id
            held: list[Pcm16] = []  # audio read after a pre-emption, until the worker says
            outcome = "abandoned"  # until it ends: the consumer stopped early, or was cancelled
            try:
                if worker.lost:  # lost between the grant and now: its replacement will come
                    outcome = "lost"
                    self._running.pop(slot, None)
                    raise EngineError("TTS worker died", retryable=True)
                worker.requests[request.id] = request
                worker.send({"id": request.id, **message})
                await worker.stdin.drain()
                timeout = self.config.first_chunk_timeout_s
                while True:
                    try:
                        kind, payload = await self._patiently(worker, request.frames.get, timeout)
                    except _Stalled as stall:
                        outcome = HUNG
                        raise EngineError(
                            f"TTS worker sent no audio for {stall.waited_s:g}s", retryable=True
                        ) from None
                    if self._closed:
                        outcome = "lost"
                        raise EngineError("TTS pool is closed")
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
                    else:  # _LOST: its process is gone (replaced already)
                        outcome = "lost"
                        raise EngineError(
                            f"TTS worker restarted ({payload.decode()})", retryable=True
                        )
            except ConnectionError as exc:
                outcome = DIED
                raise EngineError(f"TTS worker died: {exc!r}", retryable=True) from exc
            finally:
                if outcome == "abandoned" and not request.ended.is_set():
                    request.abandoned = True
                    worker.cancel(request.id)
                    self._own(self._drain(worker, request))
                elif outcome in (HUNG, DIED):
                    self._lost(worker, outcome)
                # else: the reader freed the slot at its E or X, or the process is gone
            self.preemptions += 1
            log.debug("TTS request %d pre-empted, queued again", job.seq)
            job.preempted = False
            job.queued_at = self._clock.now()

    async def _patiently(
        self, worker: _Process, wait: Callable[[], Awaitable[T]], timeout_s: float
    ) -> T:
        """`await wait()`, for as long as the worker is busy: every `timeout_s` without an
        answer, it goes on waiting if the process used CPU meanwhile (slow, not hung), up to
        `stall_ceiling_s` in all; else raises _Stalled."""
        progress = CpuProgress(worker.pid)
        waited_s = 0.0
        while True:
            try:
                async with self._clock.timeout(timeout_s):
                    return await wait()
            except TimeoutError:
                waited_s += timeout_s
                if waited_s >= self.config.stall_ceiling_s or not progress.advanced():
                    raise _Stalled(waited_s) from None
                log.debug("TTS worker pid=%d busy: no answer for %.1f s", worker.pid, waited_s)

    async def _read(self, worker: _Process) -> None:
        """Route the worker's frames to their requests; a request's E or X frees its slot."""
        try:
            while True:
                kind, request_id, payload = await worker.read_frame()
                request = worker.requests.get(request_id)
                if request is None or kind not in (b"A", b"E", b"X"):
                    log.warning("TTS worker frame %r for request %d", kind, request_id)
                    self._lost(worker, PROTOCOL)
                    return
                if kind == b"A":
                    if not request.abandoned:
                        request.frames.put_nowait((kind, payload))
                    continue
                del worker.requests[request_id]
                request.frames.put_nowait((kind, payload))
                request.ended.set()
                self._running.pop(request.slot, None)
                self._release(request.slot)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._lost(worker, DIED)

    async def _acquire(self, job: _Job) -> _Slot:
        """A slot for `job`: at once if one is idle and nothing more urgent waits, else
        when `_release` hands it one (most urgent first, FIFO within a class). While it
        waits it looks, every `PREEMPT_POLL_S` (its class may be raised meanwhile), for
        running work of a lower class to pre-empt. Only a FIRST_AUDIO request times out
        (`acquire_timeout_s` after it became one)."""
        if self._idle and not any(self._before(w, job) for w in self._waiting):
            slot = self._idle.pop()
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
                        raise EngineError("no TTS slot free in time (all busy)", retryable=True)
                    with contextlib.suppress(TimeoutError):
                        async with self._clock.timeout(min(PREEMPT_POLL_S, left)):
                            await asyncio.shield(job.granted)
            except BaseException:
                if job in self._waiting:
                    self._waiting.remove(job)  # it leaves the queue at once
                elif job.granted.done():
                    self._release(job.granted.result())  # granted as it left: pass it on
                raise
            slot = job.granted.result()
        self._running[slot] = job
        if self.on_queue_wait is not None:
            self.on_queue_wait(job.urgency.priority, self._clock.now() - job.queued_at)
        return slot

    @staticmethod
    def _before(a: _Job, b: _Job) -> bool:
        """`a` is served before `b`: more urgent, or as urgent and older."""
        return (a.urgency.priority, a.seq) < (b.urgency.priority, b.seq)

    def _release(self, slot: _Slot) -> None:
        """A slot is free: to the most urgent waiting request, else idle (a lost process's
        slots are gone)."""
        if slot.proc.lost:
            return
        waiting = [j for j in self._waiting if not j.granted.done()]
        if waiting:
            job = min(waiting, key=lambda j: (j.urgency.priority, j.seq))
            self._waiting.remove(job)
            job.granted.set_result(slot)
        else:
            self._idle.append(slot)

    def _preempt_for(self, job: _Job) -> None:
        """If `job` is FIRST_AUDIO and no slot is idle, cut the least urgent running
        request that has not delivered audio and is of a lower class (READ_AHEAD first,
        then SPECULATIVE; the youngest of a class: it has the least work to lose), unless
        enough pre-emptions are already under way for every FIRST_AUDIO request waiting."""
        if job.urgency.priority != Priority.FIRST_AUDIO or self._idle:
            return
        urgent = sum(1 for j in self._waiting if j.urgency.priority == Priority.FIRST_AUDIO)
        cutting = sum(1 for j in self._running.values() if j.preempted)
        if cutting >= urgent:
            return
        victims = [
            (s, j)
            for s, j in self._running.items()
            if not j.preempted
            and not j.delivered
            and j.request_id
            and j.urgency.priority > Priority.FIRST_AUDIO
        ]
        if not victims:
            return
        slot, victim = max(victims, key=lambda sj: (sj[1].urgency.priority, sj[1].seq))
        victim.preempted = True
        log.debug(
            "TTS request %d (%s) pre-empted for %d (first audio)",
            victim.seq,
            victim.urgency.priority.label,
            job.seq,
        )
        slot.proc.cancel(victim.request_id)

    async def _drain(self, worker: _Process, request: _Request) -> None:
        """Watch an abandoned (and cancelled) request until the worker ends it (the reader
        then frees its slot); a worker that hangs instead is replaced."""
        try:
            await self._patiently(worker, request.ended.wait, self.config.chunk_timeout_s)
        except _Stalled:
            self._lost(worker, DRAIN_HUNG)

    def _lost(self, worker: _Process, reason: str) -> None:
        """The process is dead or must die: every request in flight on it fails (retryable),
        its slots go, and (unless the pool is closing) it is killed and replaced. Once per
        process: the first reason found is the one counted."""
        if worker.lost:
            return
        worker.lost = True
        for request in worker.requests.values():
            request.frames.put_nowait((_LOST, reason.encode()))
            request.ended.set()
        worker.requests.clear()
        for slot in worker.slots:
            self._running.pop(slot, None)
            if slot in self._idle:
                self._idle.remove(slot)
        if worker.reader is not None and worker.reader is not asyncio.current_task():
            worker.reader.cancel()
        if self._closed:
            return  # aclose kills and reaps it
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
        log.warning(
            "TTS worker pid=%d restarted: %s (restarts so far: %s)",
            worker.pid,
            reason,
            ", ".join(f"{k}={v}" for k, v in self.restarts.items() if v) or "none",
        )
        self._discard(worker)
        self._own(self._respawn())

    async def _respawn(self) -> None:
        """Start a replacement, retrying with backoff: a failed start must not leave the
        pool without a worker for good (every synthesize would wait for a slot that never
        comes)."""
        delay_s = 0.5
        while not self._closed:
            try:
                self._adopt(await self._spawn())
                return
            except EngineError:
                log.exception("could not replace the TTS worker: retrying in %.1f s", delay_s)
            await self._clock.sleep(delay_s)
            delay_s = min(delay_s * 2, 30.0)

    def _discard(self, worker: _Process) -> None:
        self._all.discard(worker)
        worker.kill()
        worker.close_pipes()
        if not self._closed:  # after aclose, which reaped every worker, nothing owns a task
            self._own(self._reaped(worker))

    async def _reaped(self, worker: _Process) -> None:
        """Wait (bounded) until a killed worker, its pipes closed, is gone."""
        try:
            async with self._clock.timeout(self.config.reap_timeout_s):
                await worker.proc.wait()
        except TimeoutError:
            log.warning(
                "TTS worker pid=%d not reaped within %gs",
                worker.pid,
                self.config.reap_timeout_s,
            )

    def _own(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a pool chore as a task the pool owns (cancelled and awaited in aclose), in a
        fresh context: started during some call, it must not log under that call's id."""
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Fail every stream still being read, stop the worker, busy or not, and reap it;
        never waits on a pipe that cannot drain, and returns within about
        `reap_timeout_s`."""
        self._closed = True
        workers, self._all = list(self._all), set()
        for worker in workers:
            self._lost(worker, "closed")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in workers:
            worker.kill()
            worker.close_pipes()
        await asyncio.gather(*(self._reaped(w) for w in workers))
