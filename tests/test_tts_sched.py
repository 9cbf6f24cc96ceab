"""Critical-path-first scheduling in the TTS worker pool, with real piper workers: class
order, pre-emption of lower-class work for a reply's first audio, and what a pre-empted or
cancelled request costs (agent/engines/tts_pool.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np

from agent.engines.priority import Priority, Urgency
from agent.engines.tts_pool import TtsPoolConfig, TtsWorkerPool
from harness.speech import synthesizer

# One long sentence: piper synthesizes it in one piece (~0.6 s of CPU), so without
# pre-emption a request behind it waits for all of it.
LONG = (
    "You said: I would like to book a table for two people tomorrow evening at seven in the"
    " Italian place near the station."
)
SHORT = "Yes."
QUIET = {"noise_scale": 0.0, "noise_w_scale": 0.0}  # the same samples every time


def config(workers: int) -> TtsPoolConfig:
    # Generous timeouts: other work may share the two cores.
    return TtsPoolConfig(
        workers=workers, first_chunk_timeout_s=10, chunk_timeout_s=10, acquire_timeout_s=30
    )


async def first_chunk_s(pool: TtsWorkerPool, text: str, urgency: Urgency | None = None) -> float:
    started = time.monotonic()
    stream = pool.synthesize(text, urgency=urgency)
    async with contextlib.aclosing(stream):
        await anext(stream)
    return time.monotonic() - started


async def collect(pool: TtsWorkerPool, text: str, priority: Priority, **kw: float) -> np.ndarray:
    stream = pool.synthesize(text, urgency=Urgency(priority), **kw)
    return np.concatenate([pcm async for pcm in stream])


async def running(pool: TtsWorkerPool, n: int) -> None:
    """Until `n` requests are being served (sent to a worker)."""
    for _ in range(2000):
        if len(pool._running) >= n:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the workers are inside the inference


async def solo_s(pool: TtsWorkerPool, text: str) -> float:
    """Median time to the first chunk of `text` on an otherwise idle pool."""
    times = sorted([await first_chunk_s(pool, text) for _ in range(3)])
    return times[1]


async def test_first_audio_starts_at_once_while_every_worker_serves_lower_classes() -> None:
    """(i) Both workers are in the middle of a long read-ahead / speculative sentence: a
    FIRST_AUDIO request pre-empts one and gets its audio in about its own synthesis time,
    well before the long sentence would have freed a worker (the bound: less than one long
    sentence's synthesis; without pre-emption it waited for the rest of it)."""
    async with synthesizer(config=config(2)) as pool:
        long_s = await solo_s(pool, LONG)
        short_s = await solo_s(pool, SHORT)
        behind = [
            asyncio.create_task(collect(pool, LONG, Priority.READ_AHEAD)),
            asyncio.create_task(collect(pool, LONG, Priority.SPECULATIVE)),
        ]
        await running(pool, 2)
        waited = await first_chunk_s(pool, SHORT, Urgency(Priority.FIRST_AUDIO))
        audio = await asyncio.gather(*behind)
    print(f"long {long_s:.3f}s short {short_s:.3f}s first audio behind two: {waited:.3f}s")
    assert pool.preemptions == 1
    assert waited < long_s, (waited, long_s)
    assert all(a.size > 48_000 for a in audio), "the cut one was served again, in full"


async def test_a_cancelled_speculative_request_frees_its_worker_at_once() -> None:
    """(ii) A speculative reply discarded mid-synthesis: its worker aborts the inference, so
    the next request does not wait for the rest of the long sentence."""
    async with synthesizer(config=config(1)) as pool:
        long_s = await solo_s(pool, LONG)
        spec = asyncio.create_task(collect(pool, LONG, Priority.SPECULATIVE))
        await running(pool, 1)
        spec.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spec
        waited = await first_chunk_s(pool, SHORT, Urgency(Priority.READ_AHEAD))
        assert sum(pool.restarts.values()) == 0
    print(f"long {long_s:.3f}s; next request after the cancel: {waited:.3f}s")
    assert waited < long_s * 0.6, (waited, long_s)


async def test_a_preempted_read_ahead_still_delivers_all_of_its_audio() -> None:
    """(iii) The pre-empted read-ahead is served again later: its consumer gets exactly the
    audio it would have had (piper's noise off: the same samples), and no error."""
    async with synthesizer(config=config(1)) as pool:
        reference = await collect(pool, LONG, Priority.READ_AHEAD, **QUIET)
        ahead = asyncio.create_task(collect(pool, LONG, Priority.READ_AHEAD, **QUIET))
        await running(pool, 1)
        first = await collect(pool, SHORT, Priority.FIRST_AUDIO)
        got = await ahead
        assert pool.preemptions == 1
        assert sum(pool.restarts.values()) == 0
    assert first.size > 0
    assert np.array_equal(got, reference)


async def test_waiting_requests_are_served_by_class_then_in_order() -> None:
    """(iv) With the only worker busy on first audio (nothing to pre-empt), the waiting
    requests start most urgent first, FIFO within a class; a class raised while waiting
    counts (a speculative reply committed)."""
    async with synthesizer(config=config(1)) as pool:
        order: list[str] = []
        dispatched: list[str] = []  # the classes the pool reports waits for, in order
        pool.on_queue_wait = lambda priority, wait_s: dispatched.append(priority.label)

        async def request(name: str, urgency: Urgency, text: str = "") -> None:
            stream = pool.synthesize(text or f"{name}.", urgency=urgency)
            async with contextlib.aclosing(stream):
                await anext(stream)
                order.append(name)

        # Long enough that every other request arrives while it is served.
        busy = asyncio.create_task(request("Busy", Urgency(Priority.FIRST_AUDIO), LONG))
        await running(pool, 1)
        committed = Urgency(Priority.SPECULATIVE)
        plan = [
            ("One", Urgency(Priority.READ_AHEAD)),
            ("Two", Urgency(Priority.SPECULATIVE)),
            ("Three", Urgency(Priority.READ_AHEAD)),
            ("Four", committed),
            ("Five", Urgency(Priority.SPECULATIVE)),
        ]
        tasks = []
        for name, urgency in plan:
            tasks.append(asyncio.create_task(request(name, urgency)))
            await asyncio.sleep(0.01)  # arrival order
        committed.raise_to(Priority.FIRST_AUDIO)
        await asyncio.gather(busy, *tasks)
        assert pool.preemptions == 0
    assert order == ["Busy", "Four", "Two", "Five", "One", "Three"]
    assert dispatched == ["first_audio", "first_audio", "speculative", "speculative",
                          "read_ahead", "read_ahead"]  # fmt: skip


async def test_a_waiting_request_leaves_the_queue_at_once() -> None:
    async with synthesizer(config=config(1)) as pool:
        busy = asyncio.create_task(collect(pool, LONG, Priority.FIRST_AUDIO))
        await running(pool, 1)
        waiting = asyncio.create_task(collect(pool, SHORT, Priority.READ_AHEAD))
        await asyncio.sleep(0.05)
        assert len(pool._waiting) == 1
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert pool._waiting == []
        assert (await busy).size > 48_000
        assert (await collect(pool, SHORT, Priority.READ_AHEAD)).size > 0
