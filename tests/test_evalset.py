"""The hearing evaluation set: reproducible from its seed, with the noise, SNR, silences and
speech-end offsets it claims. Real piper synthesis (one worker), about ten seconds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import OUT_FRAME_SAMPLES, OUT_RATE_HZ, Pcm16
from harness import evalset, noise
from harness.evalset import LOUD, EvalItem
from harness.speech import QUESTIONS, synthesize, synthesizer
from harness.wer import words


@dataclass(frozen=True)
class Built:
    seed1: list[EvalItem]
    seed1_again: list[EvalItem]  # built by a second speaker: nothing cached is reused
    seed2: list[EvalItem]
    slow: Pcm16  # one sentence at length_scale 1.3 ...
    fast: Pcm16  # ... and at 0.8


@pytest.fixture(scope="session")
def built() -> Built:
    async def make() -> Built:
        async with synthesizer("piper") as pool:
            sentence = "Set a timer for ten minutes."
            return Built(
                await evalset.build(1, "quick", pool),
                await evalset.build(1, "quick", pool),
                await evalset.build(2, "quick", pool),
                await synthesize(pool, sentence, 1.3, deterministic=True),
                await synthesize(pool, sentence, 0.8, deterministic=True),
            )

    return asyncio.run(make())


def rms_dbfs(pcm: Pcm16 | npt.NDArray[np.float64]) -> float:
    power = float(np.mean(pcm.astype(np.float64) ** 2))
    return 10 * float(np.log10(max(power, 1e-12) / 32768.0**2))


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
def test_same_seed_same_audio(built: Built) -> None:
    assert [i.digest() for i in built.seed1] == [i.digest() for i in built.seed1_again]
    assert built.seed1 == built.seed1_again  # labels, texts, offsets, speeds, pitches


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
def test_different_seed_different_set(built: Built) -> None:
    assert {i.digest() for i in built.seed1}.isdisjoint(i.digest() for i in built.seed2)


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
def test_quick_is_small_and_covers_the_plan(built: Built) -> None:
    items = built.seed1
    assert 6 <= len(items) <= 8
    assert sum(i.duration_s for i in items) < 60
    assert {i.condition for i in items} == {"clean", "pink-10", "babble-20"}
    assert sum(i.kind == "pause" for i in items) == 1
    for item in items:
        assert item.pcm48.dtype == np.int16 and item.pcm48.shape == item.clean48.shape


def test_sentences_are_new_and_short() -> None:
    tuned = {" ".join(words(q)) for q in QUESTIONS}
    sentences = [*evalset.UTTERANCES, *(f"{a} {b}" for a, b in evalset.PAUSE_SENTENCES)]
    assert len(evalset.UTTERANCES) >= 40 and len(evalset.PAUSE_SENTENCES) >= 8
    for text in sentences:
        assert " ".join(words(text)) not in tuned, text
        assert 3 <= len(words(text)) <= 12, text


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
def test_length_scale_changes_speed(built: Built) -> None:
    def spoken(pcm: Pcm16) -> int:
        first, end = evalset.loud_span(pcm)
        return end - first

    # piper rounds phoneme lengths up, so the words stretch less than length_scale says.
    assert 1.25 < spoken(built.slow) / spoken(built.fast) < 1.3 / 0.8 + 0.05


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
def test_speech_end_is_where_the_speech_ends(built: Built) -> None:
    for item in built.seed1:
        end = round(item.speech_end_s * OUT_RATE_HZ)
        start = round(item.speech_start_s * OUT_RATE_HZ)
        assert item.speech_start_s == pytest.approx(evalset.LEAD_S, abs=1e-3)
        clean = item.clean48.astype(np.int32)
        assert np.abs(clean[end:]).max(initial=0) <= LOUD, item.label
        assert np.abs(clean[:start]).max(initial=0) <= LOUD, item.label
        assert np.abs(clean[end - 1]) > LOUD and np.abs(clean[start]) > LOUD, item.label


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
def test_noise_runs_before_under_and_after_the_speech(built: Built) -> None:
    for item in built.seed1:
        end = round(item.speech_end_s * OUT_RATE_HZ)
        after = item.pcm48[end:]
        before = item.pcm48[: round(item.speech_start_s * OUT_RATE_HZ)]
        if item.condition == "clean":
            assert after.size == 0 and not before.any(), item.label
            continue
        assert after.size / OUT_RATE_HZ == pytest.approx(evalset.TAIL_S, abs=0.01)
        noise_only = item.pcm48.astype(np.float64) - item.clean48  # ±1 from rounding
        level = rms_dbfs(noise_only)
        # Every 200 ms before and after the speech carries the noise, not silence (babble
        # has quieter moments: a few voices between their words).
        for part in (before, after):
            for i in range(0, part.size - 9600 + 1, 9600):
                assert rms_dbfs(part[i : i + 9600]) > level - 15, item.label
        snr = 10 * np.log10(noise.active_power(item.clean48) / np.mean(noise_only**2))
        assert snr == pytest.approx(evalset.CONDITIONS[item.condition][1], abs=0.5), item.label


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
def test_pause_items_have_their_silence(built: Built) -> None:
    (item,) = (i for i in built.seed1 if i.kind == "pause")
    assert item.pause_span_s is not None and item.after_pause
    start, end = (round(t * OUT_RATE_HZ) for t in item.pause_span_s)
    lo, hi = evalset.PAUSE_RANGE_S
    assert lo - 0.005 <= (end - start) / OUT_RATE_HZ <= hi + 0.005
    assert item.speech_start_s < item.pause_span_s[0] < item.pause_span_s[1] < item.speech_end_s
    clean = np.abs(item.clean48.astype(np.int32))
    assert clean[start:end].max() <= LOUD
    # Words on both sides: loud within 100 ms before and after the silence.
    assert clean[start - 4800 : start].max() > LOUD and clean[end : end + 4800].max() > LOUD
    assert item.text.endswith(item.after_pause)


@pytest.mark.slow  # the `built` set: ~15 s of piper synthesis, once per session
@pytest.mark.parametrize("kind", ["pink", "white", "hum", "babble"])
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_mix_hits_the_snr(built: Built, kind: str, snr_db: float) -> None:
    speech = next(i for i in built.seed1 if i.condition == "clean").clean48
    # Speech near full scale, so that low SNRs clip and mix() must scale both down.
    speech = (speech.astype(np.float64) * (30_000 / np.abs(speech).max())).astype(np.int16)
    rng = np.random.default_rng(5)
    talkers = [i.clean48 for i in built.seed2]
    n = speech.size
    source = {
        "pink": lambda: noise.pink(rng, n),
        "white": lambda: noise.white(rng, n),
        "hum": lambda: noise.hum(rng, n),
        "babble": lambda: noise.babble(rng, n, talkers),
    }[kind]()
    mixed = noise.mix(speech, source, snr_db).astype(np.float64)
    assert np.abs(mixed).max() <= 32767
    s = speech.astype(np.float64)
    gain = float(mixed @ s) / float(s @ s)  # 1 unless mix() scaled down against clipping
    residual = mixed - gain * s
    measured = 10 * np.log10(gain**2 * noise.active_power(speech) / np.mean(residual**2))
    assert measured == pytest.approx(snr_db, abs=0.5)


def test_noise_is_seeded_and_shaped() -> None:
    n = OUT_RATE_HZ * 2
    a, b = noise.pink(np.random.default_rng(3), n), noise.pink(np.random.default_rng(3), n)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, noise.pink(np.random.default_rng(4), n))

    def band_db(pcm: Pcm16, lo: float, hi: float) -> float:
        spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
        f = np.fft.rfftfreq(pcm.size, 1 / OUT_RATE_HZ)
        return 10 * float(np.log10(spectrum[(f >= lo) & (f < hi)].sum()))

    # Pink: equal power per octave; white: equal power per hertz.
    assert band_db(a, 250, 500) == pytest.approx(band_db(a, 4000, 8000), abs=2)
    w = noise.white(np.random.default_rng(3), n)
    assert band_db(w, 4000, 8000) - band_db(w, 250, 500) == pytest.approx(12, abs=1)
    # Hum: most of its power at the mains frequency and its harmonics.
    h = noise.hum(np.random.default_rng(3), n, mains_hz=50.0)
    lines = sum(10 ** (band_db(h, 50 * k - 2, 50 * k + 2) / 10) for k in range(1, 8))
    assert 10 * np.log10(lines) > band_db(h, 20, 1000) - 3
    # No generator output clips, and each has the nominal level.
    for pcm in (a, w, h):
        assert rms_dbfs(pcm) == pytest.approx(noise.NOISE_DBFS, abs=0.5)
        assert np.abs(pcm.astype(np.int32)).max() < 32767
    assert OUT_FRAME_SAMPLES == 960  # active_frames() works on 20 ms frames at 48 kHz
