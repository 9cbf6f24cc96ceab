"""The accurate final pass as a shared engine: whisper tiny.en on a bounded pool of threads.

One model (agent/engines/whisper_final.py) serves every call. Passes wait in one FIFO queue
and run on `workers` threads (CTranslate2 releases the GIL), never on the event loop. Each
call has at most one pass queued at a time (the listener cancels its old pass before it
starts a new one), so FIFO order is fair between calls. A pass cancelled before it starts
costs nothing; one cancelled while running finishes on its thread and is dropped. The queue
is bounded: beyond `max_queue` waiting passes, `transcribe` fails at once (retryable) and the
listener falls back to the streaming recognizer's final.

Measured on 2 cores (README "Hearing"): 62-107 ms per utterance at a 10 s window and
cpu_threads=1, against 240-310 ms at Whisper's usual 30 s window, same accuracy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass

from agent.audio import ASR_RATE_HZ, Pcm16
from agent.clock import Clock, MonotonicClock
from agent.engines.interfaces import EngineError, Transcription
from agent.engines.whisper_final import WhisperFinal, model_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhisperConfig:
    workers: int = 2  # passes that run at once (threads)
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
        self._model: WhisperFinal | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.passes = 0  # run to the end (for /metrics and the benchmarks)

    async def start(self) -> None:
        cfg = self.config
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=cfg.workers, thread_name_prefix="whisper"
        )
        loop = asyncio.get_running_loop()
        t0 = self._clock.now()
        model = await loop.run_in_executor(
            self._executor,
            lambda: WhisperFinal(
                model_dir(),
                cfg.cpu_threads,
                inter_threads=cfg.workers,
                window_s=cfg.window_s,
                no_speech_threshold=cfg.no_speech_threshold,
            ),
        )
        await loop.run_in_executor(self._executor, model.warm)
        self._model = model
        self._workers = [
            loop.create_task(self._work(), name=f"whisper-worker-{i}") for i in range(cfg.workers)
        ]
        log.info(
            "whisper tiny.en ready in %.2f s: %d workers × %d threads, %.0f s window",
            self._clock.now() - t0,
            cfg.workers,
            cfg.cpu_threads,
            cfg.window_s,
        )

    async def transcribe(self, pcm16: Pcm16) -> Transcription:
        if self._model is None:
            raise EngineError("whisper is not running")
        if self._queue.qsize() >= self.config.max_queue:
            raise EngineError("whisper is busy: too many passes waiting", retryable=True)
        job = _Job(pcm16, self._clock.now(), asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future  # cancelling it takes the job out of line

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._model is not None and self._executor is not None
        model, executor = self._model, self._executor
        while True:
            job = await self._queue.get()
            if job.future.done():
                continue  # cancelled while waiting: skip it
            started = self._clock.now()
            try:
                result = await loop.run_in_executor(executor, model.transcribe_detailed, job.pcm16)
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
            # A pass already running cannot be interrupted; don't wait for it.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._model = None
