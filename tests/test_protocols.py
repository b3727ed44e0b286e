"""Evaluation protocols: prompts, stop strings, two-stage answering and scoring, checked without a model.

The prompts and answer rules follow the papers and the harness they name (Kojima et al. 2022; EleutherAI's
lm-evaluation-harness GSM8K task), so a figure can be compared with a published one made the same way.
"""

from __future__ import annotations

import pytest

from cotdistill import evaluate
from cotdistill.config import EvalSpec
from cotdistill.errors import ConfigError
from cotdistill.formats import eval_prompts
from cotdistill.problems.record import Problem
from cotdistill.protocols import PROTOCOLS, get_protocol, lm_eval_target, score_answer
from cotdistill.student import Student

MATH = Problem("m1", "Ann has 3 apples and buys 4. How many now?", "7", rationale="3 + 4 = 7 apples.",
               source="gsm8k")
YESNO = Problem("s1", "Is water wet?", "yes", source="strategyqa")
CHOICE = Problem("b1", "Which is red? Options: (A) sky (B) blood", "(B)", source="bbh/x")
DEMOS = [Problem(f"d{i}", f"Demo question {i}?", str(i), rationale=f"Think {i}.", source="gsm8k")
         for i in range(1, 4)]


def test_cotdistill_prompts_are_the_training_formats_and_ready_made_prompts_win():
    cot = PROTOCOLS["cotdistill"]
    assert cot.prompts([MATH], "zero_shot_cot", demo_pool=DEMOS, k_shot=2, seed=0) == \
        eval_prompts([MATH], "zero_shot_cot")
    assert cot.prompts([MATH], "few_shot_cot", demo_pool=DEMOS, k_shot=2, seed=5) == \
        eval_prompts([MATH], "few_shot_cot", k_shot=2, seed=5, demo_pool=DEMOS)
    assert cot.prompts([MATH], "zero_shot_cot", demo_pool=(), k_shot=0, seed=0, ready=["BBH PROMPT"]) == ["BBH PROMPT"]


def test_kojima_asks_step_by_step_then_appends_the_trigger_of_each_answer_type():
    kojima = PROTOCOLS["kojima"]
    problems = [MATH, YESNO, CHOICE]
    first = kojima.prompts(problems, "zero_shot_cot", demo_pool=(), k_shot=0, seed=0)
    assert first[0] == f"Q: {MATH.question}\nA: Let's think step by step."
    second = kojima.answer_prompts(problems, first, ["3 and 4 make 7.", "Water is wet.", "Blood is red."],
                                   "zero_shot_cot")
    assert second[0] == f"{first[0]} 3 and 4 make 7. Therefore, the answer (arabic numerals) is"
    assert second[1].endswith("Water is wet. Therefore, the answer (Yes or No) is")
    assert second[2].endswith("Blood is red. Therefore, among A through E, the answer is")
    spaced = Problem("m2", "Ann  has 3 apples.  How many?", "3", source="gsm8k")  # GSM8K has double spaces
    prompt = kojima.prompts([spaced], "zero_shot_cot", demo_pool=(), k_shot=0, seed=0)[0]
    (again,) = kojima.answer_prompts([spaced], [prompt], ["  "], "zero_shot_cot")
    assert again == f"{prompt} Therefore, the answer (arabic numerals) is"  # the prompt is kept byte for byte


def test_kojima_answer_only_is_the_papers_zero_shot_baseline_in_one_stage():
    kojima = PROTOCOLS["kojima"]
    prompts = kojima.prompts([MATH, YESNO], "answer_only", demo_pool=(), k_shot=0, seed=0)
    assert prompts == [f"Q: {MATH.question}\nA: The answer (arabic numerals) is",
                       f"Q: {YESNO.question}\nA: The answer (Yes or No) is"]
    assert kojima.answer_prompts([MATH, YESNO], prompts, ["7", "yes"], "answer_only") is None
    with pytest.raises(ConfigError, match="zero-shot"):
        kojima.prompts([MATH], "few_shot_cot", demo_pool=DEMOS, k_shot=2, seed=0)


@pytest.mark.parametrize(("problem", "stage_two", "extracted", "correct"), [
    (MATH, " 7.", "7", True),
    (MATH, " 4 hours and 30 minutes.", "4", False),  # the first number after the trigger, not the last
    (MATH, " 7.\n\nLet's think step by step. The first book is 31 mm and 50 more.", "7", True),
    (MATH, " two hundred ninety-four dollars.", None, False),  # words are no number
    (YESNO, " not known.", None, False),  # the "Yes or No" of the trigger itself is not an answer
    (YESNO, " Yes.", "yes", True),
])
def test_kojima_scores_the_first_answer_after_the_trigger(problem, stage_two, extracted, correct):
    found = PROTOCOLS["kojima"].score(problem, stage_two)
    assert (found.extracted, found.correct) == (extracted, correct)
    assert found.extraction == ("none" if extracted is None else "marker")


def test_lm_eval_prompt_is_the_harness_gsm8k_layout_with_the_first_k_demonstrations():
    lm = PROTOCOLS["lm-eval"]
    zero = lm.prompts([MATH], "zero_shot_cot", demo_pool=DEMOS, k_shot=2, seed=0)
    assert zero == [f"Question: {MATH.question}\nAnswer:"]
    two = lm.prompts([MATH], "few_shot_cot", demo_pool=DEMOS, k_shot=2, seed=99)[0]
    assert two == ("Question: Demo question 1?\nAnswer: Think 1.\n#### 1\n\n"
                   "Question: Demo question 2?\nAnswer: Think 2.\n#### 2\n\n"
                   f"Question: {MATH.question}\nAnswer:")
    assert lm_eval_target(MATH) == "3 + 4 = 7 apples.\n#### 7"
    with pytest.raises(ConfigError, match="numeric answers"):
        lm.prompts([YESNO], "zero_shot_cot", demo_pool=(), k_shot=0, seed=0)
    with pytest.raises(ConfigError, match="pool holds 3"):
        lm.prompts([MATH], "few_shot_cot", demo_pool=DEMOS, k_shot=5, seed=0)


def test_lm_eval_cuts_at_its_stop_strings_and_reports_strict_and_flexible():
    lm = PROTOCOLS["lm-eval"]
    text = lm.clean(" 3 + 4 = 7 so 7 apples.\n#### 7\n\nQuestion: next one 99")
    assert text == " 3 + 4 = 7 so 7 apples.\n#### 7\n\n"
    found = lm.score(MATH, text)
    assert (found.extracted, found.correct, found.extraction) == ("7", True, "marker")
    assert found.filters["flexible-extract"] == {"extracted": "7", "correct": True}
    loose = lm.score(MATH, " So she has 7 apples.")
    assert (loose.extracted, loose.correct, loose.extraction) == (None, False, "none")
    assert loose.filters["strict-match"]["extracted"] == "[invalid]"
    assert loose.filters["flexible-extract"] == {"extracted": "7", "correct": True}


def test_the_projects_scorer_never_reads_a_non_answer_after_a_marker():
    assert score_answer(MATH, "3 + 4 = 7. The answer is 7.").correct
    unread = score_answer(MATH, "3 + 4 = 7. Therefore, the answer (arabic numerals) is unknown.")
    assert (unread.extracted, unread.correct, unread.extraction) == (None, False, "none")
    guessed = score_answer(MATH, "3 + 4 = 7")
    assert (guessed.extracted, guessed.extraction) == ("7", "last_number")


def test_unknown_protocol_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cotdistill, kojima, lm-eval"):
        get_protocol("helm")


class _Engine:
    world_size = 1


def test_two_stage_evaluation_generates_the_answer_after_the_trigger(monkeypatch):
    """Kojima's two stages through the shared evaluation: stage two continues stage one's prompt and text."""
    calls: list[tuple[list[str], int]] = []

    def fake_generate(engine, tokenizer, causal, prompts, *, max_new_tokens, **kwargs):
        calls.append((list(prompts), max_new_tokens))
        if len(calls) == 1:
            return [([" 3 and 4 make 7 apples.\nQ: an invented next question"], 12) for _ in prompts]
        return [([" 7.\nLet's think step by step. 50"], 3) for _ in prompts]

    monkeypatch.setattr(evaluate, "generate_texts", fake_generate)
    spec = EvalSpec(strategy="zero_shot_cot", protocol="kojima", max_new_tokens=40, answer_tokens=9)
    report = evaluate.evaluate_problems(_Engine(), Student(None, True, "m", None), [MATH], spec)
    (first, budget1), (second, budget2) = calls
    assert (budget1, budget2) == (40, 9)
    assert second == [f"{first[0]} 3 and 4 make 7 apples. Therefore, the answer (arabic numerals) is"]
    row = report.predictions[0]
    assert (row.extracted, row.correct, row.generated_tokens) == ("7", True, 15)
    assert row.generated.startswith("3 and 4 make 7 apples. Therefore, the answer (arabic numerals) is")
    assert report.settings["protocol"] == "kojima" and report.settings["answer_tokens"] == 9
