"""How finished does an utterance sound? Sets how long a silence must last to end the turn.

A pure rule on the words of an accurate transcript (whisper punctuates and cases its output):

    COMPLETE    ends in . ? or ! and the last word can end a sentence ("What time is it?"),
                three words or more
    INCOMPLETE  ends in a word that needs more after it ("I want to", "and", "the", "um"),
                or in a comma or an ellipsis ("I'd like to...")
    UNKNOWN     no transcript yet, no punctuation to go by (a streaming partial), or one or
                two words ("No.", "Hello.": often the start of more)

The endpointer then waits `complete_ms`, `incomplete_ms` or its default silence. Numbers
(mean wait, false cut-offs) are in docs/measurements.md ("Hearing"); bench/hearing.py
measures them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Completeness(StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    UNKNOWN = "unknown"


# Words that (almost) never end a finished English utterance: articles, conjunctions,
# prepositions, possessives, subject pronouns, auxiliaries that start a verb phrase, fillers.
TRAILING_WORDS = frozenset(
    """
    a an the
    and or but nor so because if that than when while although though unless until since
    whether where which who whose
    to of in on at for with from by about into onto like as after before over under
    between through during without within toward towards per via
    my your our their his its
    i we they he she
    am are is was were be been being do does did have has had
    can could will would should shall may might must
    want wanna gonna need let's
    um uh er erm hmm mm uhm
    """.split()
)

_WORD = re.compile(r"[a-z0-9']+")
# One or two words ("No.", "Hello.") are often the start of more ("No, that's not what I
# meant"): they end the turn after the default silence, not the short one.
MIN_COMPLETE_WORDS = 3


def completeness(text: str) -> Completeness:
    stripped = text.strip()
    if not stripped:
        return Completeness.UNKNOWN
    if stripped.endswith(("...", "…", ",", "-", "—", ";", ":")):
        return Completeness.INCOMPLETE
    words = _WORD.findall(stripped.lower())
    if words and words[-1] in TRAILING_WORDS:
        return Completeness.INCOMPLETE
    if stripped[-1] in ".?!" and len(words) >= MIN_COMPLETE_WORDS:
        return Completeness.COMPLETE
    return Completeness.UNKNOWN


@dataclass(frozen=True)
class TurnEndConfig:
    """Silence (ms) that ends a turn, by how complete the transcript sounds."""

    complete_ms: int = 250
    incomplete_ms: int = 900
    read_words: bool = True  # False: the endpointer's fixed silence for every utterance

    def __post_init__(self) -> None:
        if not 0 < self.complete_ms <= self.incomplete_ms:
            raise ValueError("need 0 < complete_ms <= incomplete_ms")

    def silence_ms(self, text: str, default_ms: int) -> int:
        if not self.read_words:
            return default_ms
        match completeness(text):
            case Completeness.COMPLETE:
                return min(self.complete_ms, default_ms)
            case Completeness.INCOMPLETE:
                return max(self.incomplete_ms, default_ms)
            case Completeness.UNKNOWN:
                return default_ms
