"""Socratic formats, single-format batches, per-format loss weights and teacher targets in batches."""

from __future__ import annotations

import pytest
import torch

from cotdistill.batching import LengthGroupedBatches, TokenizedExample, collate
from cotdistill.config import load_config
from cotdistill.errors import ConfigError, DataError
from cotdistill.formats import build_examples
from cotdistill.objectives import IGNORE_INDEX, distill_loss, mean_token_nll
from cotdistill.problems.record import Problem, Step
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems
from cotdistill.runs import mixture_strategy
from cotdistill.socratic import (
    DECOMPOSER_TASK,
    SOLVER_TASK,
    decomposer_target,
    parse_subquestions,
    solver_prompt,
)

PROBLEMS = generate_problems(SyntheticSpec(n=40, seed=3, min_steps=1, max_steps=3))


def test_a_unified_mixture_gives_one_decomposer_example_and_one_solver_example_per_step():
    examples = build_examples(PROBLEMS, {"decomposer": 1, "solver": 1}, per_problem=True)
    decomposer = [e for e in examples if e.format == "decomposer"]
    solver = [e for e in examples if e.format == "solver"]
    assert len(decomposer) == len(PROBLEMS)
    assert len(solver) == sum(len(p.steps) for p in PROBLEMS)
    assert all(e.source.startswith(DECOMPOSER_TASK) for e in decomposer)
    assert all(e.source.startswith(SOLVER_TASK) and e.source.endswith(":") for e in solver)
    assert all(e.target.startswith(" ") and not e.target.startswith("  ") for e in examples)


def test_the_solver_prompt_carries_every_earlier_step_and_the_current_sub_question():
    problem = next(p for p in PROBLEMS if len(p.steps) == 3)
    examples = [e for e in build_examples([problem], {"solver": 1}) if e.format == "solver"]
    assert [e.problem_id for e in examples] == [f"{problem.id}#step{i}" for i in (1, 2, 3)]
    last = examples[-1]
    assert last.source == solver_prompt(problem.question, problem.steps[:2], problem.steps[2].question)
    for step in problem.steps[:2]:
        assert step.question in last.source and step.answer in last.source
    assert last.source.endswith("\nA3:") and last.target == " " + problem.steps[2].answer


def test_decomposer_targets_parse_back_into_the_sub_questions():
    for problem in PROBLEMS:
        assert parse_subquestions(decomposer_target(problem.steps)) == [s.question for s in problem.steps]


def test_sub_questions_parse_without_newlines_as_a_t5_tokenizer_decodes_them():
    assert parse_subquestions("Q1: How many apples? Q2: How many are left?") == ["How many apples?",
                                                                                  "How many are left?"]


def test_the_sub_question_list_ends_where_the_numbering_breaks():
    assert parse_subquestions(" Q1: a?\nQ2: b?\nQ5: c?\nQ3: d?") == ["a?", "b?"]
    assert parse_subquestions(" Q1: a?\n\nQuestion: something else") == ["a?"]
    assert parse_subquestions("no sub-questions here") == []


def test_socratic_formats_refuse_problems_without_usable_steps():
    bare = Problem("p1", "How many?", "3", rationale="1 + 2 = 3.")
    with pytest.raises(DataError, match="no Socratic steps"):
        build_examples([bare], {"decomposer": 1})
    unanswered = Problem("p2", "Is it?", "yes", steps=(Step("Is A?", ""),), source="strategyqa")
    with pytest.raises(DataError, match="without answers"):
        build_examples([unanswered], {"solver": 1})
    assert len(build_examples([unanswered], {"decomposer": 1})) == 1  # the decomposer needs no answers


def test_single_format_batches_never_mix_formats_within_a_global_step():
    formats = ["decomposer"] * 37 + ["solver"] * 70 + ["zero_shot_cot"] * 9
    lengths = [(i * 7) % 50 + 1 for i in range(len(formats))]
    order = LengthGroupedBatches(lengths, micro_batch_size=4, world_size=2, seed=5, formats=formats)
    steps = order.epoch(0)
    assert len(steps) == order.steps_per_epoch == 5 + 9 + 2
    for step in steps:
        assert len({formats[i] for rank in step for i in rank}) == 1
    seen = {i for step in steps for rank in step for i in rank}
    assert seen == set(range(len(formats)))  # every example appears in an epoch
    assert order.epoch(0) == steps and order.epoch(1) != steps  # deterministic per epoch
    resumed = order.iterate(rank=1, start_micro_step=7)
    assert next(resumed) == steps[7][1]


def test_without_formats_the_batch_order_is_what_it_was():
    lengths = [(i * 13) % 40 + 1 for i in range(50)]
    plain = LengthGroupedBatches(lengths, 4, 2, seed=9).epoch(3)
    assert plain == LengthGroupedBatches(lengths, 4, 2, seed=9, formats=None).epoch(3)


def example(fmt: str, target: list[int], prompt: int = 0, teacher=None) -> TokenizedExample:
    causal = prompt > 0
    ids = tuple(range(100, 100 + prompt)) + tuple(target) if causal else (5, 6, 7)
    labels = (IGNORE_INDEX,) * prompt + tuple(target) if causal else tuple(target)
    return TokenizedExample(ids, labels, causal, fmt, teacher)


def test_collate_weights_every_token_by_its_examples_format():
    batch = collate([example("decomposer", [1, 2]), example("solver", [3])], pad_id=0,
                    loss_weights={"solver": 2.5})
    assert batch["token_weights"].tolist() == [[1.0, 1.0], [2.5, 2.5]]


def test_collate_puts_teacher_distributions_on_target_positions_and_one_hot_elsewhere():
    teacher = (((9, 4), (0.7, 0.3)), None, ((2,), (1.0,)))
    causal = example("zero_shot_cot", [9, 8, 2], prompt=2, teacher=teacher)
    plain = example("answer_only", [7, 1], prompt=3)
    batch = collate([causal, plain], pad_id=0, teacher=True)
    ids, probs = batch["kd_ids"], batch["kd_probs"]
    assert ids.shape == (2, 5, 2)
    assert ids[0, 2].tolist() == [9, 4] and probs[0, 2].tolist() == pytest.approx([0.7, 0.3])
    assert ids[0, 3].tolist() == [8, 0] and probs[0, 3].tolist() == [1.0, 0.0]  # no teacher: one-hot label
    assert probs[0, :2].sum() == 0 and probs[1, :3].sum() == 0  # prompts carry nothing
    assert ids[1, 3, 0] == 7 and probs[1, 3, 0] == 1.0


def test_with_one_hot_targets_and_unit_weights_the_distillation_loss_is_the_plain_loss():
    torch.manual_seed(0)
    batch = collate([example("zero_shot_cot", [3, 4, 5], prompt=2), example("answer_only", [6], prompt=3)],
                    pad_id=0, loss_weights={}, teacher=True)
    logits = torch.randn(2, batch["labels"].shape[1], 12)
    plain, n = mean_token_nll(logits, batch["labels"], causal=True)
    mixed, m = distill_loss(logits, batch["labels"], batch["kd_ids"], batch["kd_probs"], batch["token_weights"],
                            kd_weight=0.5, causal=True)
    assert n == m and mixed.item() == pytest.approx(plain.item(), rel=1e-5)


RECIPE = "recipes/demo-gpt2-synthetic.yaml"


@pytest.mark.parametrize(("formats", "expected"), [
    ("{decomposer: 1, solver: 1}", ("socratic", "model")),
    ("{solver: 1}", ("socratic", "gold")),
    ("{decomposer: 1}", ("", "model")),
    ("{answer_only: 3, zero_shot_cot: 1}", ("answer_only", "model")),
    ("{decomposer: 5, zero_shot_cot: 1}", ("zero_shot_cot", "model")),
])
def test_training_evaluates_each_mixture_the_way_it_can_be_scored(formats, expected):
    assert mixture_strategy(load_config(RECIPE, [f"data.formats={formats}"])) == expected


@pytest.mark.parametrize(("override", "message"), [
    ("train.loss_weights={solvr: 2}", "train.loss_weights key"),
    ("train.loss_weights={solver: -1}", "train.loss_weights.solver must be >= 0"),
    ("train.kd_weight=1.5", "train.kd_weight must be in"),
    ("eval.strategy=socratc", "eval.strategy"),
    ("data.formats={decomposer: 1, solvers: 1}", "unknown format"),
])
def test_bad_socratic_and_distillation_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, [override]) if "formats" not in override else build_examples(
            PROBLEMS, load_config(RECIPE, [override]).data.formats)
