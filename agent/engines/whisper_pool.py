"""The accurate final pass as a shared engine: whisper tiny.en in a pool of worker processes.

Every call's passes wait in one FIFO queue and run in `workers` processes, each with its own
copy of the model (agent/engines/whisper_worker.py), never in the server's process:
CTranslate2 holds the GIL for part of each pass, which in threads slowed the event loop
carrying every call's audio. A worker that dies breaks the whole process pool: the passes
running then fail (retryable: the listener falls back to the streaming recognizer's final)
and a new pool is made, whose processes load the model at its first pass (~0.5 s more for
that pass). Each call has at most one pass queued at a time (the listener cancels its old
pass before it starts a new one), so FIFO order is fair between calls. A pass cancelled before it starts
costs nothing; one cancelled while running finishes in its process and is dropped. The queue
is bounded: beyond `max_queue` waiting passes, `transcribe` fails at once (retryable) and the
listener falls back to the streaming recognizer's final.

Measured on 2 cores (README "Hearing"): 62-107 ms per utterance at a 10 s window and
cpu_threads=1, against 240-310 ms at Whisper's usual 30 s window, same accuracy.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from agent.audio import ASR_RATE_HZ, Pcm16
from agent.clock import Clock, MonotonicClock
from agent.engines import whisper_worker
from agent.engines.interfaces import EngineError, Transcription

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhisperConfig:
    workers: int = 2  # passes that run at once (processes)
    cpu_threads: int = 1  # CTranslate2 threads per pass
    window_s: float = 10.0  # minimum encoder window (shorter windows make tiny.en loop)
    max_queue: int = 32
    no_speech_threshold: float = 0.6  # '' when whisper thinks there was no speech

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpu_threads < 1 or self.max_queue < 1:
            raise ValueError("whisper workers, cpu_threads and max_queue must be >= 1")
        if not 0 <= self.window_s <= 30:
            raise ValueError("whisper window_s must be within 0..30")


@dataclass
class _Job:
    pcm16: Pcm16
    queued_at: float
    future: asyncio.Future[Transcription]


class WhisperPool:
    name = "whisper-tiny.en"
    sample_rate_hz = ASR_RATE_HZ

    def __init__(self, config: WhisperConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or WhisperConfig()
        self._clock = clock or MonotonicClock()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor: ProcessPoolExecutor | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.passes = 0  # run to the end (for /metrics and the benchmarks)
        self.restarts = 0  # the worker processes were started again after one died

    def _new_executor(self) -> ProcessPoolExecutor:
        cfg = self.config
        return ProcessPoolExecutor(
            max_workers=cfg.workers,
            # Not fork: the server has threads (aiortc, onnxruntime) a fork would copy mid-way.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=whisper_worker.load,
            initargs=(os.getpid(), cfg.cpu_threads, cfg.window_s, cfg.no_speech_threshold),
        )

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        t0 = self._clock.now()
        self._executor = self._new_executor()
        try:
            # Each submit finds no idle worker and starts one: every model loads now.
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._executor, whisper_worker.ready)
                    for _ in range(cfg.workers)
                )
            )
        except BrokenProcessPool as exc:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise EngineError(f"whisper workers failed to start: {exc!r}") from exc
        self._workers = [
            loop.create_task(self._work(), name=f"whisper-worker-{i}") for i in range(cfg.workers)
        ]
        log.info(
            "whisper tiny.en ready in %.2f s: %d processes × %d threads, %.0f s window",
            self._clock.now() - t0,
            cfg.workers,
            cfg.cpu_threads,
            cfg.window_s,
        )

    async def transcribe(self, pcm16: Pcm16) -> Transcription:
        if self._executor is None:
            raise EngineError("whisper is not running")
        if self._queue.qsize() >= self.config.max_queue:
            raise EngineError("whisper is busy: too many passes waiting", retryable=True)
        job = _Job(pcm16, self._clock.now(), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future  # cancelling it takes the job out of line

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.future.done():
                continue  # cancelled while waiting: skip it
            started = self._clock.now()
            executor = self._executor
            assert executor is not None
            try:
                result = await loop.run_in_executor(executor, whisper_worker.transcribe, job.pcm16)
            except BrokenProcessPool:
                self._restart(executor)
                if not job.future.done():
                    job.future.set_exception(
                        EngineError("a whisper worker died during the pass", retryable=True)
                    )
                continue
            except Exception as exc:  # a model failure fails this pass, not the pool
                log.exception("whisper pass failed")
                if not job.future.done():
                    job.future.set_exception(EngineError(f"whisper failed: {exc!r}"))
                continue
            self.passes += 1
            if not job.future.done():
                job.future.set_result(
                    Transcription(
                        result.text,
                        queue_wait_s=started - job.queued_at,
                        compute_s=result.encode_s + result.decode_s,
                    )
                )

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        """A worker died: the executor is unusable. Start a new one (once per breakage)."""
        if self._executor is not broken:
            return  # another pass saw the same breakage first
        log.warning("a whisper worker process died: starting the pool again")
        self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()  # its workers load at the next pass

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(EngineError("whisper is shutting down"))
        if self._executor is not None:
            # A pass already running cannot be interrupted; don't wait for it (the worker
            # processes exit when it ends).
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
