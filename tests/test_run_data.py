"""The problems a run trains and evaluates on: synthetic with a disjoint held-out set, or a named data set."""

from __future__ import annotations

import pytest

from conftest import SHARED_DATA
from cotdistill.config import DataConfig, SyntheticDataConfig
from cotdistill.errors import DataError
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems
from cotdistill.run_data import load_run_problems


def synthetic(**settings) -> DataConfig:
    return DataConfig(dataset="synthetic", synthetic=SyntheticDataConfig(**settings))


# A question space small enough that the held-out seed redraws many training questions.
CROWDED = dict(train_size=3000, eval_size=20, seed=5, min_steps=1, max_steps=1, eval_steps=1,
               operand_min=1, operand_max=2, operations=["add"])


def test_held_out_problems_never_repeat_a_training_question():
    data = synthetic(**CROWDED)
    train, held_out = load_run_problems(data)
    s = data.synthetic
    raw = generate_problems(SyntheticSpec(n=s.eval_size * 2, seed=s.seed + 7919, min_steps=1, max_steps=1,
                                          operand_min=1, operand_max=2, operations=("add",)))
    seen = {p.question for p in train}
    assert any(p.question in seen for p in raw), "precondition: the held-out seed should redraw training questions"
    assert held_out, "the held-out set came back empty"
    assert not seen & {p.question for p in held_out}


def test_held_out_problems_are_disjoint_with_the_demo_sizes():
    train, held_out = load_run_problems(synthetic(train_size=500, eval_size=30))
    assert len(train) == 500 and len(held_out) == 30
    assert not {p.question for p in train} & {p.question for p in held_out}
    assert not {p.id for p in train} & {p.id for p in held_out}


@pytest.mark.parametrize("eval_steps", [1, 2, 4])
def test_held_out_problems_have_exactly_eval_steps_operations(eval_steps):
    train, held_out = load_run_problems(synthetic(train_size=200, eval_size=25, min_steps=1, max_steps=3,
                                                  eval_steps=eval_steps))
    assert len(held_out) == 25
    assert {len(p.steps) for p in held_out} == {eval_steps}
    assert {len(p.steps) for p in train} <= {1, 2, 3}


def test_eval_steps_zero_keeps_the_training_range_for_held_out_problems():
    _, held_out = load_run_problems(synthetic(train_size=200, eval_size=60, min_steps=1, max_steps=3, eval_steps=0))
    assert {len(p.steps) for p in held_out} == {1, 2, 3}


def test_limit_caps_training_problems_but_not_the_held_out_set():
    full, _ = load_run_problems(synthetic(train_size=100, eval_size=10))
    data = synthetic(train_size=100, eval_size=10)
    data.limit = 7
    train, held_out = load_run_problems(data)
    assert [p.id for p in train] == [p.id for p in full[:7]]
    assert len(held_out) == 10


def test_limit_larger_than_the_data_keeps_everything():
    data = synthetic(train_size=12, eval_size=3)
    data.limit = 50
    train, _ = load_run_problems(data)
    assert len(train) == 12


def test_same_settings_give_the_same_problems():
    first = load_run_problems(synthetic(train_size=50, eval_size=5))
    second = load_run_problems(synthetic(train_size=50, eval_size=5))
    assert first == second


def test_named_data_set_loads_its_split_and_has_no_held_out_set():
    data = DataConfig(dataset="multiarith", split="train", data_dir=str(SHARED_DATA))
    train, held_out = load_run_problems(data)
    assert len(train) == 420
    assert held_out == []
    assert all(p.source == "multiarith" for p in train)


def test_limit_applies_to_a_named_data_set():
    data = DataConfig(dataset="multiarith", split="train", data_dir=str(SHARED_DATA), limit=25)
    train, held_out = load_run_problems(data)
    assert len(train) == 25 and held_out == []


def test_no_training_problems_is_a_data_error_naming_the_data_set():
    with pytest.raises(DataError, match="synthetic.*holds no problems"):
        load_run_problems(synthetic(train_size=0, eval_size=5))


def test_empty_jsonl_file_is_a_data_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="jsonl.*holds no problems"):
        load_run_problems(DataConfig(dataset="jsonl", path=str(empty)))


def test_unknown_data_set_is_a_data_error_listing_the_known_ones():
    with pytest.raises(DataError, match="unknown data.dataset 'gsm9k'") as err:
        load_run_problems(DataConfig(dataset="gsm9k"))
    assert "synthetic" in str(err.value) and "multiarith" in str(err.value)


def test_too_small_question_space_for_the_held_out_set_is_an_error_not_a_smaller_set():
    with pytest.raises(DataError, match="eval_size"):
        load_run_problems(synthetic(**{**CROWDED, "train_size": 20000}))
