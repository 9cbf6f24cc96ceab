"""Streaming ASR with pocketsphinx (BSD; the wheel ships the en-us model, LM and dictionary).

Each recognizer uses one Decoder from its own worker thread: decoding costs 2-3 ms per 20 ms
of audio, which must not run on the event loop, and a Decoder is not thread-safe.

Decoders are pooled by the engine and reused across calls. Loading one takes ~0.3 s and holds
the GIL, which stalls the event loop — every call's audio — for that long; so the engine
loads `preload` decoders at start-up and a call only pays for a load when all are in use.

A decoder holds ~100 MB. The pool keeps at most `preload` idle ones: past a load peak the
extra decoders are freed and the heap trimmed, so RSS returns near its baseline instead of
staying at the peak (measured by `bench/soak.py`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from agent.audio import ASR_RATE_HZ, Pcm16
from agent.engines.interfaces import EngineError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _load_decoder() -> Any:
    import pocketsphinx

    return pocketsphinx.Decoder(loglevel="FATAL")


class PocketsphinxEngine:
    name = "pocketsphinx"
    sample_rate_hz = ASR_RATE_HZ

    def __init__(self, preload: int = 2) -> None:
        self._preload = preload
        self._free: list[Any] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self._preload):
            self._free.append(await loop.run_in_executor(None, _load_decoder))

    def create(self) -> PocketsphinxRecognizer:
        return PocketsphinxRecognizer(self)

    async def acquire(self) -> Any:
        if self._free:
            return self._free.pop()
        log.info("all %d pocketsphinx decoders busy: loading another", self._preload)
        return await asyncio.get_running_loop().run_in_executor(None, _load_decoder)

    def release(self, decoder: Any) -> None:
        if len(self._free) < self._preload:
            self._free.append(decoder)
            return
        del decoder  # the last reference: pocketsphinx frees its model copy
        trim_heap()


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise); no-op elsewhere."""
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


class PocketsphinxRecognizer:
    def __init__(self, engine: PocketsphinxEngine) -> None:
        self._engine = engine
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asr")
        self._decoder: Any = None
        self._in_utt = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        try:
            self._decoder = await self._engine.acquire()
        except Exception as exc:
            raise EngineError(f"pocketsphinx failed to load: {exc}") from exc

    async def start(self) -> None:
        if self._in_utt:
            await self.cancel()
        await self._run(self._decoder.start_utt)
        self._in_utt = True

    async def push(self, pcm16: Pcm16) -> None:
        if self._in_utt:
            await self._run(self._decoder.process_raw, pcm16.tobytes(), False, False)

    async def partial(self) -> str:
        if not self._in_utt:
            return ""
        return await self._run(self._hyp)

    async def finish(self) -> str:
        if not self._in_utt:
            return ""
        self._in_utt = False

        def end() -> str:
            self._decoder.end_utt()
            return self._hyp()

        return await self._run(end)

    async def cancel(self) -> None:
        if self._in_utt:
            self._in_utt = False
            await self._run(self._decoder.end_utt)

    async def aclose(self) -> None:
        """Give the decoder back to the engine's pool, idle (no utterance open)."""
        decoder, self._decoder = self._decoder, None
        try:
            if decoder is not None and self._in_utt:
                await self._run(decoder.end_utt)
        except Exception:
            log.exception("pocketsphinx decoder failed to close; not reused")
            decoder = None
        finally:
            # On cancellation the decoder may still be busy in our thread: never reuse it then.
            self._in_utt = False
            self._pool.shutdown(wait=False, cancel_futures=True)
        if decoder is not None:
            self._engine.release(decoder)

    def _hyp(self) -> str:
        hyp = self._decoder.hyp()
        return str(hyp.hypstr).strip() if hyp is not None and hyp.hypstr else ""
