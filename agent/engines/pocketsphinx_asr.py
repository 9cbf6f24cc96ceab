"""Streaming ASR with pocketsphinx (BSD; the wheel ships the en-us model, LM and dictionary).

Each recognizer owns one Decoder and one worker thread: decoding costs 2-3 ms per 20 ms of
audio, which must not run on the event loop, and a Decoder is not thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from agent.asr import AsrError
from agent.audio import ASR_RATE_HZ, Pcm16

log = logging.getLogger(__name__)
T = TypeVar("T")


class PocketsphinxEngine:
    name = "pocketsphinx"
    sample_rate_hz = ASR_RATE_HZ

    def create(self) -> PocketsphinxRecognizer:
        return PocketsphinxRecognizer()


class PocketsphinxRecognizer:
    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asr")
        self._decoder: Any = None
        self._in_utt = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        def load() -> Any:
            import pocketsphinx

            return pocketsphinx.Decoder(loglevel="FATAL")

        try:
            self._decoder = await self._run(load)
        except Exception as exc:
            raise AsrError(f"pocketsphinx failed to load: {exc}") from exc

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
        # Let queued decoder calls finish in the thread; don't block the loop on them.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _hyp(self) -> str:
        hyp = self._decoder.hyp()
        return str(hyp.hypstr).strip() if hyp is not None and hyp.hypstr else ""
