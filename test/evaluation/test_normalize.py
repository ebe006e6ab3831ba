"""Goldens of the one answer normalization and the whole-word containment rule."""
from __future__ import annotations

import pytest

from chatspot_ros.evaluation.normalize import contains_answer, contains_phrase, find_phrase, normalize_answer


@pytest.mark.parametrize("text, expected", [
    ("The Red Cube.", "red cube"),
    ("  a   BLUE\tball!! ", "blue ball"),
    ("An apple, the pear and a plum", "apple pear and plum"),
    ("red-cube", "red cube"),
    ("It's the cat's toy", "it s cat s toy"),
    ("three cats", "3 cats"),
    ("Twenty-one pilots", "21 pilots"),
    ("twenty one", "21"),
    ("twenty", "20"),
    ("ninety nine", "99"),
    ("twenty zero", "20 0"),
    ("zero", "0"),
    ("one hundred", "1 hundred"),
    ("the first one", "first 1"),
    ("1,000 people", "1000 people"),
    ("3.5 m", "3.5 m"),
    ("end. Next", "end next"),
    ("$5 (five) dollars", "5 5 dollars"),
    ("“Quoted” — text…", "quoted text"),
    ("ＳＴＯＰ", "stop"),  # full-width letters (NFKC)
    ("STRASSE Straße", "strasse strasse"),  # case folding
    ("", ""),
    ("the a an", ""),
])
def test_normalize_goldens(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_articles_can_be_kept() -> None:
    assert normalize_answer("The End", drop_articles=False) == "the end"


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        normalize_answer(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer, truth, expected", [
    ("This is a red cube.", "red cube", True),
    ("This is a red cube.", "Red Cube", True),
    ("a black cat", "cat", True),
    ("a category", "cat", False),  # whole words only
    ("I see two dogs", "2", True),  # number words -> digits on both sides
    ("I see 2 dogs", "two", True),
    ("the sign says STOP!", "stop", True),
    ("the sign says ST OP", "stop", False),
    ("exit 12", "EXIT 12", True),
    ("exit 123", "exit 12", False),
    ("the cube is red", "red cube", False),  # order matters
    ("anything", "", False),  # an empty truth is never found
    ("it says the", "THE", True),  # a truth made of articles only is compared with articles kept
    ("it says nothing", "THE", False),
])
def test_contains_answer_goldens(answer: str, truth: str, expected: bool) -> None:
    assert contains_answer(answer, truth) is expected


def test_contains_phrase_and_find_phrase() -> None:
    assert contains_phrase("red cube on blue ball", "blue ball")
    assert not contains_phrase("red cube", "")
    assert find_phrase("put red cube on blue ball".split(), ["blue", "ball"]) == 4
    assert find_phrase(["a"], []) == -1
    assert find_phrase(["red"], ["red", "cube"]) == -1
