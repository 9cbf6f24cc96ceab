"""Token stream → speakable units (pure).

TTS sounds best on whole sentences, but waiting for a sentence delays the first audio. The
chunker emits a unit at a sentence end; at a clause break (, ; : —) once the pending text is
long enough to sound natural; and at a word boundary when text runs on without punctuation.

The first unit of a reply is the one the listener waits for, and piper synthesizes a unit in
one piece (its time grows with the length: ~4 ms a character on an idle core, 0.35 s for an
80-character sentence, several times that on a loaded machine). So the first unit is cut
short: at a clause break once it has `first_clause_min_chars`, before a conjunction once it has
`first_min_words` words, and within `first_max_chars` before the last preposition (else at the
last word boundary) that leaves it `first_min_words` words (60 characters: about 12
words, ~0.25 s of synthesis idle, ~3-4 s of speech, which covers the synthesis of the next
unit even on a loaded machine). Four words is about the shortest phrase that still sounds like
a phrase before a conjunction; a comma is a natural pause already, so 12 characters do there.
Later units keep the sentence-sized rules (prosody): they are synthesized while earlier audio
plays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m no approx dept".split()
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"[,;:—–]\s")
# A conjunction a first unit may be cut before (the space before it ends the unit).
_CONJUNCTION = re.compile(
    r"\s(?=(?:and|but|or|so|because|while|when|whenever|although|though|until|which|then|if)\s)",
    re.IGNORECASE,
)
# Where a first unit that must be cut for length reads best: before a preposition.
_PREPOSITION = re.compile(
    r"\s(?=(?:on|in|at|to|for|with|from|of|about|into|after|before|near|by)\s)", re.IGNORECASE
)


@dataclass(frozen=True)
class ChunkerConfig:
    first_clause_min_chars: int = 12
    first_min_words: int = 4  # before a conjunction (first unit only)
    first_max_chars: int = 60  # the first unit is cut at a word boundary by then
    clause_min_chars: int = 40
    max_chars: int = 180


class Chunker:
    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self._buf = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        units: list[str] = []
        while (unit := self._next_unit()) is not None:
            units.append(unit)
        return units

    def flush(self) -> list[str]:
        unit = _clean(self._buf)
        self._buf = ""
        if unit:
            self._emitted += 1
            return [unit]
        return []

    def _next_unit(self) -> str | None:
        cut = self._find_cut()
        if cut is None:
            return None
        unit, self._buf = _clean(self._buf[:cut]), self._buf[cut:].lstrip()
        if not unit:
            return None
        self._emitted += 1
        return unit

    def _find_cut(self) -> int | None:
        """The earliest valid cut, so the units don't depend on how the text was streamed."""
        buf, cfg = self._buf, self.config
        first = self._emitted == 0
        min_clause = cfg.first_clause_min_chars if first else cfg.clause_min_chars
        max_chars = min(cfg.max_chars, cfg.first_max_chars) if first else cfg.max_chars
        cuts = [
            m.end()
            for m in _SENTENCE_END.finditer(buf)
            if not _is_false_sentence_end(buf, m.start())
        ]
        cuts += [m.end() for m in _CLAUSE_END.finditer(buf) if m.start() + 1 >= min_clause]
        if first:
            cuts += [
                m.end()
                for m in _CONJUNCTION.finditer(buf)
                if len(buf[: m.start()].split()) >= cfg.first_min_words
            ]
        cut = min(cuts, default=None)
        if cut is not None and len(buf[:cut].rstrip()) <= max_chars:
            return cut
        if len(buf) > max_chars:
            if first:
                phrase = [
                    m.end()
                    for m in _PREPOSITION.finditer(buf, 0, max_chars + 1)
                    if len(buf[: m.start()].split()) >= cfg.first_min_words
                ]
                if phrase:
                    return phrase[-1]
            space = buf.rfind(" ", 0, max_chars + 1)
            return space + 1 if space > 0 else max_chars
        return None


def _is_false_sentence_end(buf: str, dot: int) -> bool:
    """A '.' after an abbreviation or an initial is not the end of a sentence."""
    if buf[dot] != ".":
        return False
    word = buf[:dot].rsplit(None, 1)[-1] if buf[:dot].strip() else ""
    word = word.lower().lstrip("(\"'")
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _clean(text: str) -> str:
    return " ".join(text.split())
