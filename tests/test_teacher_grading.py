"""Grading teacher samples against gold: what is kept, what is dropped and why, and the statistics."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from conftest import SHARED_DATA
from cotdistill.problems import load_problems
from cotdistill.problems.record import Problem, Step
from cotdistill.teacher.grading import (
    TaskStats,
    grade_cot,
    grade_decompositions,
    grade_gold_steps,
    tokens_within,
)

PROBLEM = Problem(id="gsm8k/7", question="Sam had 20 apples and ate 8. How many are left?", answer="12",
                  source="gsm8k")
YESNO = Problem(id="strategyqa/abc", question="Can a cat fly?", answer="no", source="strategyqa")


def _s(text: str, **extra) -> dict:
    return {"text": text, "finish_reason": "stop", **extra}


def _stats(graded) -> dict:
    return asdict(graded.stats)


# ---------------------------------------------------------------------------------------------------------
# grade_cot


def test_grade_cot_counts_wrong_malformed_duplicate_kept_and_missing():
    samples = [
        (0, _s("20 - 8 = 12. The answer is 12.")),
        (1, _s("20 -  8 = 12.\n The answer is 12. ")),  # sample 0 again, up to whitespace
        (2, _s("20 - 7 = 13. The answer is 13.")),
        (3, _s("I am not sure about this one.")),
        (4, _s("He has 20 - 8 = 12 left. The answer is 12.\nQuestion: What is 2 + 2?\nAnswer: 4")),
        (5, _s("The answer is 13.")),
    ]
    graded = grade_cot(PROBLEM, samples, wanted=8)
    assert _stats(graded) == {"questions": 1, "samples": 6, "missing": 2, "malformed": 1, "no_answer": 1,
                              "wrong": 2, "correct": 3,
                              "duplicates": 1, "kept": 2, "questions_kept": 1, "first_sample_correct": 1,
                              "majority_correct": 1, "unverified": 0, "truncated": 0}
    assert [r["id"] for r in graded.records] == ["gsm8k/7#cot0", "gsm8k/7#cot4"]
    first, second = graded.records
    assert first == {"id": "gsm8k/7#cot0", "problem_id": "gsm8k/7", "question": PROBLEM.question, "answer": "12",
                     "rationale": "20 - 8 = 12. The answer is 12.", "teacher_answer": "12", "sample_index": 0,
                     "source": "gsm8k"}
    assert second["rationale"] == "He has 20 - 8 = 12 left. The answer is 12."  # invented next question cut
    assert second["sample_index"] == 4


def test_first_sample_correct_only_when_sample_zero_is_correct():
    late = grade_cot(PROBLEM, [(0, _s("The answer is 11.")), (1, _s("The answer is 12."))], wanted=2)
    assert late.stats.first_sample_correct == 0 and late.stats.kept == 1
    assert late.records[0]["id"] == "gsm8k/7#cot1"
    without_zero = grade_cot(PROBLEM, [(1, _s("The answer is 12.")), (2, _s("So 12."))], wanted=3)
    assert without_zero.stats.first_sample_correct == 0 and without_zero.stats.missing == 1
    assert without_zero.stats.kept == 2


def test_majority_vote_can_be_wrong_while_some_samples_are_kept():
    samples = [(0, _s("The answer is 13.")), (1, _s("The answer is 12.")), (2, _s("Then 13. The answer is 13.")),
               (3, _s("no number here"))]
    graded = grade_cot(PROBLEM, samples, wanted=4)
    assert graded.stats.majority_correct == 0
    assert graded.stats.kept == 1 and graded.stats.malformed == 1 and graded.stats.wrong == 2


def test_majority_vote_tie_goes_to_the_earliest_sample():
    wrong_first = [(0, _s("The answer is 13.")), (1, _s("The answer is 12."))]
    right_first = [(0, _s("The answer is 12.")), (1, _s("The answer is 13."))]
    assert grade_cot(PROBLEM, wrong_first, wanted=2).stats.majority_correct == 0
    assert grade_cot(PROBLEM, right_first, wanted=2).stats.majority_correct == 1


def test_malformed_samples_do_not_vote():
    samples = [(0, _s("hmm")), (1, _s("no idea")), (2, _s("The answer is 12."))]
    graded = grade_cot(PROBLEM, samples, wanted=3)
    assert graded.stats.majority_correct == 1 and graded.stats.malformed == 2


def test_no_samples_counts_all_missing_and_nothing_kept():
    graded = grade_cot(PROBLEM, [], wanted=4)
    assert _stats(graded) == {**asdict(TaskStats(questions=1, missing=4))}
    assert graded.records == []


def test_equal_answers_in_other_forms_are_kept():
    problem = Problem(id="p", question="q?", answer="1250", source="gsm8k")
    samples = [(0, _s("It costs $1,250.00 in total. The answer is $1,250.")), (1, _s("The answer is 1250.0"))]
    graded = grade_cot(problem, samples, wanted=2)
    assert graded.stats.kept == 2
    assert [r["teacher_answer"] for r in graded.records] == ["1250", "1250"]


@pytest.mark.parametrize("text", [
    "Two apples are left over. Therefore, the answer (arabic numerals) is not known.",
    "She ate 8 of 20, so 12 remain. The answer cannot be determined.",
    "20 - 8 = 12. Therefore, the answer (arabic numerals) is twelve.",
])
def test_a_marker_with_a_non_answer_is_no_answer_not_wrong_and_not_kept(text):
    # The old extraction fell back to the last number (12, gold) and kept these traces.
    graded = grade_cot(PROBLEM, [(0, _s(text))], wanted=1)
    assert (graded.stats.kept, graded.stats.wrong, graded.stats.no_answer, graded.stats.malformed) == (0, 0, 1, 1)


def test_a_sample_cut_off_at_max_tokens_is_dropped_even_when_its_last_number_is_gold():
    # The old grading read the last number of the unfinished text (12, gold) and kept the trace.
    cut = {"text": "She ate 8 of 20, so 20 - 8 = 12 are left. Then she buys 3 more, so 12", "finish_reason": "length"}
    finished = _s("20 - 8 = 12. The answer is 12.")
    graded = grade_cot(PROBLEM, [(0, cut), (1, finished)], wanted=2)
    assert [r["sample_index"] for r in graded.records] == [1]
    assert graded.stats.first_sample_correct == 0  # sample 0 was never finished
    assert (graded.stats.kept, graded.stats.truncated, graded.stats.malformed, graded.stats.wrong) == (1, 1, 1, 0)
    # an unfinished decomposition's last complete step is a sub-answer, not the answer
    steps = {"text": "Q1: How many are left?\nA1: 20 - 8 = 12.\nQ2: How many after she buys 3?\nA2: 12 +",
             "finish_reason": "length"}
    decomposed = grade_decompositions(PROBLEM, [(0, steps)], wanted=1)
    assert decomposed.records == []
    assert (decomposed.stats.malformed, decomposed.stats.truncated) == (1, 1)


def test_yes_no_problems_are_graded_as_yes_no():
    samples = [
        (0, _s("Cats have no wings, and 0 of 3 cats fly. The answer is False")),
        (1, _s("Some cats jump 2 meters. The answer is yes.")),
        (2, _s("Hard to tell.")),
        (3, _s("No. Cats cannot fly.")),
    ]
    graded = grade_cot(YESNO, samples, wanted=4)
    assert [r["sample_index"] for r in graded.records] == [0, 3]
    assert [r["teacher_answer"] for r in graded.records] == ["no", "no"]
    assert graded.stats.wrong == 1 and graded.stats.malformed == 1
    assert graded.stats.first_sample_correct == 1 and graded.stats.majority_correct == 1


def _token_row(text: str) -> list:
    return [text, -0.5, [[text, -0.5], ["x", -2.0]]]


def test_teacher_tokens_are_stored_only_when_tokens_were_given():
    with_tokens = _s("The answer is 12.", tokens=[_token_row("The"), _token_row(" answer"), _token_row(" is"),
                                                  _token_row(" 12"), _token_row(".")])
    graded = grade_cot(PROBLEM, [(0, with_tokens), (1, _s("So 12. The answer is 12."))], wanted=2)
    assert graded.records[0]["teacher_tokens"] == with_tokens["tokens"]
    assert "teacher_tokens" not in graded.records[1]
    assert "teacher_tokens" not in grade_cot(PROBLEM, [(0, _s("12", tokens=[]))], wanted=1).records[0]


def test_teacher_tokens_keep_exactly_the_tokens_that_spell_the_kept_rationale():
    pieces = ["  ", "Step", ":", " 20", " -", " 8", " =", " 12", ".", " The", " answer", " is", " 12", ".",
              "\n", "Question", ":", " What", " next", "?"]
    raw = "".join(pieces)
    tokens = [_token_row(p) for p in pieces]
    graded = grade_cot(PROBLEM, [(0, _s(raw, tokens=tokens))], wanted=1)
    record = graded.records[0]
    assert record["rationale"] == "Step: 20 - 8 = 12. The answer is 12."
    assert record["teacher_tokens"] == tokens[1:14]
    assert "".join(t[0] for t in record["teacher_tokens"]) == record["rationale"]


def test_tokens_within_keeps_tokens_that_straddle_the_edges():
    raw = "  Hello world.\n\nQuestion: x"
    tokens = [_token_row(p) for p in [" ", " Hello", " world", ".\n", "\nQuestion", ": x"]]
    kept = tokens_within(tokens, raw, "Hello world.")
    assert [t[0] for t in kept] == [" Hello", " world", ".\n"]
    assert "".join(t[0] for t in kept).strip() == "Hello world."


# ---------------------------------------------------------------------------------------------------------
# grade_decompositions

GOOD = "Q1: How many apples did Sam eat?\nA1: He ate 8.\nQ2: How many are left?\nA2: 20 - 8 = 12 apples are left."


def test_grade_decompositions_keeps_those_whose_last_answer_is_gold():
    samples = [
        (0, _s(GOOD)),
        (1, _s(GOOD.replace("20 - 8 = 12", "20 - 7 = 13"))),
        (2, _s("First, Sam eats apples. Then some are left.")),  # does not parse
        (3, _s(GOOD)),  # duplicate
        (4, _s("Q1: How many are left?\nA1: Some apples are left.")),  # parses, no answer in the last step
        (5, _s(GOOD + "\nQuestion: Another one?\nQ1: x?\nA1: 3.")),  # the invented question is cut: duplicate
    ]
    graded = grade_decompositions(PROBLEM, samples, wanted=7)
    # malformed: sample 2 does not parse, sample 4 parses but has no answer (only it is no_answer)
    assert _stats(graded) == {"questions": 1, "samples": 6, "missing": 1, "malformed": 2, "no_answer": 1,
                              "wrong": 1, "correct": 3,
                              "duplicates": 2, "kept": 1, "questions_kept": 1, "first_sample_correct": 1,
                              "majority_correct": 1, "unverified": 0, "truncated": 0}
    assert graded.records == [{
        "id": "gsm8k/7#dec0", "problem_id": "gsm8k/7", "question": PROBLEM.question, "answer": "12",
        "steps": [{"question": "How many apples did Sam eat?", "answer": "He ate 8."},
                  {"question": "How many are left?", "answer": "20 - 8 = 12 apples are left."}],
        "sample_index": 0, "source": "gsm8k"}]


def test_grade_decompositions_wrong_only_keeps_nothing():
    graded = grade_decompositions(PROBLEM, [(0, _s(GOOD.replace("= 12", "= 11")))], wanted=1)
    assert graded.records == [] and graded.stats.wrong == 1 and graded.stats.questions_kept == 0
    assert graded.stats.majority_correct == 0


def test_grade_decompositions_grades_yes_no_problems_by_the_last_step():
    text = "Q1: Do cats have wings?\nA1: No, cats have 0 wings.\nQ2: Can an animal without wings fly?\nA2: No."
    graded = grade_decompositions(YESNO, [(0, _s(text)), (1, _s(text.replace("A2: No.", "A2: Yes.")))], wanted=2)
    assert [r["sample_index"] for r in graded.records] == [0]
    assert graded.stats.wrong == 1


# ---------------------------------------------------------------------------------------------------------
# grade_gold_steps


def test_gold_steps_with_the_gold_answer_are_kept():
    problem = Problem(id="gsm8k/s1", question=PROBLEM.question, answer="12", source="gsm8k",
                      steps=(Step("How many did Sam eat?", "Sam ate 8."), Step("How many are left?", "20 - 8 = 12.")))
    graded = grade_gold_steps(problem)
    assert graded.stats.kept == 1 and graded.stats.correct == 1 and graded.stats.unverified == 0
    assert graded.records[0]["id"] == "gsm8k/s1#dec0"
    assert graded.records[0]["steps"][-1] == {"question": "How many are left?", "answer": "20 - 8 = 12."}


def test_gold_steps_ending_in_another_answer_are_dropped_as_wrong():
    problem = Problem(id="gsm8k/s2", question="q?", answer="12", source="gsm8k",
                      steps=(Step("a?", "8."), Step("b?", "20 - 7 = 13.")))
    graded = grade_gold_steps(problem)
    assert graded.records == [] and graded.stats.wrong == 1 and graded.stats.kept == 0


def test_answerless_gold_steps_are_kept_and_counted_unverified():
    problem = Problem(id="strategyqa/x", question="Can a cat fly?", answer="no", source="strategyqa",
                      steps=(Step("Do cats have wings?", ""), Step("Can animals without wings fly?", " ")))
    graded = grade_gold_steps(problem)
    assert graded.stats.unverified == 1 and graded.stats.kept == 1 and graded.stats.wrong == 0
    assert [s["answer"] for s in graded.records[0]["steps"]] == ["", " "]


def test_a_problem_without_gold_steps_gives_no_record_and_no_sample():
    graded = grade_gold_steps(PROBLEM)
    assert graded.records == [] and graded.stats.samples == 0 and graded.stats.questions == 1
    assert graded.stats.summary()["kept_fraction"] is None


def test_real_strategyqa_gold_decompositions_are_all_kept_unverified():
    problems = load_problems("strategyqa", "dev", data_dir=SHARED_DATA)
    total = TaskStats()
    for problem in problems:
        total.add(grade_gold_steps(problem).stats)
    with_steps = sum(1 for p in problems if p.steps)
    assert with_steps > 0.9 * len(problems)
    assert total.kept == total.unverified == with_steps
    assert total.wrong == 0


# ---------------------------------------------------------------------------------------------------------
# TaskStats


def test_summary_reports_rates_of_the_counts():
    stats = TaskStats(questions=4, samples=10, kept=4, questions_kept=3, first_sample_correct=2, majority_correct=3)
    summary = stats.summary()
    assert summary["first_sample_accuracy"] == 0.5
    assert summary["majority_vote_accuracy"] == 0.75
    assert summary["kept_fraction"] == 0.4
    assert summary["question_coverage"] == 0.75
    assert summary["kept"] == 4 and summary["questions"] == 4  # the counts are there too


def test_summary_rates_are_none_without_questions_and_rounded_otherwise():
    empty = TaskStats().summary()
    assert empty["first_sample_accuracy"] is None and empty["kept_fraction"] is None
    assert TaskStats(questions=3, first_sample_correct=1).summary()["first_sample_accuracy"] == pytest.approx(
        0.333333, abs=1e-9)


def test_add_sums_every_count():
    a = grade_cot(PROBLEM, [(0, _s("The answer is 12.")), (1, _s("The answer is 13."))], wanted=2).stats
    b = grade_cot(YESNO, [(0, _s("The answer is yes."))], wanted=3).stats
    total = TaskStats()
    total.add(a)
    total.add(b)
    assert total.questions == 2 and total.samples == 3 and total.missing == 2
    assert total.kept == 1 and total.wrong == 2 and total.questions_kept == 1
    assert total.summary()["question_coverage"] == 0.5
