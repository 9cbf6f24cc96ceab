"""A reproducible evaluation set for hearing: what a caller says, under which noise, with the
reference words and the instant the speech ends.

`await build(seed, "quick" | "full", pool)` returns the same items, sample for sample, for the
same seed: every choice (sentence, speed, pitch, pause length, noise) is drawn from the seed,
and the speech is piper's joe voice with its generator noise off (`deterministic`), which
makes piper repeat itself exactly. Speed is piper's `length_scale` (0.85–1.2); pitch is
changed by resampling (synthesize `pitch` times slower, then play it `pitch` times faster), so
the duration stays the one chosen. The sentences are written for this set, not tuned on (they
are not `harness.speech.QUESTIONS`).

Each item is what the caller sends: `LEAD_S` of silence (or noise), the speech, and for a noisy
condition `TAIL_S` more of noise after the speech, which is where an end-of-turn rule that
waits for silence gets lost. `speech_end_s` is measured on the clean speech before mixing.
Synthesized audio is cached in memory only, per `Speaker`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from agent.audio import OUT_RATE_HZ, Pcm16, Resampler
from agent.engines.tts_pool import TtsWorkerPool
from harness import noise
from harness.speech import synthesize

Size = Literal["quick", "full"]
Kind = Literal["plain", "pause"]

LEAD_S = 0.3  # before the speech: silence, or the noise already running
TAIL_S = 3.0  # noise that goes on after the speech (noisy conditions only)
LOUD = int(32768 * 10 ** (-40 / 20))  # -40 dBFS: the harness's "speech" threshold
SPEECH_PEAK = int(32768 * 10 ** (-6 / 20))  # piper peaks at full scale; leave noise room
SPEED_RANGE = (0.85, 1.2)  # piper length_scale (> 1 slower)
PITCH_RANGE = (0.9, 1.12)  # pitch factor (> 1 higher)
PAUSE_RANGE_S = (0.3, 0.6)  # the silence inside a pause item
BABBLE_VOICES = 7  # synthesized per build
BABBLE_TALKERS = 5  # heard at once

# Short things people say to a voice assistant (3–12 words). Some the built-in responder
# answers (time, date, arithmetic, name, greetings, thanks); most it only repeats back.
UTTERANCES = [
    "What time is it right now?",
    "Could you tell me the time, please?",
    "What's the date today?",
    "Which day of the week is it?",
    "What is seven times six?",
    "What is twelve minus five?",
    "How much is nine plus eight?",
    "What is twenty divided by four?",
    "Hi there, how are you doing?",
    "Hello, nice to meet you.",
    "Good evening to you.",
    "Do you have a name?",
    "Who are you, exactly?",
    "Tell me a joke.",
    "Tell me something funny.",
    "Set a timer for ten minutes.",
    "Remind me to call my sister tomorrow.",
    "Play some relaxing music in the kitchen.",
    "Turn off the lights in the bedroom.",
    "How far is the nearest train station?",
    "I need a taxi to the airport.",
    "Is it going to rain this afternoon?",
    "My flight leaves at half past seven.",
    "Add milk and eggs to my shopping list.",
    "Please read me the latest news.",
    "What's a good recipe for pancakes?",
    "How do I get to the museum?",
    "Thanks, that was really helpful.",
    "No, that's not what I meant.",
    "Yes, please go ahead.",
    "Cancel my meeting with the dentist.",
    "How many days until Christmas?",
    "Translate good night into French.",
    "What's the capital of Australia?",
    "I'm feeling a bit tired today.",
    "Call the office and say I'm running late.",
    "What can you help me with?",
    "Okay, see you later.",
    "Wake me up at six thirty tomorrow.",
    "Could you repeat that more slowly?",
]

# Sentences said with a pause in the middle, where the words before it are plainly unfinished.
PAUSE_SENTENCES = [
    ("I'd like to", "book a table for two."),
    ("Can you remind me", "to water the plants tonight?"),
    ("What I really want is", "a cup of hot tea."),
    ("Could you tell me", "what time it is?"),
    ("I was wondering if", "you could help me."),
    ("Please send a message to", "my brother Tom."),
    ("The meeting is on", "Thursday at three."),
    ("My favorite color is", "dark green."),
]

# Noise conditions: name → (generator, SNR in dB).
CONDITIONS: dict[str, tuple[str, float]] = {
    "clean": ("", 0.0),
    "pink-10": ("pink", 10.0),
    "pink-15": ("pink", 15.0),
    "hum-12": ("hum", 12.0),
    "babble-20": ("babble", 20.0),
    "white-25": ("white", 25.0),
}
QUICK_PLAN: list[tuple[str, Kind, int]] = [  # (condition, kind, items)
    ("clean", "plain", 2),
    ("pink-10", "plain", 2),
    ("babble-20", "plain", 2),
    ("clean", "pause", 1),
]
FULL_PLAN: list[tuple[str, Kind, int]] = [
    *((condition, "plain", 12) for condition in CONDITIONS),
    ("clean", "pause", len(PAUSE_SENTENCES)),
    ("pink-15", "pause", len(PAUSE_SENTENCES)),
]


@dataclass(frozen=True)
class EvalItem:
    label: str
    text: str  # the reference words
    condition: str  # a CONDITIONS key
    kind: Kind
    pcm48: Pcm16 = field(repr=False, compare=False)  # what the caller sends, 48 kHz mono
    speech_end_s: float  # offset in pcm48 where the speech ends (measured before mixing)
    speech_start_s: float = LEAD_S
    pause_span_s: tuple[float, float] | None = None  # the silence inside a pause item
    after_pause: str = ""  # the words after that silence
    length_scale: float = 1.0
    pitch: float = 1.0
    # The speech alone, aligned with pcm48 and as loud as it is there.
    clean48: Pcm16 = field(default_factory=lambda: np.zeros(0, np.int16), repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        return self.pcm48.size / OUT_RATE_HZ

    def digest(self) -> str:
        """sha256 of the audio (reproducibility checks)."""
        return hashlib.sha256(self.pcm48.tobytes()).hexdigest()


def loud_span(pcm: Pcm16) -> tuple[int, int]:
    """[first, last + 1) of the samples louder than -40 dBFS ((0, 0) if none)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > LOUD)
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


class Speaker:
    """piper joe at a chosen speed and pitch, peaking at -6 dBFS (room for the noise) and
    trimmed to its loud span; cached in memory."""

    def __init__(self, pool: TtsWorkerPool) -> None:
        self.pool = pool
        self._cache: dict[tuple[str, float, float], Pcm16] = {}

    async def say(self, text: str, length_scale: float, pitch: float) -> Pcm16:
        key = (text, round(length_scale, 3), round(pitch, 3))
        if key not in self._cache:
            raw = await synthesize(self.pool, text, length_scale * pitch, deterministic=True)
            shifted = _speed_up(raw, pitch).astype(np.float64)
            peak = float(np.abs(shifted).max(initial=0))
            if peak == 0:
                raise RuntimeError(f"TTS produced no audible speech for {text!r}")
            leveled = np.rint(shifted * (SPEECH_PEAK / peak)).astype(np.int16)
            first, end = loud_span(leveled)
            self._cache[key] = leveled[first:end]
        return self._cache[key]


def _speed_up(pcm: Pcm16, factor: float) -> Pcm16:
    """Play `factor` times faster: pitch × factor, duration / factor."""
    if abs(factor - 1.0) < 1e-6:
        return pcm
    resampler = Resampler(OUT_RATE_HZ)
    out = np.concatenate([resampler.push(pcm, round(OUT_RATE_HZ * factor)), resampler.flush()])
    return out.astype(np.int16)


def _seconds(samples: int) -> float:
    return samples / OUT_RATE_HZ


def _draw(rng: np.random.Generator, bounds: tuple[float, float], digits: int = 2) -> float:
    return round(float(rng.uniform(*bounds)), digits)


class _Babble:
    """The babble voices of one build: `BABBLE_VOICES` talkers, each a few sentences in a row
    at its own speed and pitch, synthesized once; an item takes `BABBLE_TALKERS` of them that
    do not say its own sentence."""

    def __init__(self, speaker: Speaker, seed: int) -> None:
        self._speaker = speaker
        self._rng = np.random.default_rng([seed, 2])
        self._voices: list[tuple[frozenset[str], Pcm16]] = []

    async def talkers(self, rng: np.random.Generator, exclude: str) -> list[Pcm16]:
        if not self._voices:
            for _ in range(BABBLE_VOICES):
                length_scale = _draw(self._rng, SPEED_RANGE)
                pitch = _draw(self._rng, PITCH_RANGE)
                chosen = [UTTERANCES[int(i)] for i in self._rng.choice(len(UTTERANCES), 3, False)]
                parts: list[Pcm16] = []
                for text in chosen:
                    parts.append(await self._speaker.say(text, length_scale, pitch))
                    gap_s = _draw(self._rng, (0.05, 0.15))
                    parts.append(np.zeros(round(OUT_RATE_HZ * gap_s), np.int16))
                self._voices.append((frozenset(chosen), np.concatenate(parts)))
        usable = [pcm for said, pcm in self._voices if exclude not in said]
        picked = rng.choice(len(usable), min(BABBLE_TALKERS, len(usable)), replace=False)
        return [usable[int(i)] for i in picked]


async def _noise_for(
    condition: str, n: int, rng: np.random.Generator, babble: _Babble, text: str
) -> Pcm16:
    kind, _ = CONDITIONS[condition]
    if kind == "pink":
        return noise.pink(rng, n)
    if kind == "white":
        return noise.white(rng, n)
    if kind == "hum":
        return noise.hum(rng, n)
    if kind == "babble":
        return noise.babble(rng, n, await babble.talkers(rng, text))
    raise ValueError(f"no noise for condition {condition!r}")


async def _item(
    speaker: Speaker,
    babble: _Babble,
    seed: int,
    index: int,
    condition: str,
    kind: Kind,
    sentence: str | tuple[str, str],
    draws: np.random.Generator,
) -> EvalItem:
    length_scale, pitch = _draw(draws, SPEED_RANGE), _draw(draws, PITCH_RANGE)
    lead = np.zeros(round(LEAD_S * OUT_RATE_HZ), np.int16)
    pause_span_s: tuple[float, float] | None = None
    after_pause = ""
    if isinstance(sentence, tuple):
        before, after_pause = sentence
        # A trailing comma keeps the voice up, as a speaker's does before a pause.
        first = await speaker.say(before + ",", length_scale, pitch)
        second = await speaker.say(after_pause, length_scale, pitch)
        gap = np.zeros(round(_draw(draws, PAUSE_RANGE_S) * OUT_RATE_HZ), np.int16)
        speech = np.concatenate([first, gap, second])
        start = lead.size + first.size
        pause_span_s = (_seconds(start), _seconds(start + gap.size))
        text = f"{before} {after_pause}"
    else:
        text = sentence
        speech = await speaker.say(text, length_scale, pitch)
    noisy = condition != "clean"
    tail = np.zeros(round(TAIL_S * OUT_RATE_HZ) if noisy else 0, np.int16)
    clean = np.concatenate([lead, speech, tail])
    pcm = clean
    if noisy:
        # Noise from its own stream, so one item's noise does not depend on the others.
        rng = np.random.default_rng([seed, index, 1])
        background = await _noise_for(condition, clean.size, rng, babble, text)
        speech_part, noise_part = noise.mix_parts(clean, background, CONDITIONS[condition][1])
        pcm = np.rint(speech_part + noise_part).astype(np.int16)
        clean = np.rint(speech_part).astype(np.int16)  # as loud as it is in pcm
    words = text.rstrip(".?!").split()
    short = " ".join(words[:5]) + (" …" if len(words) > 5 else "")
    return EvalItem(
        label=f"{index:02d} {condition} {kind}: {short}",
        text=text,
        condition=condition,
        kind=kind,
        pcm48=pcm,
        speech_end_s=_seconds(lead.size + speech.size),
        speech_start_s=_seconds(lead.size),
        pause_span_s=pause_span_s,
        after_pause=after_pause,
        length_scale=length_scale,
        pitch=pitch,
        clean48=clean,
    )


async def build(
    seed: int, size: Size, pool: TtsWorkerPool, *, speaker: Speaker | None = None
) -> list[EvalItem]:
    """The evaluation set for `seed`: "quick" (7 items, ~30 s of audio, for CI) or "full"
    (88 items: every condition with 12 sentences, and every pause sentence clean and in
    pink noise). Pass a `speaker` to share its synthesis cache between builds."""
    plan = {"quick": QUICK_PLAN, "full": FULL_PLAN}[size]
    speaker = speaker or Speaker(pool)
    babble = _Babble(speaker, seed)
    draws = np.random.default_rng([seed, 0])
    plain_order = [UTTERANCES[int(i)] for i in draws.permutation(len(UTTERANCES))]
    pause_order = [PAUSE_SENTENCES[int(i)] for i in draws.permutation(len(PAUSE_SENTENCES))]
    items: list[EvalItem] = []
    next_plain = next_pause = 0
    for condition, kind, count in plan:
        for _ in range(count):
            sentence: str | tuple[str, str]
            if kind == "pause":
                sentence = pause_order[next_pause % len(pause_order)]
                next_pause += 1
            else:
                sentence = plain_order[next_plain % len(plain_order)]
                next_plain += 1
            items.append(
                await _item(speaker, babble, seed, len(items), condition, kind, sentence, draws)
            )
    # Interleave conditions, so that drift over a long call is not read as a condition's effect.
    order = draws.permutation(len(items))
    return [items[int(i)] for i in order]
