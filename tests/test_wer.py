"""Word error rate and its normalisation (numbers, contractions, punctuation)."""

from __future__ import annotations

import pytest

from harness.wer import spell, wer, words


@pytest.mark.parametrize(
    ("n", "spoken"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (305, "three hundred five"),
        (999, "nine hundred ninety nine"),
    ],
)
def test_spell(n: int, spoken: str) -> None:
    assert spell(n) == spoken


def test_digits_and_words_compare_equal() -> None:
    assert wer("What is twenty divided by four?", "What is 20 divided by 4?") == 0.0
    assert wer("seven times six is forty two", "7 times 6 is 42.") == 0.0
    assert words("What's 1000?") == ["what", "is", "1000"], "beyond 999: left as digits"


def test_errors_count() -> None:
    assert wer("book a table for two", "book the table for two") == pytest.approx(0.2)
    assert wer("book a table", "") == 1.0
    assert wer("", "") == 0.0 and wer("", "hello") == 1.0
