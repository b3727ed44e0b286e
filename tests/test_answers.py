"""Behaviour of answer extraction, normalization and comparison."""

from __future__ import annotations

import time

import pytest

from cotdistill.answers import (
    EXTRACTION_METHODS,
    Extraction,
    answers_match,
    extract_answer,
    infer_kind,
    kojima_answer,
    lm_eval_exact_match,
    lm_eval_flexible,
    lm_eval_strict,
    normalize_answer,
    read_answer,
)
from cotdistill.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 1,250.", "1250"),
        ("#### 72", "72"),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("answer: $3.50", "3.5"),
        ("Final answer: 18", "18"),
        ("-3", "-3"),
        ("12 apples", "12"),
        ("$3.50", "3.5"),
        ("50%", "50"),
        ("1/2", "0.5"),
        ("0.50", "0.5"),
        ("so the total is 12.", "12"),
        ("\u22123", "-3"),
        ("The answer is \u22122.75", "-2.75"),
        ("It dropped to -0.25 degrees", "-0.25"),
        ("Pay -$4.25 now", "-4.25"),
        ("1,234,567 people", "1234567"),
        ("51.0", "51"),
        ("-0", "0"),
        ("1/3", "0.333333333333"),
    ],
)
def test_extract_number_examples(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_marker_wins_over_later_numbers() -> None:
    assert extract_answer("The answer is 5. Then I checked 3 more times.") == "5"


def test_last_marker_wins_over_earlier_markers() -> None:
    assert extract_answer("The answer is 6 / 2 = 3. The answer is 4") == "4"


def test_marker_with_equation_takes_the_result() -> None:
    assert extract_answer("The answer is 6 / 2 = 3.") == "3"


def test_without_marker_the_last_number_wins() -> None:
    assert extract_answer("She had 5 apples and ate 2, leaving 3 apples") == "3"


def test_subtraction_is_not_a_negative_number() -> None:
    assert extract_answer("10 - 3") == "3"


def test_dates_are_not_numbers() -> None:
    assert extract_answer("It was 12/14/1937") is None


def test_marker_without_number_is_no_answer_not_the_last_number() -> None:
    # Issue 14: a marker followed by a non-answer used to fall back to the last number (7).
    assert read_answer("We have 7 cows. The answer is unknown") == Extraction(None, "none")


@pytest.mark.parametrize(
    "text", ["", "no numbers here", "The answer is", "####", "The answer is 1/0", "   \n\t "]
)
def test_junk_gives_no_number(text: str) -> None:
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("no.", "no"),
        ("The answer is yes", "yes"),
        ("So the answer is No.", "no"),
        ("Caesar lived earlier. The answer is True", "yes"),
        ("The answer is False", "no"),
        ("No, because yes is not enough", "no"),
        ("It depends, but I would say yes", "yes"),
    ],
)
def test_extract_yesno_examples(text: str, expected: str) -> None:
    assert extract_answer(text, kind="yesno") == expected


@pytest.mark.parametrize("text", ["", "Maybe", "The answer is", "noon is yesterday"])
def test_junk_gives_no_yesno(text: str) -> None:
    assert extract_answer(text, kind="yesno") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(A)", "a"),
        ("So the answer is (D).", "d"),
        ("Let's think step by step. ... So the answer is valid.", "valid"),
        ("The answer is Mrs. Hilt.", "mrs. hilt"),
        ("the answer is ] ] >", "] ] >"),
        ("  Syndrome   Therefrom ", "syndrome therefrom"),
        ("The answer is (B).\nQuestion: next", "b"),
    ],
)
def test_extract_text_examples(text: str, expected: str) -> None:
    assert extract_answer(text, kind="text") == expected


@pytest.mark.parametrize("text", ["", "The answer is", "The answer is ."])
def test_junk_gives_no_text(text: str) -> None:
    assert extract_answer(text, kind="text") is None


@pytest.mark.parametrize(
    ("gold", "expected"),
    [("51.0", "51"), ("9 (apples)", "9"), ("1,000", "1000"), ("-50", "-50"), ("5/2", "2.5")],
)
def test_normalize_numeric_gold(gold: str, expected: str) -> None:
    assert normalize_answer(gold) == expected


def test_normalize_text_and_yesno_gold() -> None:
    assert normalize_answer("(B)", kind="text") == "b"
    assert normalize_answer("True", kind="yesno") == "yes"
    assert normalize_answer("No", kind="yesno") == "no"


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.50", "1/2"),
        ("0.5", "1/2"),
        ("1250", "1,250"),
        ("51", "51.0"),
        ("9", "9 (apples)"),
        ("The answer is 1,250.", "1250"),
        ("0.333333333333", "1/3"),
        ("1000000.5", "1000001"),  # within the 1e-6 relative tolerance
    ],
)
def test_numbers_match(pred: str, gold: str) -> None:
    assert answers_match(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("0.5", "0.51"), ("3", "-3"), ("100", "101"), ("12", "1.2"), ("0", "0.001")],
)
def test_different_numbers_do_not_match(pred: str, gold: str) -> None:
    assert not answers_match(pred, gold)


def test_none_and_junk_are_never_correct() -> None:
    assert not answers_match(None, "5")
    assert not answers_match("", "5")
    assert not answers_match("no numbers here", "5")
    assert not answers_match("5", "")
    assert not answers_match("5", "no numbers")


def test_yesno_and_text_match_after_normalization() -> None:
    assert answers_match("The answer is True", "yes", kind="yesno")
    assert not answers_match("The answer is yes", "no", kind="yesno")
    assert answers_match("So the answer is (C).", "(C)", kind="text")
    assert not answers_match("So the answer is (C).", "(A)", kind="text")


def test_very_long_text_is_fast_and_finds_the_answer() -> None:
    text = "word 1, " * 50_000 + "The answer is 42. " + "filler " * 50_000
    start = time.perf_counter()
    assert extract_answer(text) == "42"
    assert extract_answer("9" * 10_000) is None
    assert time.perf_counter() - start < 5


JUNK = [
    "",
    " ",
    "The answer is",
    "####",
    "1/0",
    "0/0",
    "9" * 10_000,
    "1" * 5_000 + "/" + "3" * 5_000,
    "$$$,,,...///---",
    "\u2212\u2212\u2212",
    "(((()))",
    "()",
    "\x00\ufffd\U0001f600",
    "The answer is " * 1000,
    "\u0663\u0664",  # Arabic-Indic digits
]


@pytest.mark.parametrize("junk", JUNK)
@pytest.mark.parametrize("kind", ["number", "yesno", "text"])
def test_never_raises_on_junk(junk: str, kind: str) -> None:
    extract_answer(junk, kind=kind)
    normalize_answer(junk, kind=kind)
    assert isinstance(answers_match(junk, junk, kind=kind), bool)
    assert isinstance(answers_match(junk, "5", kind=kind), bool)
    assert infer_kind("", junk) in ("number", "yesno", "text")


def test_absurdly_long_numbers_are_skipped_for_the_last_real_one() -> None:
    assert extract_answer("We got 7 then " + "9" * 500) == "7"


def test_non_string_input_is_not_an_answer() -> None:
    assert extract_answer(None) is None  # type: ignore[arg-type]
    assert not answers_match(5, "5")  # type: ignore[arg-type]


def test_unknown_kind_is_a_config_error_naming_the_kinds() -> None:
    with pytest.raises(ConfigError, match="number, yesno, text"):
        extract_answer("5", kind="numeric")


@pytest.mark.parametrize(
    ("source", "gold", "kind"),
    [
        ("strategyqa", "True", "yesno"),
        ("bbh/navigate", "No", "yesno"),
        ("bbh/boolean_expressions", "False", "yesno"),
        ("gsm8k", "72", "number"),
        ("asdiv", "9 (apples)", "number"),
        ("svamp", "51.0", "number"),
        ("bbh/multistep_arithmetic_two", "-11520", "number"),
        ("asdiv", "5/2", "number"),
        ("bbh/date_understanding", "(B)", "text"),
        ("asdiv", "3:4", "text"),
        ("asdiv", "Mrs. Hilt", "text"),
        ("bbh/dyck_languages", "] ] >", "text"),
    ],
)
def test_infer_kind(source: str, gold: str, kind: str) -> None:
    assert infer_kind(source, gold) == kind


@pytest.mark.parametrize("pred, gold", [("1450001", "1450000"), ("22090604", "22090603"), ("-1000001", "-1000000")])
def test_whole_numbers_match_exactly_however_large(pred, gold):
    assert not answers_match(f"The answer is {pred}.", gold)
    assert answers_match(f"The answer is {gold}.", gold)


# ---------------------------------------------------------------------------------------------------------
# Issue 14: markers as real models write them, non-answers, false markers, and named fallbacks.

KOJIMA_BOOKS = (
    "Let's think step by step. The first book is 31 mm thick and the second 157 mm, so 31 + 157 = 188."
    " Therefore, the answer (arabic numerals) is 188.\n\nLet's think step by step. The first book is 31 mm"
    " thick. The second one is 50"
)

MARKED = [
    # the four failures quoted in issue 14
    pytest.param("There are 2 dogs and 3 cats. Therefore, the answer (Yes or No) is not known.", "yesno", None, "none",
                 id="kojima-yesno-not-known-is-no-answer-not-the-no-in-the-trigger"),
    pytest.param("He pays 14 * 21 = 294 dollars. Therefore, the answer (arabic numerals) is two hundred ninety-four "
                 "dollars.", "number", None, "none", id="kojima-number-in-words-is-no-answer-not-294-from-reasoning"),
    pytest.param(KOJIMA_BOOKS, "number", "188", "marker", id="kojima-answer-then-starting-over-keeps-188-not-50"),
    pytest.param("She drives 2.5 hours and then 2 more. Therefore, the answer (arabic numerals) is 4 hours and 30 "
                 "minutes.", "number", "4", "marker", id="kojima-first-number-after-the-marker-4-not-30"),
    # the literature's marker forms
    pytest.param("5 + 3 = 8. The answer is 8.", "number", "8", "marker", id="the-answer-is"),
    pytest.param("5 + 3 = 8. So the answer is 8.", "number", "8", "marker", id="so-the-answer-is"),
    pytest.param("Answer: 8", "number", "8", "marker", id="answer-label"),
    pytest.param("5 + 3 = 8\n#### 8", "number", "8", "marker", id="hashes"),
    pytest.param("3 + 5 = 8 apples. Therefore, the answer (arabic numerals) is 8.", "number", "8", "marker",
                 id="kojima-arabic-numerals"),
    pytest.param("Cats cannot fly. Therefore, the answer (Yes or No) is No.", "yesno", "no", "marker",
                 id="kojima-yes-or-no"),
    pytest.param("Monday is 3 days later. Therefore, among A through E, the answer is (C).", "text", "c", "marker",
                 id="kojima-among-a-through-e"),
    pytest.param("Therefore, among A through E, the answer is C.", "text", "c", "marker", id="bare-option-letter"),
    pytest.param("So the answer is (A) Monday.", "text", "a", "marker", id="option-with-its-text-is-the-letter"),
    pytest.param("So the answer is \\boxed{\\frac{1}{2}}.", "number", "0.5", "marker", id="boxed-fraction"),
    pytest.param("$\\boxed{-\\dfrac{3}{4}}$", "number", "-0.75", "marker", id="boxed-negative-dfrac"),
    pytest.param("The final answer is $\\boxed{42}$.", "number", "42", "marker", id="boxed-number"),
    pytest.param("We get $\\boxed{\\$1,250}$ in total", "number", "1250", "marker", id="boxed-dollars"),
    pytest.param("\\boxed{\\text{Yes}}", "yesno", "yes", "marker", id="boxed-text-yes"),
    pytest.param("\\boxed{\\text{(B)}}", "text", "b", "marker", id="boxed-text-option"),
    pytest.param("It is 12. The answer is **42**.", "number", "42", "marker", id="bold-after-marker"),
    pytest.param("It is 12.\n**Answer:** 42", "number", "42", "marker", id="bold-label"),
    pytest.param("It is 12.\n**Final Answer:** $42", "number", "42", "marker", id="bold-final-answer-dollars"),
    pytest.param("It is 12.\n**Final Answer: 42**", "number", "42", "marker", id="bold-around-label-and-answer"),
    pytest.param("So the answer is **yes**.", "yesno", "yes", "marker", id="bold-yes"),
    pytest.param("The answer is **(B)**.", "text", "b", "marker", id="bold-option"),
    pytest.param("The answer is:\n42", "number", "42", "marker", id="answer-on-the-next-line"),
    pytest.param("The answer is 6 / 2 = 3. Then 9 more.", "number", "3", "marker", id="equation-gives-its-result"),
    # non-answers after a marker are no answer, never a number or word from elsewhere
    pytest.param("We have 7 cows. The answer cannot be determined.", "number", None, "none",
                 id="cannot-be-determined"),
    pytest.param("We have 7 cows. The answer is: it depends on the 3 prices.", "number", None, "none",
                 id="depends-on"),
    pytest.param("We have 7 cows. The answer is unknown.", "number", None, "none", id="unknown"),
    pytest.param("We have 7 cows. The answer is", "number", None, "none", id="empty-at-the-end"),
    pytest.param("We have 7 cows.\n#### ", "number", None, "none", id="empty-hashes"),
    pytest.param("We have 7 cows. The answer is seven.", "number", None, "none", id="number-word"),
    pytest.param("He spent $4500 - $4000 = $500. The answer is not 500, it's -500.", "number", None, "none",
                 id="negated-number"),
    pytest.param("The answer is 17 (wrong). Sorry, the answer should be different.", "number", None, "none",
                 id="last-marker-retracts-the-answer"),
    pytest.param("Yes, it could. The answer is not yes.", "yesno", None, "none", id="negated-yes"),
    pytest.param("Yes, maybe. The answer is unclear.", "yesno", None, "none", id="unclear-yes-no"),
    pytest.param("Options (A) to (C). So the answer is cannot be determined.", "text", None, "none",
                 id="text-cannot-be-determined"),
    pytest.param("So the answer is .", "text", None, "none", id="text-empty"),
    # false markers are reasoning: skipped, so an earlier real marker or the fallback decides
    pytest.param("To find the answer, we add 3 and 4 to get 7.", "number", "7", "last_number",
                 id="to-find-the-answer-is-no-marker"),
    pytest.param("The answer is to add 3 and 4: 3 + 4 = 7.", "number", "7", "last_number",
                 id="the-answer-is-to-is-reasoning"),
    pytest.param("The answer is the monthly cost times 12: 250 * 12 = 3000.", "number", "3000", "last_number",
                 id="the-answer-is-the-is-reasoning"),
    pytest.param("The answer is 57. Here the answer is given as 40 in the book.", "number", "57", "marker",
                 id="the-answer-is-given-as-is-reasoning"),
    pytest.param("Answer: Let's think step by step. 3 + 4 = 7.", "number", "7", "last_number",
                 id="answer-label-before-reasoning"),
    pytest.param("I think the answer: 5 apples and 2 pears", "number", "2", "last_number",
                 id="answer-colon-mid-sentence-is-no-label"),
    pytest.param("So the answer is the Yankees.", "text", "the yankees", "marker",
                 id="text-answer-may-start-with-the"),
    # several markers: the last real one
    pytest.param("The answer is 64 + 1 = 65. However, the answer is given as 57, so the answer is 57", "number",
                 "57", "marker", id="last-real-marker-wins"),
    pytest.param("The answer is 5.\n\\boxed{6}", "number", "6", "marker", id="a-later-box-wins"),
    # fallbacks without any marker, named
    pytest.param("She had 5 apples and ate 2, leaving 3 apples", "number", "3", "last_number", id="last-number"),
    pytest.param("No, because yes is not enough", "yesno", "no", "leading_word", id="leading-word"),
    pytest.param("It depends, but I would say yes", "yesno", "yes", "last_word", id="last-word"),
    pytest.param("  Syndrome   Therefrom ", "text", "syndrome therefrom", "whole_text", id="whole-text"),
    pytest.param("no numbers here", "number", None, "none", id="nothing"),
]


@pytest.mark.parametrize(("text", "kind", "answer", "method"), MARKED)
def test_read_answer_on_real_model_text(text: str, kind: str, answer: str | None, method: str) -> None:
    assert read_answer(text, kind) == Extraction(answer, method)
    assert extract_answer(text, kind) == answer
    assert method in EXTRACTION_METHODS


@pytest.mark.parametrize("kind", ["number", "yesno", "text"])
@pytest.mark.parametrize("junk", JUNK)
def test_read_answer_agrees_with_extract_answer_on_junk(junk: str, kind: str) -> None:
    extraction = read_answer(junk, kind)
    assert extraction.answer == extract_answer(junk, kind)
    assert extraction.method in EXTRACTION_METHODS
    assert (extraction.answer is None) == (extraction.method == "none")


def test_a_non_answer_is_never_scored_correct_whatever_the_gold() -> None:
    text = "We have 7 cows, 3 sheep and no yes-men. Therefore, the answer (arabic numerals) is not known."
    for gold in ("7", "3", "0"):
        assert not answers_match(text, gold)
    assert not answers_match(text.replace("arabic numerals", "Yes or No"), "no", kind="yesno")


def test_unclosed_box_is_not_a_marker() -> None:
    assert read_answer("So \\boxed{42 and then 7") == Extraction("7", "last_number")


# ---------------------------------------------------------------------------------------------------------
# Protocol extractors


@pytest.mark.parametrize(
    ("stage2", "kind", "answer"),
    [
        (" 1,234.5 dollars, or 3 more.", "number", "1234.5"),  # commas removed, the FIRST number
        (" 18.", "number", "18"),  # trailing "." dropped
        (" -3 degrees", "number", "-3"),
        (" two hundred", "number", None),
        (' "Yes." because no one...', "yesno", "yes"),  # first yes/no word after punctuation became spaces
        (" No: nobody", "yesno", "no"),
        (" not known", "yesno", None),
        (" (C) Ethan", "text", "c"),  # the first A-E letter
        (" valid\nmore", "text", "valid"),  # no option letter: the first line
    ],
)
def test_kojima_answer(stage2: str, kind: str, answer: str | None) -> None:
    assert kojima_answer(stage2, kind) == Extraction(answer, "marker" if answer else "none")


def test_kojima_takes_the_first_number_where_our_reading_takes_the_equation_result() -> None:
    assert kojima_answer(" 6 / 2 = 3.", "number").answer == "6"
    assert read_answer("The answer is 6 / 2 = 3.").answer == "3"


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("48 / 2 = 24 clips.\n#### 72", "72", "72"),
        ("#### 1,234.", "1,234.", "1,234."),  # the harness keeps commas and the period; exact_match drops them
        ("#### 5\n#### 6", "5", "6"),  # strict takes the first match, flexible the last
        ("The answer is $18.", "[invalid]", "$18."),
        ("It is 7", "[invalid]", "7"),  # one digit: the second alternative
        ("no digits", "[invalid]", "[invalid]"),
        ("####72", "[invalid]", "72"),  # strict needs the space
    ],
)
def test_lm_eval_filters(text: str, strict: str, flexible: str) -> None:
    assert lm_eval_strict(text) == strict
    assert lm_eval_flexible(text) == flexible


@pytest.mark.parametrize(
    ("prediction", "gold", "match"),
    [
        ("1,234.", "Add them: 1000 + 234 = 1234.\n#### 1234", True),
        ("$18", "#### 18", True),
        ("18.0", "#### 18", False),  # string equality, not numbers
        ("[invalid]", "#### 18", False),
        (" 18", "#### 18", False),  # no strip in exact_match
        ("ABC", "abc", True),  # ignore_case
    ],
)
def test_lm_eval_exact_match(prediction: str, gold: str, match: bool) -> None:
    assert lm_eval_exact_match(prediction, gold) is match


@pytest.mark.parametrize(("text", "kind"), [
    ("Water boils. So the answer is True.", "yesno"),
    ("Therefore, the answer (Yes or No) is no.", "yesno"),  # the parenthetical broke the old trace reader
    ("The answer is 720", "number"),
    ("No cat has 9 lives, so the answer is 0.", "number"),  # a leading "No" is not the stated answer
    ("Plain text without a marker, yes.", "number"),
])
def test_stated_kind_reads_the_word_right_after_the_last_marker(text, kind):
    from cotdistill.answers import stated_kind

    assert stated_kind(text) == kind
