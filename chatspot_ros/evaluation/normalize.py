"""Answer normalization for every "contains" rule of the evaluation (docs/evaluation.md).

One function, :func:`normalize_answer`, turns a model answer or a ground-truth string into a
canonical sequence of words; :func:`contains_answer` is the one containment rule built on it
(regional OCR, region VQA, action steps, the exact category matcher).

``normalize_answer`` applies, in order:

1. Unicode NFKC and case folding ("Ⅻ" -> "xii", "STOP" -> "stop").
2. Digit grouping commas go ("1,000" -> "1000"); a point between digits stays ("3.5").
3. Every other punctuation or symbol character (Unicode categories P* and S*) becomes a space
   ("red-cube" -> "red cube", "it's" -> "it s", "$5" -> "5").
4. The articles "a", "an", "the" are dropped.
5. Number words become digits: "zero" .. "nineteen", the tens "twenty" .. "ninety", and a ten
   followed by a unit ("twenty one", "twenty-one") -> "21". Nothing larger ("hundred") and no
   ordinals ("first" stays).
6. Words are joined by single spaces.

Containment is on whole words: "cat" is in "a black cat" but not in "category".
"""
from __future__ import annotations

import re
import unicodedata

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
NUMBER_WORDS: dict[str, int] = {**{w: i for i, w in enumerate(_UNITS)}, **_TENS}

_DIGIT_COMMA_RE = re.compile(r"(?<=\d),(?=\d)")
_DECIMAL_POINT_RE = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_MARK = "\uE000"  # a private-use character that keeps "3.5" together through step 3


def _is_punctuation_or_symbol(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def _number_words_to_digits(words: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        unit = NUMBER_WORDS.get(words[i + 1], 0) if i + 1 < len(words) else 0
        if word in _TENS and 1 <= unit <= 9:  # "twenty one" -> 21
            out.append(str(_TENS[word] + unit))
            i += 2
            continue
        out.append(str(NUMBER_WORDS[word]) if word in NUMBER_WORDS else word)
        i += 1
    return out


def normalize_words(text: str, *, drop_articles: bool = True) -> list[str]:
    """The words of ``normalize_answer(text)`` as a list."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string to normalize, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _DIGIT_COMMA_RE.sub("", text)
    text = _DECIMAL_POINT_RE.sub(_DECIMAL_MARK, text)
    text = "".join(" " if _is_punctuation_or_symbol(ch) else ch for ch in text)
    text = text.replace(_DECIMAL_MARK, ".")
    words = text.split()
    if drop_articles:
        words = [w for w in words if w not in ARTICLES]
    return _number_words_to_digits(words)


def normalize_answer(text: str, *, drop_articles: bool = True) -> str:
    """The canonical form of an answer or a ground truth (module docstring): words joined by spaces."""
    return " ".join(normalize_words(text, drop_articles=drop_articles))


def contains_phrase(haystack: str, needle: str) -> bool:
    """Whether the normalized ``needle`` occurs in the normalized ``haystack`` as whole words.

    Both arguments must already be normalized; an empty needle is never contained.
    """
    return bool(needle) and f" {needle} " in f" {haystack} "


def contains_answer(answer: str, truth: str) -> bool:
    """The evaluation's "the answer contains the ground truth" rule, on normalized text.

    A ground truth that consists of articles only (OCR of a sign reading "THE") would normalize
    to nothing; it is then compared with articles kept, so it can still be read correctly.
    """
    needle = normalize_answer(truth)
    if needle:
        return contains_phrase(normalize_answer(answer), needle)
    return contains_phrase(normalize_answer(answer, drop_articles=False), normalize_answer(truth, drop_articles=False))


def find_phrase(words: list[str], phrase: list[str]) -> int:
    """Index of the first whole-word occurrence of ``phrase`` in ``words``, or -1."""
    n = len(phrase)
    if n == 0:
        return -1
    for i in range(len(words) - n + 1):
        if words[i:i + n] == phrase:
            return i
    return -1
