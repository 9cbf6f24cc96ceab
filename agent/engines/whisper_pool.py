"""The accurate final pass as a shared engine: whisper tiny.en in worker processes, batched.

Every call's passes wait in one line and run in `workers` processes (whisper_worker.py), each
with its own copy of the model, never in the server's process (CTranslate2 holds the GIL for
part of each pass, which in threads slowed the event loop carrying every call's audio).

Order. A pass carries an `Urgency` (agent/engines/priority.py): TURN_FINAL holds a turn open
(the reply cannot start before it), SPECULATIVE was started in the pause and may be
discarded. A free worker takes the most urgent class waiting, oldest first; the class is
read when the worker chooses, so a speculative pass raised to TURN_FINAL at the end of its
turn goes ahead of every speculative one. A pass cancelled while it waits leaves the line
at once and never runs; one cancelled while running finishes in its worker and is dropped.
The line is bounded: beyond `max_queue` waiting passes, `transcribe` fails at once
(retryable) and the listener falls back to the streaming recognizer's final.

Batches. When a worker is free and several passes of the most urgent class wait (up to
`max_batch`), it transcribes them together: one encode and one `generate` over the stacked
features (whisper_final.transcribe_batch), each result back to its caller. A batch holds one
class only: a TURN_FINAL pass never waits for speculative batch-mates. Nothing waits to
fill a batch: a pass that finds a worker free starts alone at once.

Deaths. A worker that dies is replaced alone; the other workers go on serving. The passes it
was running are run again once on a live worker when there is one; with none (one worker)
they fail retryable at once, since the listener's fallback (the streaming final) is ready
now and a new worker needs ~1 s to load.

Measured (bench/whisper_batch.py, 2 cores shared with a busy machine, so ratios only; N
passes given at once, wall ms / passes per s):

    layout                   N=1        N=4         N=8
    1 process x 2 threads    250 / 4.0  1188 / 3.4  2267 / 3.5   batched
                             256 / 3.9  1486 / 2.7  2515 / 3.2   one by one
    2 processes x 1 thread   236 / 4.2  1543 / 2.6  2567 / 3.1   batched
                             517 / 1.9  1753 / 2.3  3516 / 2.3   one by one

A batch's passes all wait for its end, so batching lowers the wall time and raises passes/s
but not every pass's latency (mean 1127 vs 872 ms at N=4): `max_batch` is 4. RSS per worker:
160 MB idle, ~170 MB after single passes, ~240 MB after batches of 8 (scratch buffers). The
old pool: 2 × 185 MB + a 12 MB resource tracker, and ctranslate2 in the server (+20 MB).
The choice:

- ONE process with `cpu_threads=2`, serving batches, is the default. At 1 pass it is as fast
  as a process with one thread (a little faster); at 4 and 8 waiting passes, one batch
  beats passes run one by one (and two 1-thread processes, which share the same two
  cores); and it holds one copy of the model instead of two (~180 MB RSS per worker).
- The cost: while it runs a batch, a TURN_FINAL pass that arrives waits for it (at most
  one batch of `max_batch` passes), and a death fails its passes (retryable) instead of
  re-running them. `--whisper-workers 2 --whisper-threads 1` restores two processes.

Workers are plain subprocesses (`python -m agent.engines.whisper_worker`), not a
ProcessPoolExecutor: a dead executor worker breaks the whole executor and every call lost
the accurate pass while all of them started again; and a spawned multiprocessing child
imports the server's main module (aiohttp, aiortc, ...) before its own code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from agent.audio import ASR_RATE_HZ, Pcm16
from agent.clock import Clock, MonotonicClock
from agent.engines import whisper_worker as proto
from agent.engines.interfaces import EngineError, Transcription
from agent.engines.priority import Priority, Urgency

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhisperConfig:
    workers: int = 1  # worker processes (each a copy of the model, ~180 MB)
    cpu_threads: int = 2  # CTranslate2 threads per worker
    window_s: float = 10.0  # minimum encoder window (shorter windows make tiny.en loop)
    max_queue: int = 32
    no_speech_threshold: float = 0.6  # '' when whisper thinks there was no speech
    max_batch: int = 4  # passes one worker transcribes together
    start_timeout_s: float = 60.0  # a worker loads and warms its model within this

    def __post_init__(self) -> None:
        if min(self.workers, self.cpu_threads, self.max_queue, self.max_batch) < 1:
            raise ValueError("whisper workers, cpu_threads, max_queue and max_batch must be >= 1")
        if not 0 <= self.window_s <= 30:
            raise ValueError("whisper window_s must be within 0..30")


@dataclass(eq=False)
class _Pass:
    pcm16: Pcm16
    urgency: Urgency
    seq: int
    queued_at: float
    future: asyncio.Future[Transcription]
    started_at: float = 0.0
    runs: int = 0  # times it was sent to a worker that then died


class _WorkerGone(Exception):
    def __init__(self, sent: bool) -> None:
        super().__init__("the whisper worker ended")
        self.sent = sent  # the batch reached it (it may have been running it)


class _ModelError(Exception):
    pass


class _Worker:
    """One worker process and its pipes; one batch at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin = proc.stdin
        self._stdout = proc.stdout

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read_frame(self) -> tuple[bytes, bytes]:
        head = await self._stdout.readexactly(proto.HEADER.size)
        kind, size = proto.HEADER.unpack(head)
        return kind, await self._stdout.readexactly(size)

    async def run(self, batch: list[Pcm16]) -> list[dict[str, Any]]:
        """whisper_final.Transcript fields of each utterance, in order."""
        payload = proto.pack_batch(batch)
        try:
            self._stdin.write(proto.HEADER.pack(proto.BATCH, len(payload)) + payload)
            await self._stdin.drain()
        except (ConnectionError, RuntimeError) as exc:  # a closed pipe
            raise _WorkerGone(sent=False) from exc
        try:
            kind, body = await self.read_frame()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _WorkerGone(sent=True) from exc
        if kind == proto.ERROR:
            raise _ModelError(json.loads(body)["error"])
        if kind != proto.RESULTS:
            raise _WorkerGone(sent=True)  # out of step: replaced like a dead one
        results = json.loads(body)
        if not isinstance(results, list) or len(results) != len(batch):
            raise _WorkerGone(sent=True)
        return results

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended on its own
                self.proc.kill()
        await self.proc.wait()


@dataclass(eq=False)
class _Slot:
    """A place for one worker: its process (None while a new one starts) and its batch."""

    index: int
    worker: _Worker | None = None
    batch: list[_Pass] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class WhisperPool:
    name = "whisper-tiny.en"
    sample_rate_hz = ASR_RATE_HZ

    def __init__(self, config: WhisperConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or WhisperConfig()
        self._clock = clock or MonotonicClock()
        self._waiting: list[_Pass] = []
        self._slots: list[_Slot] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = itertools.count()
        self._running = False
        self.passes = 0  # run to the end (for /metrics and the benchmarks)
        self.restarts = 0  # worker processes replaced after one died
        self.reruns = 0  # passes run again on another worker after theirs died
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # size → batches
        self.served: collections.Counter[str] = collections.Counter()  # class label → passes

    @property
    def worker_pids(self) -> list[int]:
        return [s.worker.pid for s in self._slots if s.worker is not None]

    @property
    def waiting(self) -> int:
        """Passes in line (not yet given to a worker)."""
        return len(self._waiting)

    async def start(self) -> None:
        cfg = self.config
        t0 = self._clock.now()
        spawned = await asyncio.gather(
            *(self._spawn() for _ in range(cfg.workers)), return_exceptions=True
        )
        failed = [r for r in spawned if isinstance(r, BaseException)]
        if failed:
            for r in spawned:
                if isinstance(r, _Worker):
                    await r.kill()
            raise EngineError(f"whisper workers failed to start: {failed[0]!r}") from failed[0]
        self._slots = [
            _Slot(i, w) for i, w in enumerate(r for r in spawned if isinstance(r, _Worker))
        ]
        loop = asyncio.get_running_loop()
        # A fresh context: started during some call, the loop must not log under its id.
        self._tasks = [
            loop.create_task(
                self._serve(s), name=f"whisper-slot-{s.index}", context=contextvars.Context()
            )
            for s in self._slots
        ]
        self._running = True
        log.info(
            "whisper tiny.en ready in %.2f s: %d processes × %d threads, %.0f s window, "
            "batches of up to %d",
            self._clock.now() - t0,
            cfg.workers,
            cfg.cpu_threads,
            cfg.window_s,
            cfg.max_batch,
        )

    async def _spawn(self) -> _Worker:
        cfg = self.config
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.engines.whisper_worker",
            str(os.getpid()),
            str(cfg.cpu_threads),
            str(cfg.window_s),
            str(cfg.no_speech_threshold),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = _Worker(proc)
        try:
            async with self._clock.timeout(cfg.start_timeout_s):
                kind, _ = await worker.read_frame()
            if kind != proto.READY:
                raise EngineError(f"the whisper worker sent {kind!r} instead of ready")
        except BaseException:
            await worker.kill()
            raise
        log.info("whisper worker pid=%d ready", worker.pid)
        return worker

    async def transcribe(self, pcm16: Pcm16, urgency: Urgency | None = None) -> Transcription:
        """The accurate pass over one utterance; `urgency` (default TURN_FINAL) may be raised
        by the caller while the pass waits."""
        if not self._running:
            raise EngineError("whisper is not running")
        if len(self._waiting) >= self.config.max_queue:
            raise EngineError("whisper is busy: too many passes waiting", retryable=True)
        loop = asyncio.get_running_loop()
        job = _Pass(
            pcm16,
            urgency or Urgency(Priority.TURN_FINAL),
            next(self._seq),
            self._clock.now(),
            loop.create_future(),
        )
        self._waiting.append(job)
        self._dispatch()
        try:
            return await job.future
        finally:
            if job in self._waiting:  # cancelled while waiting: out of line now
                self._waiting.remove(job)

    def _dispatch(self) -> None:
        """Give a batch to every free worker while passes wait."""
        for slot in self._slots:
            if slot.worker is None or slot.batch:
                continue
            batch = self._take()
            if not batch:
                return
            now = self._clock.now()
            for job in batch:
                job.started_at = now
            slot.batch = batch
            slot.wake.set()

    def _take(self) -> list[_Pass]:
        """The next batch: the most urgent class waiting, oldest first."""
        self._waiting = [j for j in self._waiting if not j.future.done()]
        if not self._waiting:
            return []
        top = min(j.urgency.priority for j in self._waiting)
        same = sorted((j for j in self._waiting if j.urgency.priority == top), key=lambda j: j.seq)
        batch = same[: self.config.max_batch]
        taken = set(map(id, batch))
        self._waiting = [j for j in self._waiting if id(j) not in taken]
        return batch

    async def _serve(self, slot: _Slot) -> None:
        """Run the batches given to this slot's worker; replace the worker when it dies."""
        while True:
            await slot.wake.wait()
            slot.wake.clear()
            batch, worker = slot.batch, slot.worker
            if not batch or worker is None:
                continue
            try:
                results = await worker.run([j.pcm16 for j in batch])
            except _WorkerGone as exc:
                await self._replace(slot, worker, exc.sent)
                continue
            except _ModelError as exc:  # a model failure fails this batch, not the pool
                log.error("whisper batch of %d failed: %s", len(batch), exc)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(EngineError(f"whisper failed: {exc}"))
            else:
                self._deliver(batch, results)
            slot.batch = []
            self._dispatch()

    def _deliver(self, batch: list[_Pass], results: list[dict[str, Any]]) -> None:
        self.batch_sizes[len(batch)] += 1
        for job, result in zip(batch, results, strict=True):
            self.passes += 1
            self.served[job.urgency.priority.label] += 1
            if not job.future.done():
                job.future.set_result(
                    Transcription(
                        str(result["text"]),
                        queue_wait_s=job.started_at - job.queued_at,
                        compute_s=float(result["encode_s"]) + float(result["decode_s"]),
                    )
                )

    async def _replace(self, slot: _Slot, dead: _Worker, sent: bool) -> None:
        """Re-run or fail the dead worker's batch, then start a new worker in its place."""
        batch, slot.batch, slot.worker = slot.batch, [], None
        await dead.kill()  # reaped (and killed, if it only broke the protocol)
        log.warning(
            "whisper worker pid=%d ended (exit %s) with %d passes: replacing it",
            dead.pid,
            dead.proc.returncode,
            len(batch),
        )
        self.restarts += 1
        others = any(s.worker is not None for s in self._slots)
        for job in batch:
            if job.future.done():
                continue
            job.runs += sent
            if not sent or (others and job.runs <= 1):
                self.reruns += sent
                self._waiting.append(job)  # its seq keeps it ahead of later passes
            else:
                job.future.set_exception(
                    EngineError("a whisper worker died during the pass", retryable=True)
                )
        self._dispatch()
        delay_s = 0.5
        while True:
            try:
                slot.worker = await self._spawn()
                break
            except Exception as exc:  # e.g. out of memory for now: try again later
                log.error("could not start a whisper worker: %r; again in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
        self._dispatch()

    async def aclose(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        jobs = [*self._waiting, *(j for s in self._slots for j in s.batch)]
        self._waiting = []
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(EngineError("whisper is shutting down"))
        # A pass already running cannot be interrupted, and the workers hold no state.
        slots, self._slots = self._slots, []
        await asyncio.gather(*(s.worker.kill() for s in slots if s.worker is not None))
