"""The synthetic generator: deterministic, arithmetically right, small, and Socratic step by step."""

from __future__ import annotations

import re

import pytest

from cotdistill.errors import ConfigError
from cotdistill.problems import OpPhrase, SyntheticSpec, Template, generate_problems, split_problems

EQUATION = re.compile(r"(\d+) ([+*-]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
SPEC = SyntheticSpec(n=300, seed=7)


@pytest.fixture(scope="module")
def problems():
    return generate_problems(SPEC)


def equations(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in EQUATION.findall(text)]


def test_same_seed_gives_identical_problems(problems):
    assert generate_problems(SyntheticSpec(n=300, seed=7)) == problems


def test_different_seeds_give_different_problems(problems):
    other = generate_problems(SyntheticSpec(n=300, seed=8))
    assert sum(a.question != b.question for a, b in zip(problems, other, strict=True)) > 250


def test_a_longer_run_extends_a_shorter_one(problems):
    assert generate_problems(SyntheticSpec(n=20, seed=7)) == problems[:20]


def test_ids_and_source_name_seed_and_index(problems):
    assert [p.id for p in problems[:3]] == ["synthetic/7/0", "synthetic/7/1", "synthetic/7/2"]
    assert {p.source for p in problems} == {"synthetic"}


def test_every_equation_is_correct_and_the_last_result_is_the_answer(problems):
    for problem in problems:
        found = equations(problem.rationale)
        assert found, problem.rationale
        assert all(OPS[op](a, b) == c for a, op, b, c in found), problem.rationale
        assert str(found[-1][3]) == problem.answer


def test_each_step_starts_from_the_previous_result(problems):
    for problem in problems:
        start = int(re.search(r"\d+", problem.question).group())
        chain = equations(problem.rationale)
        assert [a for a, *_ in chain] == [start] + [c for *_, c in chain[:-1]]


def test_step_counts_stay_in_range(problems):
    counts = {len(p.steps) for p in problems}
    assert counts == {2, 3, 4}
    short = generate_problems(SyntheticSpec(n=50, seed=1, min_steps=1, max_steps=1))
    assert {len(p.steps) for p in short} == {1}


def test_no_number_is_negative_or_above_max_total(problems):
    for problem in problems:
        numbers = [int(n) for n in re.findall(r"-?\d+", problem.question + " " + problem.rationale)]
        assert min(numbers) >= 0 and max(numbers) <= SPEC.max_total
        assert "-" not in problem.question


def test_steps_match_operations_one_to_one(problems):
    for problem in problems:
        events = problem.question.count(".") - 1  # intro + one sentence per operation
        assert len(problem.steps) == events
        assert problem.rationale == " ".join(step.answer for step in problem.steps)
        for step in problem.steps:
            assert len(equations(step.answer)) == 1
            assert step.question.startswith("How many ") and step.question.endswith("?")


def test_sub_questions_rarely_repeat_within_a_problem(problems):
    repeats = sum(len({step.question for step in p.steps}) < len(p.steps) for p in problems)
    assert repeats <= len(problems) // 50


def test_step_sentences_follow_the_template(problems):
    step = problems[0].steps[0]
    clause = re.match(r"After (.+?), ", step.answer).group(1)
    assert step.question.endswith(f"after {clause}?")


def test_all_three_operations_appear_by_default(problems):
    signs = {op for p in problems for _, op, _, _ in equations(p.rationale)}
    assert signs == {"+", "-", "*"}


def test_operations_subset_is_respected():
    only_add = generate_problems(SyntheticSpec(n=50, seed=3, operations=("add",)))
    assert {op for p in only_add for _, op, _, _ in equations(p.rationale)} == {"+"}


def test_operands_stay_in_range():
    spec = SyntheticSpec(n=100, seed=2, operand_min=3, operand_max=5, operations=("add", "sub"))
    for problem in generate_problems(spec):
        assert all(3 <= b <= 5 for _, _, b, _ in equations(problem.rationale))


def test_custom_template_is_used():
    template = Template(
        intro="{name} owns {start} {start_noun}.",
        step="Then {name} has {equation}.",
        sub_question="What does {name} have after {clause}?",
        question="What does {name} own?",
        phrases=(OpPhrase("add", "{name} gets {n} {n_noun}.", "getting {n}"),),
    )
    (problem,) = generate_problems(SyntheticSpec(n=1, seed=0, operations=("add",), templates=(template,)))
    assert " owns " in problem.question and problem.question.endswith(" own?")
    assert all(step.answer.startswith("Then ") for step in problem.steps)


def test_template_with_unknown_placeholder_is_rejected():
    with pytest.raises(ConfigError, match=r"templates\[0\]\.intro: bad placeholder"):
        SyntheticSpec(templates=(Template(intro="{nmae} has {start}."),))


def test_template_missing_a_phrase_for_an_allowed_operation_is_rejected():
    phrases = (OpPhrase("add", "{name} gets {n}.", "getting {n}"),)
    with pytest.raises(ConfigError, match="no phrase for operation 'sub'"):
        SyntheticSpec(operations=("add", "sub"), templates=(Template(phrases=phrases),))


@pytest.mark.parametrize(
    "bad",
    [
        {"min_steps": 3, "max_steps": 2},
        {"operand_min": 0},
        {"operations": ("div",)},
        {"operations": ()},
        {"operand_max": 50, "max_total": 40},
    ],
)
def test_invalid_spec_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        SyntheticSpec(**bad)


def test_split_problems_holds_out_the_last_ones(problems):
    train, held = split_problems(problems, held_out=50)
    assert (len(train), len(held)) == (250, 50)
    assert held == problems[-50:] and train + held == problems
    with pytest.raises(ConfigError):
        split_problems(problems, held_out=301)
