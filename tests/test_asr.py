"""pocketsphinx through the ASR interface, in its worker processes: partials, finals, calls
spread over the workers, decoders reused across utterances, and workers that die or hang."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from io import BytesIO
from typing import Any

import numpy as np
import pytest

from agent.audio import Decimator
from agent.engines.asr_worker import (
    HEADER,
    HYP,
    PROGRESS,
    PROGRESS_EVERY_S,
    PUSH,
    TEXT,
    Decoders,
    serve,
)
from agent.engines.interfaces import EngineError
from agent.engines.pocketsphinx_asr import (
    AsrPoolConfig,
    PocketsphinxEngine,
    PocketsphinxRecognizer,
)
from harness.wer import wer
from tests.starve import starved


async def say(rec: PocketsphinxRecognizer, pcm48k: Any) -> tuple[str, str]:
    await rec.start()
    pcm = Decimator(3).process(pcm48k)
    assert await rec.partial() == "", "nothing heard yet"
    for i in range(0, pcm.size, 320):
        await rec.push(pcm[i : i + 320])
    return await live_caption(rec), await rec.finish()


async def live_caption(rec: PocketsphinxRecognizer) -> str:
    """`partial` never waits: it gives what the worker last sent and asks for more."""
    for _ in range(100):
        if text := await rec.partial():
            return text
        await asyncio.sleep(0.02)
    return ""


@contextlib.asynccontextmanager
async def running(**config: Any) -> AsyncIterator[PocketsphinxEngine]:
    """A started engine (one worker, one warm decoder unless `config` says more), closed after."""
    engine = PocketsphinxEngine(AsrPoolConfig(**{"processes": 1, "preload": 1, **config}))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


async def replaced(engine: PocketsphinxEngine, process: Any) -> None:
    """Until the watcher has replaced `process` (30 s at most: a loaded CI machine)."""
    for _ in range(600):
        if engine._processes and engine._processes[0] is not process:
            return
        await asyncio.sleep(0.05)


async def recognize(engine: PocketsphinxEngine, pcm48k: Any) -> tuple[str, str]:
    rec = engine.create()
    await rec.open()
    try:
        return await say(rec, pcm48k)
    finally:
        await rec.aclose()


async def test_accurate_and_a_reused_decoder_starts_clean(speech: dict[str, Any]) -> None:
    async with running() as engine:
        partial, final = await recognize(engine, speech["What time is it?"])
        assert wer("what time is it", final) == 0.0, final
        assert partial, "a hypothesis exists before the end of the utterance"
        # The same (only) decoder again: no words from the previous utterance leak in.
        _, final = await recognize(engine, speech["What is your name?"])
        assert wer("what is your name", final) == 0.0, final
        # Several utterances in one call, and one cancelled in between.
        rec = engine.create()
        await rec.open()
        await rec.start()
        await rec.push(Decimator(3).process(speech["What time is it?"])[:8000])
        await rec.cancel()
        _, final = await say(rec, speech["What is your name?"])
        assert wer("what is your name", final) == 0.0, final
        await rec.aclose()


async def test_calls_spread_over_the_workers_and_speak_at_once(speech: dict[str, Any]) -> None:
    async with running(processes=2) as engine:
        recs = [engine.create() for _ in range(3)]
        for rec in recs:
            await rec.open()
        assert sorted(p.calls for p in engine._processes) == [1, 2]
        # Three people talking at once, on two workers (one loads a second decoder).
        texts = ["What time is it?", "What is your name?", "What time is it?"]
        results = await asyncio.gather(
            *(say(r, speech[t]) for r, t in zip(recs, texts, strict=True))
        )
        for (_, final), text in zip(results, texts, strict=True):
            assert wer(text.lower().rstrip("?"), final) == 0.0, (text, final)
        for rec in recs:
            await rec.aclose()
        assert [p.calls for p in engine._processes] == [0, 0]
        procs = [p.proc for p in engine._processes]
    assert all(proc.returncode is not None for proc in procs), "closing ends the workers"


async def test_speakers_past_max_decoders_get_no_captions_and_memory_stays_bounded(
    speech: dict[str, Any],
) -> None:
    """One decoder at most: the second person speaking at the same moment gets no captions
    (and no streaming final), the first is recognized; once the first has finished, the
    decoder serves the next utterance."""
    async with running(max_decoders=1) as engine:
        first, second = engine.create(), engine.create()
        for rec in (first, second):
            await rec.open()
        pcm = Decimator(3).process(speech["What is your name?"])
        await first.start()
        await second.start()
        for i in range(0, pcm.size, 320):
            await first.push(pcm[i : i + 320])
            await second.push(pcm[i : i + 320])
        assert await live_caption(first), "the first speaker has live captions"
        assert await live_caption(second) == "", "no decoder left for the second"
        with pytest.raises(EngineError, match="no decoder free"):
            await second.finish()
        assert wer("what is your name", await first.finish()) == 0.0
        _, final = await say(second, speech["What time is it?"])  # the decoder is free again
        assert wer("what time is it", final) == 0.0, final
        for rec in (first, second):
            await rec.aclose()


async def test_a_dead_worker_degrades_its_calls_and_is_replaced(speech: dict[str, Any]) -> None:
    async with running() as engine:
        rec = engine.create()
        await rec.open()
        await rec.start()
        await rec.push(np.zeros(320, np.int16))
        (process,) = engine._processes
        os.kill(process.proc.pid, signal.SIGKILL)
        await process.proc.wait()
        await rec.push(np.zeros(320, np.int16))  # takes nothing, raises nothing
        assert await rec.partial() == ""  # no live caption, no error
        with pytest.raises(EngineError) as err:
            await rec.finish()
        assert err.value.retryable
        await replaced(engine, process)
        assert engine.restarts == 1
        # The same call, at its next utterance, is on the new worker.
        _, final = await say(rec, speech["What time is it?"])
        assert wer("what time is it", final) == 0.0, final
        await rec.aclose()
        assert [p.calls for p in engine._processes] == [0]
        _, final = await recognize(engine, speech["What is your name?"])
        assert wer("what is your name", final) == 0.0, final


async def test_a_hung_worker_is_killed_and_replaced(speech: dict[str, Any]) -> None:
    async with running(answer_timeout_s=0.5, hung_after_s=0.5) as engine:
        rec = engine.create()
        await rec.open()
        await rec.start()
        (process,) = engine._processes
        os.kill(process.proc.pid, signal.SIGSTOP)
        assert await rec.partial() == ""  # asked; no answer comes
        await asyncio.sleep(0.6)
        assert await rec.partial() == ""  # no answer for hung_after_s: the worker is killed
        await process.proc.wait()
        with pytest.raises(EngineError):
            await rec.finish()
        await rec.aclose()
        await replaced(engine, process)
        _, final = await recognize(engine, speech["What is your name?"])
        assert wer("what is your name", final) == 0.0, final
        assert engine.restarts == 1


async def test_a_worker_far_behind_skips_caption_audio_instead_of_dying() -> None:
    async with running() as engine:
        rec = engine.create()
        await rec.open()
        await rec.start()
        (process,) = engine._processes
        os.kill(process.proc.pid, signal.SIGSTOP)  # as starved as it gets
        try:
            for _ in range(1000):  # 20 s of audio
                await rec.push(np.zeros(320, np.int16))
            assert rec.skipped_frames >= 400, "the backlog stays bounded (~256 KB + the pipe)"
            assert process.alive and engine.restarts == 0, "behind is not hung"
        finally:
            os.kill(process.proc.pid, signal.SIGCONT)
        assert await rec.finish() == ""  # it caught up and answered (silence: no words)
        await rec.aclose()


async def test_a_worker_behind_answers_late_and_is_kept_a_stopped_one_is_replaced(
    speech: dict[str, Any],
) -> None:
    hung_after_s = 1.0
    async with running(hung_after_s=hung_after_s, answer_timeout_s=60.0) as engine:
        rec = engine.create()
        await rec.open()
        await rec.start()
        (process,) = engine._processes
        sentence = Decimator(3).process(speech["What time is it?"])
        loop = asyncio.get_running_loop()
        async with starved(process.proc.pid):
            while rec._process is process and process.stdin.transport.get_write_buffer_size() < (
                160 * 1024
            ):  # ~7 s of speech queued ahead of the question: answers come seconds late
                for i in range(0, sentence.size, 320):
                    await rec.push(sentence[i : i + 320])
            asked_at = loop.time()
            caption = ""
            while not caption:  # asking all the while: each partial judges the worker
                caption = await rec.partial()
                assert process.alive, "a worker that is only behind was killed as hung"
                await asyncio.sleep(0.05)
            late_s = loop.time() - asked_at
            final = await rec.finish()
        assert late_s > 1.5 * hung_after_s, f"answered too soon to test anything: {late_s:.2f} s"
        assert "time" in caption and "what time is it" in final, (caption, final)
        assert rec.skipped_frames == 0
        assert engine.restarts == 0 and engine._processes == [process]

        # Stuck for good in the middle of its audio: replaced after hung_after_s, not before.
        await rec.start()
        for i in range(0, sentence.size, 320):
            await rec.push(sentence[i : i + 320])
        os.kill(process.proc.pid, signal.SIGSTOP)
        stopped_at = loop.time()
        while process.alive:
            assert await rec.partial() == ""
            await asyncio.sleep(0.05)
        assert loop.time() - stopped_at >= hung_after_s
        await process.proc.wait()
        with pytest.raises(EngineError):
            await rec.finish()
        await rec.aclose()
        await replaced(engine, process)
        assert engine.restarts == 1
        _, final = await recognize(engine, speech["What is your name?"])
        assert wer("what is your name", final) == 0.0, final


def test_the_worker_beats_progress_while_it_serves_and_is_quiet_otherwise() -> None:
    """The protocol on a fake clock: beats while requests are served, about every
    PROGRESS_EVERY_S, each counting the requests served so far."""
    t = [0.0]

    def now() -> float:
        t[0] += PROGRESS_EVERY_S / 4  # every request (and every beat check) takes a while
        return t[0]

    frame = np.zeros(320, np.int16).tobytes()
    requests = b"".join(HEADER.pack(PUSH, 1, len(frame)) + frame for _ in range(40))
    requests += HEADER.pack(HYP, 1, 0)
    out = BytesIO()
    serve(Decoders(0), BytesIO(requests), out, now)
    raw, kinds = out.getvalue(), []
    while raw:
        kind, _, size = HEADER.unpack(raw[: HEADER.size])
        kinds.append((kind, raw[HEADER.size : HEADER.size + size].decode()))
        raw = raw[HEADER.size + size :]
    beats = [int(text) for kind, text in kinds if kind == PROGRESS]
    assert kinds[-1] == (TEXT, ""), "the question is answered after the beats"
    assert 8 <= len(beats) <= 21, beats  # 40 requests over ~20 beat periods
    assert beats == sorted(beats) and beats[-1] <= 40, "each beat counts requests served"
