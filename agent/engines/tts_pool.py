"""TTS interface and the worker-process pool that serves it.

`synthesize(text)` is an async iterator of 48 kHz mono int16 chunks, first chunk as soon as
the engine has one. The pool keeps N worker processes (agent/engines/tts_worker.py), each with
its voice loaded once, shared by every session. A request that is abandoned mid-stream
(barge-in) leaves its worker busy until the rest of its output is drained; a worker that hangs
or dies is killed and replaced, and the request fails with a retryable EngineError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.audio import OUT_RATE_HZ, Pcm16
from agent.clock import Clock, MonotonicClock
from agent.engines.interfaces import EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TtsPoolConfig:
    engine: str = "piper"  # piper | espeak
    voice: str | None = None  # piper: path to an .onnx voice; espeak: voice name
    workers: int = 2
    start_timeout_s: float = 60.0
    first_chunk_timeout_s: float = 5.0
    chunk_timeout_s: float = 5.0
    acquire_timeout_s: float = 5.0




class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    async def read_frame(self) -> tuple[bytes, bytes]:
        head = await self.stdout.readexactly(5)
        (size,) = struct.unpack(">I", head[1:])
        return head[:1], await self.stdout.readexactly(size) if size else b""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class TtsWorkerPool:
    sample_rate_hz = OUT_RATE_HZ

    def __init__(self, config: TtsPoolConfig, clock: Clock | None = None) -> None:
        if config.engine not in ("piper", "espeak"):
            raise ValueError(f"unknown TTS engine {config.engine!r} (piper | espeak)")
        self.config = config
        self._clock = clock or MonotonicClock()
        self.name = config.engine
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.config.workers)))
        for w in workers:
            self._idle.put_nowait(w)

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
        log.info("TTS worker pid=%d ready: %s", proc.pid, payload.decode())
        return worker

    async def synthesize(
        self,
        text: str,
        *,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
    ) -> AsyncGenerator[Pcm16, None]:
        """Speak `text`. The options are piper's (tts_worker.py) and are sent only when given:
        `length_scale` < 1 speaks faster; `noise_scale=0, noise_w_scale=0` makes piper's
        output identical on every call (the harness's reproducible recordings)."""
        if self._closed:
            raise EngineError("TTS pool is closed")
        try:
            async with self._clock.timeout(self.config.acquire_timeout_s):
                worker = await self._idle.get()
        except TimeoutError:
            raise EngineError("no TTS worker free in time (all busy)", retryable=True) from None
        outcome = "abandoned"  # until it ends: the consumer stopped early, or was cancelled
        try:
            options = {
                "length_scale": length_scale,
                "noise_scale": noise_scale,
                "noise_w_scale": noise_w_scale,
            }
            request: dict[str, object] = {"text": text}
            request.update((k, v) for k, v in options.items() if v is not None)
            worker.stdin.write(json.dumps(request).encode() + b"\n")
            await worker.stdin.drain()
            timeout = self.config.first_chunk_timeout_s
            while True:
                async with self._clock.timeout(timeout):
                    kind, payload = await worker.read_frame()
                timeout = self.config.chunk_timeout_s
                if kind == b"A":
                    yield np.frombuffer(payload, np.int16).copy()
                elif kind == b"E":
                    outcome = "done"
                    return
                elif kind == b"X":
                    outcome = "done"
                    raise EngineError(f"TTS failed for {text[:40]!r}: {payload.decode()}")
                else:
                    raise EngineError(f"TTS worker protocol error: {kind!r}")
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            outcome = "broken"
            raise EngineError(f"TTS worker hung or died: {exc!r}", retryable=True) from exc
        finally:
            if outcome == "done":
                self._idle.put_nowait(worker)
            elif outcome == "broken":
                self._replace(worker)
            else:
                self._own(self._drain(worker))

    async def _drain(self, worker: _Worker) -> None:
        """Read and drop the rest of an abandoned request, then return the worker."""
        try:
            while True:
                async with self._clock.timeout(self.config.chunk_timeout_s):
                    kind, _ = await worker.read_frame()
                if kind in (b"E", b"X"):
                    self._idle.put_nowait(worker)
                    return
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        self._discard(worker)
        if not self._closed:
            self._own(self._respawn())

    async def _respawn(self) -> None:
        try:
            self._idle.put_nowait(await self._spawn())
        except EngineError:
            log.exception("could not replace a TTS worker")

    def _discard(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()
        self._own(_reap(worker))

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a pool chore as a task the pool owns (cancelled and awaited in aclose)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in list(self._all):
            worker.stdin.close()
        for worker in list(self._all):
            try:
                async with self._clock.timeout(2.0):
                    await worker.proc.wait()
            except TimeoutError:
                worker.kill()
                await worker.proc.wait()
        self._all.clear()


async def _reap(worker: _Worker) -> None:
    await worker.proc.wait()
