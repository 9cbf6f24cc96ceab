"""Word error rate (word-level Levenshtein distance / reference length)."""

from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell(n: int) -> str:
    """0..999 in words, the way a speaker says them ("forty two", "three hundred five")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + ("" if rest == 0 else " " + spell(rest))


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
    "i'd": "i would",
    "you'd": "you would",
    "we'd": "we would",
    "i've": "i have",
    "we're": "we are",
    "they're": "they are",
    "isn't": "is not",
    "doesn't": "does not",
    "won't": "will not",
    "there's": "there is",
    "where's": "where is",
    "when's": "when is",
    "how's": "how is",
}


def words(text: str) -> list[str]:
    """Normalized words: lower case, no punctuation, numbers up to 999 spelled, contractions
    expanded ("What's 20 + 4?" and "what is twenty four" compare word for word)."""
    out: list[str] = []
    for w in re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split():
        if w.isdigit() and len(w) <= 3:
            w = spell(int(w))
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
