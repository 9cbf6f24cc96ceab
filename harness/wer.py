"""Word error rate (word-level Levenshtein distance / reference length)."""

from __future__ import annotations

import re

_NUM = {
    "0": "zero",
    "1": "one",
    "2": "two",
    "3": "three",
    "4": "four",
    "5": "five",
    "6": "six",
    "7": "seven",
    "8": "eight",
    "9": "nine",
    "10": "ten",
}


_CONTRACTIONS = {
    "what's": "what is",
    "it's": "it is",
    "i'm": "i am",
    "you're": "you are",
    "how're": "how are",
    "who're": "who are",
    "that's": "that is",
    "let's": "let us",
    "can't": "can not",
    "cannot": "can not",
    "don't": "do not",
    "i'll": "i will",
}


def words(text: str) -> list[str]:
    """Normalized words: lower case, no punctuation, digits spelled, contractions expanded."""
    out: list[str] = []
    for w in re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split():
        w = _NUM.get(w, w)
        out.extend(_CONTRACTIONS.get(w, w).split())
    return out


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)
