"""Final answers: the one place that extracts, normalizes and compares them.

Data filtering (is this teacher trace right?) and evaluation (is this student right?) must
agree on what "the answer" is, so both go through these functions. Protocol-faithful extractors
(Kojima et al.'s answer cleansing, lm-evaluation-harness's GSM8K filters) live here too, so that
one module owns every way an answer is read.

Conventions:

* Three kinds of answer: ``"number"`` (GSM8K, SVAMP, ASDiv, MultiArith, some BBH tasks),
  ``"yesno"`` (StrategyQA, yes/no and True/False BBH tasks) and ``"text"`` (BBH letters like
  ``(A)``, words, sequences).
* Answer markers: ``the answer is`` (also ``was``/``would be``/``will be``/``should be``, and with
  a parenthetical as in Kojima et al.'s ``the answer (arabic numerals) is`` / ``the answer (Yes or
  No) is``; ``Therefore,``/``So``/``among A through E,`` before it change nothing); ``answer:`` only
  as a label (at the start of the text or of a line or sentence, optionally ``Final``/``The``, in
  ``**bold**`` or after ``#``); ``####``; ``\\boxed{...}`` (the box content is the answer); and
  ``the answer cannot ...``, a marker that says there is no answer.
* False markers are reasoning, not answers, and are skipped: ``the answer is`` followed by a word
  that starts a description (``to``, ``that``, ``the``, ``in``, ``found``, ``given``, ...; for text
  answers only the unambiguous ones, since a text answer may start with ``the``), and an ``answer:``
  label followed by words that neither are the answer nor say there is none (``Answer: Let's
  think...``).
* The *last* real marker decides (models correct themselves and restate the answer; an answer
  followed by a restart without a marker of its own keeps that answer). What follows it is its
  answer: for numbers the first sentence (``The answer is 6 / 2 = 3.`` gives the result after
  the last ``=``, ``4 hours and 30 minutes`` gives 4), for yes/no the first yes/no word of the
  first sentence, for text the rest of the line (an option ``(B) ...`` gives ``b``). When that
  is not an answer of the kind -- empty, words only (``two hundred ninety-four``), negated
  (``not 502``) or a non-answer (``not known``, ``cannot be determined``, ``depends on``,
  ``unknown``, ``incorrect``) -- the result is None: a text with a marker is never read from
  anywhere else.
* Without any real marker: a number is the last number in the text; yes/no is the leading word or
  else the last yes/no/true/false word; text is the whole text. `read_answer` names the method.
* Numbers are canonical decimal strings: thousands separators, ``$`` and ``%`` dropped, ``-0``
  is ``0``, trailing zeros dropped (``"51.0" -> "51"``, ``"0.50" -> "0.5"``), and plain fractions
  become decimals (``"1/2" -> "0.5"``, also ``\\frac{1}{2}``; non-terminating ones are rounded to
  12 decimals), so ``0.5`` matches ``1/2``. Dates such as ``12/14/1937`` are not numbers.
* Yes/no answers are ``"yes"`` or ``"no"``; ``true``/``false`` map to ``yes``/``no`` because
  the StrategyQA teacher traces answer ``The answer is True``.
* Text answers are stripped, lower-cased, whitespace-collapsed, lose ``**`` bold, a trailing
  period and one pair of wrapping parentheses (``"(A)." -> "a"``).
* Number tokens longer than 100 characters are junk, not answers.
* Nothing here raises on junk text: unusable input gives ``None`` or ``False``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from cotdistill.errors import ConfigError

KINDS = ("number", "yesno", "text")
NEXT_QUESTION = ("\nQuestion:", "\nQ:")  # the question blocks of formats.py and of BBH
# How `read_answer` found its answer: after a marker, the three fallbacks without one, or nothing.
EXTRACTION_METHODS = ("marker", "last_number", "leading_word", "last_word", "whole_text", "none")

# Relative tolerance for numeric comparison, plus an absolute floor so rounding noise around 0
# (e.g. a 12-decimal fraction) still matches.
REL_TOL = Fraction(1, 10**6)
ABS_TOL = Fraction(1, 10**9)
# Longer digit runs are junk (IDs, runaway generations), not answers; the cap keeps parsing cheap.
MAX_DIGITS = 100
# How far past `\boxed{` a box may run before it is junk (keeps brace matching cheap).
MAX_BOX = 500

_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})

# "the answer is", "the answer (arabic numerals) is", "the final answer would be", ...
_VERBAL_MARKER = re.compile(
    r"\banswer(?:\s*\([^()\n]{0,40}\))?\s+(?:is|was|would\s+be|will\s+be|should\s+be)\b\s*:?",
    re.IGNORECASE,
)
# "Answer:", "Final answer:", "**Answer:**", "**Final Answer:**", "## Answer:" -- a label, so at the
# start of the text, a line or a sentence.
_LABEL_MARKER = re.compile(
    r"(?:^|(?<=[\n.!?]))[*#>_ \t]*(?:the\s+)?(?:final\s+)?answer\s*\**\s*:\s*\**",
    re.IGNORECASE,
)
_HASH_MARKER = re.compile(r"####")
_BOX_MARKER = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "The answer cannot be determined": a marker that says there is no answer.
_DECLINED_MARKER = re.compile(r"\banswer\s+(?:cannot|can't|can\s+not|could\s+not|couldn't)\b", re.IGNORECASE)

# A word right after "the answer is" that makes the phrase reasoning ("the answer is to add ...",
# "the answer is the monthly cost times 12", "the answer is given as 57"), not an answer.
_DESCRIBING = (
    "to", "that", "this", "these", "those", "the", "then", "in", "on", "at", "of", "for", "by", "with",
    "from", "because", "since", "how", "what", "which", "who", "when", "where", "whether", "if", "found",
    "obtained", "calculated", "computed", "determined", "given", "supposed", "asking", "looking",
    "expected", "based", "a", "an", "still", "also",
)
# A text answer may start with "the", "a", "in" (a film title, a sorted word list): only these count.
_DESCRIBING_TEXT = (
    "to", "that", "because", "since", "how", "whether", "found", "obtained", "calculated", "computed",
    "determined", "given", "supposed", "based",
)
_FALSE_NEXT = {
    kind: re.compile(r"[\s*]*(?:" + "|".join(words) + r")\b", re.IGNORECASE)
    for kind, words in (("number", _DESCRIBING), ("yesno", _DESCRIBING), ("text", _DESCRIBING_TEXT))
}
# Words before the answer (or instead of it) that say there is none: "not known", "cannot be
# determined", "depends on", "not 502".
_NON_ANSWER = re.compile(
    r"\b(?:not|\w+n't|cannot|can\s+not|never|neither|unknown|unknowable|unclear|undetermined|indeterminate|"
    r"undefined|depends|dependent|impossible|insufficient|none|n/a|incorrect|wrong)\b",
    re.IGNORECASE,
)
_TEXT_NON_ANSWER = re.compile(
    r"[\s*\"'(]*(?:not\s+(?:known|given|provided|possible|determinable|enough|clear)|cannot\b|can't\b|"
    r"unknown\b|unclear\b|undetermined\b|indeterminate\b|it\s+depends|depends\s+on|impossible\b|"
    r"insufficient\b|none\s+of\s+(?:these|them)\b)",
    re.IGNORECASE,
)

# A number token: optional "-" and "$", digits with optional comma thousands groups, optional
# decimals, optional "/denominator". Not inside a word, a decimal or a date (the lookarounds).
_NUMBER = re.compile(
    r"(?<![\w./])(?P<sign>-)?\$?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?(?![\d/])(?!,\d{3})",
    re.ASCII,
)
# Where a number answer could begin (for the words before it): a digit, or "$"/"-" before one.
_NUMBER_START = re.compile(r"-?\$?\d")

_YESNO_WORD = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_YESNO_MAP = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}

# End of a sentence: a period not followed by a digit (so decimals survive), or a line break.
_SENTENCE_END = re.compile(r"\.(?!\d)|\n")
# An option answer "(B)" or "(B) Monday" (a single letter in parentheses) is the letter.
_OPTION = re.compile(r"[\s*]*\(([A-Za-z])\)(?![^\s.,;:!?*])")

_UNIT_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")
_WRAPPED = re.compile(r"^\((.*)\)$", re.DOTALL)

# LaTeX in a box: \frac{a}{b} (and \dfrac, \tfrac, \frac12) becomes a/b; \text{...} and friends lose
# the command; escapes and spacing commands go.
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LATEX_DROP = re.compile(r"\\(?:left|right|displaystyle|,|;|!|quad|qquad)|\^\s*\{?\\circ\}?|\\?[{}]")


@dataclass(frozen=True)
class Extraction:
    """An extracted answer (None when there is none) and how it was found (one of EXTRACTION_METHODS),
    so an evaluation can report how many answers came from a marker and how many from a fallback."""

    answer: str | None
    method: str


_NONE = Extraction(None, "none")


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


def _first_sentence(text: str) -> str:
    end = _SENTENCE_END.search(text)
    return text if end is None else text[: end.start()]


def _normalize_text(text: str) -> str | None:
    cleaned = " ".join(text.replace("**", " ").split()).strip("*\"' ").lower()
    cleaned = cleaned.rstrip(".").strip().strip("*\"' ")
    wrapped = _WRAPPED.match(cleaned)
    if wrapped:
        cleaned = wrapped.group(1).strip()
    return cleaned or None


def _box_content(text: str, start: int) -> str | None:
    """The text inside the braces opened just before `start`, or None when they never close."""
    depth = 1
    for position in range(start, min(len(text), start + MAX_BOX)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:position]
    return None


def _latex_to_text(latex: str) -> str:
    """Box content as plain text: "\\frac{1}{2}" -> "1/2", "\\text{Yes}" -> "Yes", "\\$42" -> "$42"."""
    text = latex.replace("\\$", "$").replace("\\%", "%")
    for _ in range(4):  # nested \frac / \text, innermost first
        text = _LATEX_FRAC.sub(r"\1/\2", _LATEX_WRAPPER.sub(r"\1", text))
    text = _LATEX_FRAC_SHORT.sub(r"\1/\2", text)
    return " ".join(_LATEX_DROP.sub(" ", text).split())


@dataclass(frozen=True)
class _Marker:
    """One answer marker: where its answer starts, and what kind of marker it is."""

    start: int
    end: int
    form: str  # "verbal", "label", "hash", "box" or "declined"
    boxed: str | None = None  # the box's content, for "box"


def _markers(text: str) -> list[_Marker]:
    """Every answer marker in the text, in order of position."""
    found = [_Marker(m.start(), m.end(), "verbal") for m in _VERBAL_MARKER.finditer(text)]
    found += [_Marker(m.start(), m.end(), "label") for m in _LABEL_MARKER.finditer(text)]
    found += [_Marker(m.start(), m.end(), "hash") for m in _HASH_MARKER.finditer(text)]
    found += [_Marker(m.start(), m.end(), "declined") for m in _DECLINED_MARKER.finditer(text)]
    for match in _BOX_MARKER.finditer(text):
        content = _box_content(text, match.end())
        if content is not None:
            found.append(_Marker(match.start(), match.end() + len(content) + 1, "box", content))
    return sorted(found, key=lambda marker: marker.start)


def _label_starts_answer(rest: str, kind: str) -> bool:
    """Whether an "answer:" label is followed by an answer (or by words saying there is none)."""
    rest = rest.lstrip(" \t\n*$(\\")
    if not rest or _NON_ANSWER.match(rest):
        return True
    if kind == "number":
        return _NUMBER_START.match(rest) is not None or rest.startswith("boxed")
    if kind == "yesno":
        return _YESNO_WORD.match(rest) is not None
    return re.match(r"(?:let'?s|let\s+us|we|first|to)\b", rest, re.IGNORECASE) is None


def _is_real(marker: _Marker, text: str, kind: str) -> bool:
    """Whether a marker introduces an answer (see the module docstring), not reasoning."""
    if marker.form == "verbal":
        return _FALSE_NEXT[kind].match(text, marker.end) is None
    if marker.form == "label":
        return _label_starts_answer(text[marker.end : marker.end + 200], kind)
    return True


def _marked(text: str, kind: str) -> str | None:
    """What the last real marker introduces (the box content for a box), or None without one."""
    for marker in reversed(_markers(text)):
        if _is_real(marker, text, kind):
            if marker.boxed is not None:
                return _latex_to_text(marker.boxed)
            if marker.form == "declined":
                return ""
            return text[marker.end :].lstrip()
    return None


def _marked_number(rest: str) -> str | None:
    sentence = _first_sentence(rest)
    start = _NUMBER_START.search(sentence)
    if _NON_ANSWER.search(sentence if start is None else sentence[: start.start()]):
        return None  # "not known", "not 502", "cannot be determined"
    # "The answer is 6 / 2 = 3." -> the result after the last "=" in that sentence.
    numbers = _numbers(sentence.rsplit("=", 1)[-1])
    return numbers[0] if numbers else None


def _marked_yesno(rest: str) -> str | None:
    sentence = _first_sentence(rest)
    word = _YESNO_WORD.search(sentence)
    if _NON_ANSWER.search(sentence if word is None else sentence[: word.start()]):
        return None
    return None if word is None else _YESNO_MAP[word.group(1).lower()]


def _marked_text(rest: str) -> str | None:
    # Only a line break ends a text answer: "Mrs. Hilt" must survive.
    line = rest.split("\n", 1)[0]
    if _TEXT_NON_ANSWER.match(line):
        return None
    option = _OPTION.match(line)
    return option.group(1).lower() if option else _normalize_text(line)


_READ_MARKED = {"number": _marked_number, "yesno": _marked_yesno, "text": _marked_text}


def stated_kind(text: str) -> str:
    """"yesno" when the last real answer marker is followed directly by yes/no/true/false, else "number":
    how a trace file of mixed answer types says which kind its answer is."""
    rest = _marked(text, "yesno")
    return "yesno" if rest is not None and _YESNO_WORD.match(rest.lstrip(" \t\n*\"'(")) else "number"


def _fallback(text: str, kind: str) -> Extraction:
    """The answer of a text without any real marker."""
    if kind == "number":
        numbers = _numbers(text)
        return Extraction(numbers[-1], "last_number") if numbers else _NONE
    if kind == "yesno":
        leading = _YESNO_WORD.match(text.strip(" \t\n*\"'("))
        if leading:
            return Extraction(_YESNO_MAP[leading.group(1).lower()], "leading_word")
        words = _YESNO_WORD.findall(text)
        return Extraction(_YESNO_MAP[words[-1].lower()], "last_word") if words else _NONE
    answer = _normalize_text(text)
    return _NONE if answer is None else Extraction(answer, "whole_text")


def read_answer(text: str, kind: str = "number") -> Extraction:
    """The normalized final answer in model or teacher output and how it was found.

    The last real marker decides, and what it introduces is the answer or there is none (never a
    fallback to other numbers or words in the text); only a text without any marker falls back.
    """
    _check_kind(kind)
    if not isinstance(text, str):
        return _NONE
    text = text.translate(_MINUS_SIGNS)
    rest = _marked(text, kind)
    if rest is None:
        return _fallback(text, kind)
    answer = _READ_MARKED[kind](rest)
    return _NONE if answer is None else Extraction(answer, "marker")


def extract_answer(text: str, kind: str = "number") -> str | None:
    """The normalized final answer in model or teacher output, or None when there is none."""
    return read_answer(text, kind).answer


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


# ---------------------------------------------------------------------------------------------------------
# Protocol-faithful extractors: published numbers are only comparable when read the published way.

_KOJIMA_NUMBER = re.compile(r"-?\d+\.?\d*")
_KOJIMA_PUNCT = re.compile(r"\"|'|\n|\.|\s|:|,")
_KOJIMA_OPTION = re.compile(r"A|B|C|D|E")


def kojima_answer(text: str, kind: str) -> Extraction:
    """Kojima et al.'s answer cleansing of the stage-2 output (the text generated after the trigger):
    number: commas removed, the FIRST number (regex -?\\d+\\.?\\d*, trailing '.' dropped); yesno: first yes/no word
    after lower-casing and replacing quotes/punctuation with spaces; text: option letter A-E first found, else the
    normalized first line.

    Mirrors `answer_cleansing` of github.com/kojima-takeshi188/zero_shot_cot (utils.py) for zero-shot-CoT;
    numbers are then made canonical like every other answer here ("18.50" -> "18.5"), which changes no
    comparison. Method "marker" when an answer is found, "none" otherwise.
    """
    _check_kind(kind)
    if not isinstance(text, str):
        return _NONE
    answer: str | None = None
    if kind == "number":
        found = _KOJIMA_NUMBER.findall(text.replace(",", ""))
        if found:
            token = found[0][:-1] if found[0].endswith(".") else found[0]
            answer = _format_number(Fraction(token)) if len(token) <= MAX_DIGITS else None
    elif kind == "yesno":
        words = [w for w in _KOJIMA_PUNCT.sub(" ", text.lower()).split(" ") if w in ("yes", "no")]
        answer = words[0] if words else None
    else:
        option = _KOJIMA_OPTION.search(text)
        answer = option.group(0).lower() if option else _normalize_text(text.strip().split("\n", 1)[0])
    return _NONE if answer is None else Extraction(answer, "marker")


# lm-evaluation-harness 0.4.13, tasks/gsm8k/gsm8k.yaml: the two filter pipelines (RegexFilter then
# take_first, which keeps the first of a document's repeats: one text here) and exact_match's options.
LM_EVAL_INVALID = "[invalid]"
_LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_LM_EVAL_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


def _lm_eval_regex(pattern: re.Pattern[str], text: str, group_select: int) -> str:
    """lm_eval.filters.extraction.RegexFilter on one response: findall, pick a match, first non-empty
    group of a tuple, strip; "[invalid]" when nothing matches."""
    if not isinstance(text, str):
        text = ""
    matches = pattern.findall(text)
    if not matches:
        return LM_EVAL_INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        groups = [group for group in match if group]
        match = groups[0] if groups else LM_EVAL_INVALID
    return match.strip()


def lm_eval_strict(text: str) -> str:
    """lm-eval gsm8k 'strict-match': the first "#### <number>" group, else "[invalid]"."""
    return _lm_eval_regex(_LM_EVAL_STRICT, text, 0)


def lm_eval_flexible(text: str) -> str:
    """lm-eval gsm8k 'flexible-extract': the LAST number-like run (group_select -1), else "[invalid]"."""
    return _lm_eval_regex(_LM_EVAL_FLEXIBLE, text, -1)


def lm_eval_exact_match(prediction: str, gold: str) -> bool:
    """lm-eval exact_match as gsm8k configures it: the regexes_to_ignore [",", "\\$", "(?s).*#### ",
    "\\.$"] removed from both in that order, then lower-cased (ignore_case), no punctuation or digit
    removal, and string equality of NumPy string arrays: no strip (the filters already stripped the
    prediction), except that NumPy drops trailing NUL characters. Non-strings are never a match."""
    if not isinstance(prediction, str) or not isinstance(gold, str):
        return False
    for pattern in _LM_EVAL_IGNORE:
        prediction, gold = re.sub(pattern, "", prediction), re.sub(pattern, "", gold)
    return prediction.lower().rstrip("\x00") == gold.lower().rstrip("\x00")
