"""pocketsphinx through the ASR interface: partials, finals, and decoders reused across calls."""

from __future__ import annotations

from typing import Any

from agent.audio import Decimator
from agent.engines.pocketsphinx_asr import PocketsphinxEngine
from harness.wer import wer


async def recognize(engine: PocketsphinxEngine, pcm48k: Any) -> tuple[str, str]:
    rec = engine.create()
    await rec.open()
    try:
        await rec.start()
        pcm = Decimator(3).process(pcm48k)
        for i in range(0, pcm.size, 320):
            await rec.push(pcm[i : i + 320])
        partial = await rec.partial()
        return partial, await rec.finish()
    finally:
        await rec.aclose()


async def test_decoders_are_pooled_and_still_accurate(speech: dict[str, Any]) -> None:
    engine = PocketsphinxEngine(preload=1)
    await engine.start()
    (decoder,) = engine._free
    partial, final = await recognize(engine, speech["What time is it?"])
    assert wer("what time is it", final) == 0.0, final
    assert partial, "a hypothesis exists before the end of the utterance"
    assert engine._free == [decoder], "the decoder went back to the pool"
    # The reused decoder starts clean: no words from the previous call leak in.
    _, final = await recognize(engine, speech["What is your name?"])
    assert wer("what is your name", final) == 0.0, final
    assert engine._free == [decoder]


async def test_a_busy_pool_loads_another_decoder(speech: dict[str, Any]) -> None:
    engine = PocketsphinxEngine(preload=1)
    await engine.start()
    first, second = engine.create(), engine.create()
    await first.open()
    await second.open()  # pool empty: loads a second decoder
    await first.aclose()
    await second.aclose()
    # Past the peak only `preload` idle decoders are kept: the extra one (~100 MB) is freed.
    assert len(engine._free) == 1
