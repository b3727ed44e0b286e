"""Final answers: the one place that extracts, normalizes and compares them.

Data filtering (is this teacher trace right?) and evaluation (is this student right?) must
agree on what "the answer" is, so both go through these functions.

Conventions:

* Three kinds of answer: ``"number"`` (GSM8K, SVAMP, ASDiv, MultiArith, some BBH tasks),
  ``"yesno"`` (StrategyQA, yes/no and True/False BBH tasks) and ``"text"`` (BBH letters like
  ``(A)``, words, sequences).
* An explicit marker wins over everything else: the *last* ``the answer is`` / ``answer:`` /
  ``####`` in the text. Otherwise a number is the last number in the text, and yes/no is the
  leading word or else the last yes/no/true/false word.
* Numbers are canonical decimal strings: thousands separators, ``$`` and ``%`` dropped, ``-0``
  is ``0``, trailing zeros dropped (``"51.0" -> "51"``, ``"0.50" -> "0.5"``), and plain fractions
  become decimals (``"1/2" -> "0.5"``; non-terminating ones are rounded to 12 decimals), so
  ``0.5`` matches ``1/2``. Dates such as ``12/14/1937`` are not numbers.
* Yes/no answers are ``"yes"`` or ``"no"``; ``true``/``false`` map to ``yes``/``no`` because
  the StrategyQA teacher traces answer ``The answer is True``.
* Text answers are stripped, lower-cased, whitespace-collapsed, lose a trailing period and
  one pair of wrapping parentheses (``"(A)." -> "a"``).
* Number tokens longer than 100 characters are junk, not answers.
* Nothing here raises on junk text: unusable input gives ``None`` or ``False``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from cotdistill.errors import ConfigError

KINDS = ("number", "yesno", "text")
NEXT_QUESTION = ("\nQuestion:", "\nQ:")  # the question blocks of formats.py and of BBH

# Relative tolerance for numeric comparison, plus an absolute floor so rounding noise around 0
# (e.g. a 12-decimal fraction) still matches.
REL_TOL = Fraction(1, 10**6)
ABS_TOL = Fraction(1, 10**9)
# Longer digit runs are junk (IDs, runaway generations), not answers; the cap keeps parsing cheap.
MAX_DIGITS = 100

_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})

_MARKER = re.compile(
    r"####|\b(?:final\s+)?answer\s*(?:is|was|would\s+be|:)\s*:?",
    re.IGNORECASE,
)

# A number token: optional "-" and "$", digits with optional comma thousands groups, optional
# decimals, optional "/denominator". Not inside a word, a decimal or a date (the lookarounds).
_NUMBER = re.compile(
    r"(?<![\w./])(?P<sign>-)?\$?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?(?![\d/])(?!,\d{3})",
    re.ASCII,
)

_YESNO_WORD = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_YESNO_MAP = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}

# End of a sentence: a period not followed by a digit (so decimals survive), or a line break.
_SENTENCE_END = re.compile(r"\.(?!\d)|\n")

_UNIT_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")
_WRAPPED = re.compile(r"^\((.*)\)$", re.DOTALL)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown answer kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def _to_fraction(match: re.Match[str]) -> Fraction | None:
    """The exact value of one number token, or None when it is not a usable number."""
    if match.end() - match.start() > MAX_DIGITS:
        return None
    try:
        value = Fraction(match.group("int").replace(",", "") + (match.group("dec") or ""))
        if match.group("den") is not None:
            value /= Fraction(match.group("den"))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return -value if match.group("sign") else value


def _format_number(value: Fraction) -> str | None:
    """Canonical decimal text for an exact value (None when absurdly long)."""
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    # Terminating decimals are exact; others are rounded to 12 places.
    places = max(twos, fives) if den == 1 else 12
    try:
        digits = str(round(abs(value) * 10**places)).rjust(places + 1, "0")
    except (ValueError, OverflowError):
        return None
    whole, frac = digits[: len(digits) - places], digits[len(digits) - places :].rstrip("0")
    text = f"{whole}.{frac}" if frac else whole
    return "0" if text == "0" else ("-" + text if value < 0 else text)


def _numbers(text: str) -> list[str]:
    """Canonical forms of every number token in `text`, in order."""
    found = []
    for match in _NUMBER.finditer(text):
        value = _to_fraction(match)
        formatted = None if value is None else _format_number(value)
        if formatted is not None:
            found.append(formatted)
    return found


def _after_last_marker(text: str) -> str | None:
    """The text after the last answer marker, or None without a marker."""
    markers = list(_MARKER.finditer(text))
    return text[markers[-1].end() :] if markers else None


def _first_sentence(text: str) -> str:
    end = _SENTENCE_END.search(text)
    return text if end is None else text[: end.start()]


def _normalize_text(text: str) -> str | None:
    cleaned = " ".join(text.split()).strip("*\"' ").lower()
    cleaned = cleaned.rstrip(".").strip()
    wrapped = _WRAPPED.match(cleaned)
    if wrapped:
        cleaned = wrapped.group(1).strip()
    return cleaned or None


def _extract_number(text: str) -> str | None:
    marked = _after_last_marker(text)
    if marked is not None:
        # "The answer is 6 / 2 = 3." -> the result after the last "=" in that sentence.
        sentence = _first_sentence(marked).rsplit("=", 1)[-1]
        numbers = _numbers(sentence)
        if numbers:
            return numbers[0]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def _extract_yesno(text: str) -> str | None:
    marked = _after_last_marker(text)
    if marked is not None:
        word = _YESNO_WORD.search(_first_sentence(marked))
        if word:
            return _YESNO_MAP[word.group(1).lower()]
    leading = _YESNO_WORD.match(text.strip(" \t\n*\"'("))
    if leading:
        return _YESNO_MAP[leading.group(1).lower()]
    words = _YESNO_WORD.findall(text)
    return _YESNO_MAP[words[-1].lower()] if words else None


def _extract_text(text: str) -> str | None:
    marked = _after_last_marker(text)
    if marked is None:
        return _normalize_text(text)
    # Only a line break ends a text answer: "Mrs. Hilt" must survive.
    return _normalize_text(marked.split("\n", 1)[0])


def extract_answer(text: str, kind: str = "number") -> str | None:
    """The normalized final answer in model or teacher output, or None when there is none."""
    _check_kind(kind)
    if not isinstance(text, str):
        return None
    text = text.translate(_MINUS_SIGNS)
    if kind == "number":
        return _extract_number(text)
    if kind == "yesno":
        return _extract_yesno(text)
    return _extract_text(text)


def normalize_answer(gold: str, kind: str = "number") -> str | None:
    """The normalized form of a gold answer string ("51.0" -> "51", "9 (apples)" -> "9")."""
    _check_kind(kind)
    if not isinstance(gold, str):
        return None
    gold = gold.translate(_MINUS_SIGNS)
    if kind == "number":
        numbers = _numbers(gold)
        return numbers[0] if numbers else None
    if kind == "yesno":
        word = _YESNO_WORD.search(gold)
        return _YESNO_MAP[word.group(1).lower()] if word else None
    return _normalize_text(gold)


def _parse_number(text: str) -> Fraction | None:
    match = _NUMBER.search(text)
    return None if match is None else _to_fraction(match)


def answers_match(pred: str | None, gold: str, kind: str = "number") -> bool:
    """Whether a prediction (raw or already extracted) equals the gold answer.

    Numbers match within a relative tolerance of 1e-6 (absolute 1e-9 near zero); yes/no and
    text answers match exactly after normalization. None and junk are never correct.
    """
    _check_kind(kind)
    want = normalize_answer(gold, kind)
    got = extract_answer(pred, kind) if isinstance(pred, str) else None
    if want is None or got is None:
        return False
    if kind != "number":
        return got == want
    a, b = _parse_number(got), _parse_number(want)
    if a is None or b is None:
        return False
    if a.denominator == 1 and b.denominator == 1:
        return a == b  # whole numbers match exactly: 1450001 is not 1450000, however large
    return abs(a - b) <= max(REL_TOL * max(abs(a), abs(b)), ABS_TOL)


def _is_number(gold: str) -> bool:
    """Whether a gold string is a single number, allowing a unit suffix like "(apples)"."""
    core = _UNIT_SUFFIX.sub("", gold.translate(_MINUS_SIGNS)).strip().rstrip(".%").strip()
    match = _NUMBER.fullmatch(core)
    return match is not None and _to_fraction(match) is not None


def infer_kind(source: str, gold: str) -> str:
    """The answer kind for a problem: "yesno" for StrategyQA or yes/no/true/false golds,
    "number" for numeric golds, else "text"."""
    if source.lower().startswith("strategyqa"):
        return "yesno"
    stripped = gold.strip().rstrip(".").strip().lower()
    if stripped in _YESNO_MAP:
        return "yesno"
    return "number" if _is_number(gold) else "text"


def clean_generation(text: str) -> str:
    """The answer part of a generation: a causal model (or a teacher) may go on to invent the next question."""
    for marker in NEXT_QUESTION:
        text = text.split(marker, 1)[0]
    return text.strip()


def majority_answer(extracted: Sequence[str | None]) -> str | None:
    """Self-consistency (Wang et al.): the most frequent extracted answer; ties go to the earliest sample.

    Samples with no extractable answer (None) do not vote; with no votes at all the result is None.
    """
    votes = Counter(answer for answer in extracted if answer is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(answer for answer in extracted if answer is not None and votes[answer] == top)
