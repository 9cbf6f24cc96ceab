"""Token stream → speakable units (pure).

TTS sounds best on whole sentences, but waiting for a sentence delays the first audio. The
chunker emits a unit at a sentence end; at a clause break (, ; :) once the pending text is long
enough to sound natural; and at a word boundary when text runs on without punctuation. The
first unit of a reply may be shorter, so speech starts sooner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m no approx dept".split()
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"[,;:—–]\s")


@dataclass(frozen=True)
class ChunkerConfig:
    first_clause_min_chars: int = 12
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
        min_clause = cfg.first_clause_min_chars if self._emitted == 0 else cfg.clause_min_chars
        cuts = [
            m.end()
            for m in _SENTENCE_END.finditer(buf)
            if not _is_false_sentence_end(buf, m.start())
        ]
        cuts += [m.end() for m in _CLAUSE_END.finditer(buf) if m.start() + 1 >= min_clause]
        cut = min(cuts, default=None)
        if cut is not None and len(buf[:cut].rstrip()) <= cfg.max_chars:
            return cut
        if len(buf) > cfg.max_chars:
            space = buf.rfind(" ", 0, cfg.max_chars + 1)
            return space + 1 if space > 0 else cfg.max_chars
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
