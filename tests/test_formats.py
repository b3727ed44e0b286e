"""Behaviour of prompt formats and the format mixture."""

from __future__ import annotations

from collections import Counter

import pytest

from cotdistill.answers import extract_answer, infer_kind, normalize_answer
from cotdistill.errors import ConfigError, DataError
from cotdistill.formats import (
    COT_TRIGGER,
    PROMPT_FORMATS,
    Example,
    build_examples,
    prompt,
    target,
    validate_mixture,
)
from cotdistill.problems.record import Problem


def make_problems(n: int, prefix: str = "p") -> list[Problem]:
    """Synthetic arithmetic problems with unique questions and worked rationales."""
    return [
        Problem(
            id=f"{prefix}{i}",
            question=f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?",
            answer=str(2 * i + 3),
            rationale=f"Tom starts with {i} apples. He buys {i + 3}, so {i} + {i + 3} = {2 * i + 3}.",
            source="synthetic",
        )
        for i in range(n)
    ]


MIX = {"answer_only": 1.0, "zero_shot_cot": 1.0, "few_shot_cot": 1.0}

VARIED = [
    Problem("g1", "How many?", "1,250", "Add 1,000 and 250 to get 1,250.", source="gsm8k"),
    Problem("g2", "Cost?", "3.50", "Two halves of 7 dollars make 3.50 each.", source="svamp"),
    Problem("g3", "Apples?", "9 (apples)", "He keeps 9 apples.", source="asdiv"),
    Problem("g4", "Temp?", "-3", "It fell from 2 by 5 to -3", source="bbh/multistep_arithmetic_two"),
    Problem("s1", "Did Caesar meet Khan?", "no", "They lived centuries apart.", source="strategyqa"),
    Problem("s2", "Is water wet?", "yes", "Water wets things. The answer is True", source="strategyqa"),
    Problem("b1", "Which date?", "(D)", "10 days before is 12/14/1937. So the answer is (D).", source="bbh"),
    Problem("b2", "Sort the words.", "barn damp", "b comes before d.", source="bbh/word_sorting"),
    Problem("a1", "Who won?", "Mrs. Hilt", "She scored highest.", source="asdiv"),
    Problem("t1", "Pay?", "720", "900 - 180 = 720. The answer is 720", source="gsm8k"),
]


@pytest.mark.parametrize("fmt", PROMPT_FORMATS)
@pytest.mark.parametrize("problem", VARIED, ids=lambda p: p.id)
def test_gold_answer_extracts_from_every_target(problem: Problem, fmt: str) -> None:
    kind = infer_kind(problem.source, problem.answer)
    assert extract_answer(target(problem, fmt), kind) == normalize_answer(problem.answer, kind)


@pytest.mark.parametrize("fmt", PROMPT_FORMATS)
def test_source_then_target_reads_naturally(fmt: str) -> None:
    problem, *demos = make_problems(3)
    src, tgt = prompt(problem, fmt, demos), target(problem, fmt)
    assert src == src.rstrip()
    assert tgt.startswith(" ") and not tgt.startswith("  ")
    trigger = f" {COT_TRIGGER}" if fmt == "zero_shot_cot" else ""
    assert (src + tgt).endswith(f"How many apples does he have?\nAnswer:{trigger}{tgt}")


def test_answer_only_format() -> None:
    problem = make_problems(1)[0]
    assert prompt(problem, "answer_only") == f"Question: {problem.question}\nAnswer:"
    assert target(problem, "answer_only") == " The answer is 3."


def test_zero_shot_cot_puts_the_trigger_in_the_prompt() -> None:
    problem = make_problems(1)[0]
    assert prompt(problem, "zero_shot_cot") == f"Question: {problem.question}\nAnswer: {COT_TRIGGER}"
    assert target(problem, "zero_shot_cot") == f" {problem.rationale} The answer is 3."


def test_rationale_ending_in_its_answer_is_not_repeated() -> None:
    problem = Problem("t1", "Pay?", "720", "900 - 180 = 720. The answer is 720", source="gsm8k")
    assert target(problem, "zero_shot_cot") == " 900 - 180 = 720. The answer is 720."


def test_rationale_ending_in_a_wrong_answer_raises_with_id() -> None:
    problem = Problem("bad7", "Pay?", "720", "900 - 100 = 800. The answer is 800", source="gsm8k")
    with pytest.raises(DataError, match="bad7"):
        target(problem, "zero_shot_cot")


def test_answer_ending_in_a_period_gets_no_second_period() -> None:
    problem = Problem("a", "Who?", "The 60th caller.", None, source="asdiv")
    assert target(problem, "answer_only") == " The answer is The 60th caller."


def test_few_shot_prompt_renders_demos_as_full_cot_blocks() -> None:
    problem, d1, d2 = make_problems(3)
    blocks = prompt(problem, "few_shot_cot", [d1, d2]).split("\n\n")
    assert blocks == [
        f"Question: {d1.question}\nAnswer: {d1.rationale} The answer is {d1.answer}.",
        f"Question: {d2.question}\nAnswer: {d2.rationale} The answer is {d2.answer}.",
        f"Question: {problem.question}\nAnswer:",
    ]


def test_same_seed_gives_same_examples_and_other_seed_differs() -> None:
    problems = make_problems(200)
    first = build_examples(problems, MIX, k_shot=2, seed=7)
    assert first == build_examples(problems, MIX, k_shot=2, seed=7)
    assert first != build_examples(problems, MIX, k_shot=2, seed=8)


def test_a_problems_example_does_not_depend_on_the_other_problems() -> None:
    problems = make_problems(50)
    full = build_examples(problems, MIX, k_shot=2, seed=3, demo_pool=problems)
    subset = build_examples(problems[10:20], MIX, k_shot=2, seed=3, demo_pool=problems)
    assert full[10:20] == subset


def test_mixture_proportions_are_respected() -> None:
    problems = make_problems(2000)
    mixture = {"answer_only": 0.5, "zero_shot_cot": 0.3, "few_shot_cot": 0.2}
    examples = build_examples(problems, mixture, k_shot=1, seed=0)
    assert len(examples) == 2000
    counts = Counter(e.format for e in examples)
    for fmt, weight in mixture.items():
        assert abs(counts[fmt] / 2000 - weight) < 0.04, (fmt, counts)


def test_zero_weight_formats_are_never_drawn() -> None:
    examples = build_examples(make_problems(300), {"answer_only": 1, "few_shot_cot": 0}, seed=1)
    assert {e.format for e in examples} == {"answer_only"}


def test_per_problem_makes_one_example_per_positive_format() -> None:
    problems = make_problems(5)
    mixture = {"answer_only": 1, "zero_shot_cot": 0, "few_shot_cot": 2}
    examples = build_examples(problems, mixture, k_shot=2, seed=0, per_problem=True)
    assert [(e.problem_id, e.format) for e in examples] == [
        (p.id, fmt) for p in problems for fmt in ("answer_only", "few_shot_cot")
    ]


def test_few_shot_demos_come_from_the_pool_and_never_the_problem() -> None:
    problems = make_problems(100)
    pool = make_problems(100)[:30]  # overlaps the first 30 problems: the self-exclusion case
    pool_blocks = {prompt(p, "answer_only") + target(p, "few_shot_cot") for p in pool}
    examples = build_examples(problems, {"few_shot_cot": 1}, k_shot=3, seed=5, demo_pool=pool)
    for problem, example in zip(problems, examples, strict=True):
        *demos, last = example.source.split("\n\n")
        assert len(demos) == 3
        assert len(set(demos)) == 3
        assert set(demos) <= pool_blocks
        assert all(problem.question not in demo for demo in demos)
        assert last == prompt(problem, "answer_only")


def test_extracted_answer_of_every_built_target_is_gold() -> None:
    problems = make_problems(300)
    examples = build_examples(problems, MIX, k_shot=2, seed=11, per_problem=True)
    golds = {p.id: p.answer for p in problems}
    assert all(extract_answer(e.target) == golds[e.problem_id] for e in examples)
    assert all(isinstance(e, Example) for e in examples)


def test_demo_pool_too_small_raises_with_hint() -> None:
    problems = make_problems(3)
    with pytest.raises(DataError, match="k_shot=3"):
        build_examples(problems, {"few_shot_cot": 1}, k_shot=3, seed=0)


def test_pool_members_without_rationale_are_not_used_as_demos() -> None:
    problem = make_problems(1)[0]
    bare = Problem("bare", "What is 2 + 2?", "4", source="synthetic")
    with pytest.raises(DataError, match="only 0"):
        build_examples([problem], {"few_shot_cot": 1}, k_shot=1, seed=0, demo_pool=[bare])


def test_problem_without_rationale_raises_naming_it_for_cot_mixtures() -> None:
    problems = [*make_problems(3), Problem("no-rat-9", "What is 2 + 2?", "4")]
    with pytest.raises(DataError, match="no-rat-9"):
        build_examples(problems, {"answer_only": 0.9, "zero_shot_cot": 0.1}, seed=0)


def test_problem_without_rationale_is_fine_answer_only() -> None:
    bare = Problem("no-rat", "What is 2 + 2?", "4")
    [example] = build_examples([bare], {"answer_only": 1}, seed=0)
    expected = Example("no-rat", "answer_only", "Question: What is 2 + 2?\nAnswer:", " The answer is 4.")
    assert example == expected


def test_few_shot_without_k_shot_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="k_shot"):
        build_examples(make_problems(5), {"few_shot_cot": 1}, k_shot=0, seed=0)


def test_validate_mixture_returns_probabilities_of_positive_formats() -> None:
    assert validate_mixture({"answer_only": 3, "zero_shot_cot": 1, "few_shot_cot": 0}) == {
        "answer_only": 0.75,
        "zero_shot_cot": 0.25,
    }


def test_unknown_format_raises_listing_valid_ones() -> None:
    with pytest.raises(ConfigError, match="zero_shot.*answer_only, zero_shot_cot, few_shot_cot"):
        validate_mixture({"zero_shot": 1.0})


@pytest.mark.parametrize(
    ("mixture", "message"),
    [
        ({"answer_only": -0.5, "zero_shot_cot": 1}, "answer_only.*negative"),
        ({"answer_only": 0, "zero_shot_cot": 0.0}, "all zero"),
        ({}, "all zero"),
        ({"answer_only": float("nan")}, "answer_only.*finite"),
        ({"answer_only": "1"}, "answer_only.*finite"),
    ],
)
def test_bad_mixture_raises_naming_the_problem(mixture: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_mixture(mixture)


def test_unknown_format_in_prompt_raises() -> None:
    with pytest.raises(ConfigError, match="few_shot_cot"):
        prompt(make_problems(1)[0], "few-shot")
