"""Tests for agent.conversation.chunker: token stream → speakable units, fed whole and token by token."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from agent.conversation.chunker import Chunker, ChunkerConfig


def one_push(text: str, config: ChunkerConfig | None = None) -> list[str]:
    c = Chunker(config)
    return c.push(text) + c.flush()


def streamed(deltas: list[str], config: ChunkerConfig | None = None) -> list[str]:
    c = Chunker(config)
    units: list[str] = []
    for d in deltas:
        units += c.push(d)
    return units + c.flush()


def by_word(text: str) -> list[str]:
    """Like an LLM: the first word bare, then ' word' tokens."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def by_char(text: str) -> list[str]:
    return list(text)


def random_pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        pieces.append(text[i : i + n])
        i += n
    return pieces


CASES: list[tuple[str, str, list[str]]] = [
    (
        "sentences",
        "Hello there. How are you? I'm fine!",
        ["Hello there.", "How are you?", "I'm fine!"],
    ),
    ("ellipsis and ?!", "Wait... what?! Really.", ["Wait...", "what?!", "Really."]),
    ("unicode ellipsis", "Hmm… let me think. Okay.", ["Hmm…", "let me think.", "Okay."]),
    ("closing quote", 'He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
    ("closing paren", "It works (mostly.) Next one.", ["It works (mostly.)", "Next one."]),
    (
        "Dr. Mr. Mrs.",
        "Dr. Smith is here. Mr. and Mrs. Jones too.",
        ["Dr. Smith is here.", "Mr. and Mrs. Jones too."],
    ),
    (
        "e.g. and i.e.",
        "Try fruit e.g. apples. Or i.e. pears. Fine.",
        ["Try fruit e.g. apples.", "Or i.e. pears.", "Fine."],
    ),
    (
        "etc. vs. approx.",
        "Cats vs. dogs etc. are approx. even. Yes.",
        ["Cats vs. dogs etc. are approx. even.", "Yes."],
    ),
    ("abbreviation in parens", "See (Dr. Who) now. Ok.", ["See (Dr. Who) now.", "Ok."]),
    ("initials", "J. R. R. Tolkien wrote it. Done.", ["J. R. R. Tolkien wrote it.", "Done."]),
    (
        "decimals",
        "It costs 3.5 dollars. Pi is 3.14159 roughly.",
        ["It costs 3.5 dollars.", "Pi is 3.14159 roughly."],
    ),
    ("number at sentence end", "I am 42. You are 7. Ok", ["I am 42.", "You are 7.", "Ok"]),
    ("no whitespace after dot: not an end", "Visit example.com today", ["Visit example.com today"]),
    (
        "first clause at 12 chars",
        "Hello world, again and again",
        ["Hello world,", "again and again"],
    ),
    (
        "first clause at 11 chars is too short",
        "Hello word, again and again",
        ["Hello word, again and again"],
    ),
    (
        "clause marks ; : —",
        "Well now, here we go; then: this — that",
        ["Well now, here we go;", "then: this — that"],
    ),
    (
        "later clauses need 40 chars",
        "Okay, sure thing, I will look, and then tell you, and then we decide together, right",
        [
            "Okay, sure thing,",
            "I will look, and then tell you, and then we decide together,",
            "right",
        ],
    ),
    (
        "later clause at exactly 40 chars",
        "Alright then, " + "a" * 39 + ", b",
        ["Alright then,", "a" * 39 + ",", "b"],
    ),
    (
        "later clause at 39 chars is too short",
        "Alright then, " + "a" * 38 + ", b",
        ["Alright then,", "a" * 38 + ", b"],
    ),
    ("whitespace normalized", "  Hello \n  there.\tNext   one ", ["Hello there.", "Next one"]),
    ("only whitespace", "   \n\t ", []),
    ("empty", "", []),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_units(text: str, expected: list[str]) -> None:
    assert one_push(text) == expected


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("split", [by_word, by_char], ids=["by_word", "by_char"])
def test_streaming_gives_the_same_units(
    text: str, expected: list[str], split: Callable[[str], list[str]]
) -> None:
    assert streamed(split(text)) == expected


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in CASES[:12]], ids=[c[0] for c in CASES[:12]]
)
def test_random_pieces_give_the_same_units(text: str, expected: list[str], seed: int) -> None:
    assert streamed(random_pieces(text, seed)) == expected


SMALL = ChunkerConfig(first_clause_min_chars=12, clause_min_chars=40, max_chars=30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "one two three four five six seven eight nine ten eleven",
            ["one two three four five six", "seven eight nine ten eleven"],
        ),
        # A single word longer than max_chars is cut hard.
        ("a" * 50, ["a" * 30, "a" * 20]),
        ("x " + "a" * 50, ["x", "a" * 30, "a" * 20]),
        # At max_chars exactly nothing is forced.
        ("a" * 30, ["a" * 30]),
    ],
    ids=["word boundary", "long word", "short word then long word", "exactly max"],
)
def test_max_chars_split(text: str, expected: list[str]) -> None:
    assert one_push(text, SMALL) == expected
    assert streamed(by_char(text), SMALL) == expected


def test_long_run_on_splits_at_word_boundaries() -> None:
    words = [f"w{i}" for i in range(200)]
    text = " ".join(words)
    for units in (one_push(text), streamed(by_word(text)), streamed(by_char(text))):
        assert len(units) > 1
        assert all(len(u) <= 180 for u in units)
        # Nothing lost, no word cut in half.
        assert " ".join(units).split() == words


def test_units_come_out_as_soon_as_possible() -> None:
    c = Chunker()
    # A sentence end needs the following whitespace: "Hello." might still be "Hello.com".
    assert c.push("Hello.") == []
    assert c.push(" How") == ["Hello."]
    assert c.push(" are you?") == []
    assert c.push("\n") == ["How are you?"]
    assert c.flush() == []


def test_flush_returns_the_remainder_once() -> None:
    c = Chunker()
    assert c.push("First one. and then some") == ["First one."]
    assert c.flush() == ["and then some"]
    assert c.flush() == []
    assert c.push("") == []


def test_first_clause_rule_applies_only_to_the_first_unit() -> None:
    c = Chunker()
    assert c.push("Right. ") == ["Right."]
    # The second unit already needs clause_min_chars (40) at a comma.
    assert c.push("Well, that is a question, ") == []
    assert c.flush() == ["Well, that is a question,"]

    # The same text as the first unit of a reply is emitted at the comma (>= 12 chars).
    fresh = Chunker()
    assert fresh.push("Well, that is a question, ") == ["Well, that is a question,"]


@pytest.mark.parametrize(
    "text",
    [
        # A clause break that qualifies before a later sentence end in the same delta.
        "Well, first of all you need to know this, it matters a great deal. Next.",
        # A run-on longer than max_chars followed by a sentence end in the same delta.
        " ".join(["word"] * 50) + ". End.",
    ],
    ids=["clause before sentence end", "run-on before sentence end"],
)
def test_one_push_equals_streaming_when_clause_precedes_sentence_end(text: str) -> None:
    units = one_push(text)
    assert units == streamed(by_word(text))
    assert all(len(u) <= 180 for u in units)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The built-in responder's echo: no usable punctuation early, cut before "and".
        (
            "You said: I want to book a table for two and a room for the night. Tell me more.",
            [
                "You said: I want to book a table for two",
                "and a room for the night.",
                "Tell me more.",
            ],
        ),
        # Three words before a conjunction are too few: the sentence stays whole.
        (
            "Cats and dogs and birds sing all day long.",
            ["Cats and dogs and birds sing all day long."],
        ),
        # No clause break or conjunction: cut before the last preposition within 60 chars.
        (
            "You said: please tell me about the weather forecast in northern Scotland tomorrow morning.",
            [
                "You said: please tell me about the weather forecast",
                "in northern Scotland tomorrow morning.",
            ],
        ),
        (
            "You said: I would like to book a table for two people on Friday night at seven.",
            ["You said: I would like to book a table for two people", "on Friday night at seven."],
        ),
        # No preposition either: the last word boundary within 60 chars.
        (
            "You said: yesterday my little brother finally painted every single wall green.",
            ["You said: yesterday my little brother finally painted every", "single wall green."],
        ),
        # "android" is not "and"; later units keep whole sentences.
        (
            "My android phone is broken. It fell and then it broke and it is sad.",
            ["My android phone is broken.", "It fell and then it broke and it is sad."],
        ),
    ],
    ids=[
        "before and",
        "too few words",
        "before a preposition",
        "before on",
        "first max chars",
        "later units stay sentences",
    ],
)
def test_first_unit_is_cut_short(text: str, expected: list[str]) -> None:
    assert one_push(text) == expected
    assert streamed(by_word(text)) == expected
    assert streamed(by_char(text)) == expected
    assert len(expected[0]) <= 60
