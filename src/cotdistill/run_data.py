"""The problems a training run uses: the embedded synthetic generator or a named data set."""

from __future__ import annotations

from cotdistill.config import DataConfig
from cotdistill.errors import DataError
from cotdistill.problems.loaders import DATASET_NAMES, load_problems
from cotdistill.problems.record import Problem
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems

RUN_DATASETS = ("synthetic", *DATASET_NAMES)


def synthetic_problems(data: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """Training problems and a held-out set from a disjoint seed, minus any question seen in training."""
    s = data.synthetic
    train = generate_problems(SyntheticSpec(n=s.train_size, seed=s.seed, min_steps=s.min_steps,
                                            max_steps=s.max_steps, operand_min=s.operand_min,
                                            operand_max=s.operand_max, operations=tuple(s.operations)))
    eval_min = s.eval_steps or s.min_steps
    eval_max = s.eval_steps or s.max_steps
    candidates = generate_problems(SyntheticSpec(n=s.eval_size * 2, seed=s.seed + 7919, min_steps=eval_min,
                                                 max_steps=eval_max, operand_min=s.operand_min,
                                                 operand_max=s.operand_max, operations=tuple(s.operations)))
    seen = {p.question for p in train}
    held_out = [p for p in candidates if p.question not in seen][: s.eval_size]
    return train, held_out


def load_run_problems(data: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """(training problems, held-out problems); named data sets have no held-out part here."""
    if data.dataset not in RUN_DATASETS:
        raise DataError(f"unknown data.dataset {data.dataset!r}; known: {', '.join(RUN_DATASETS)}")
    if data.dataset == "synthetic":
        train, held_out = synthetic_problems(data)
    else:
        train = load_problems(data.dataset, data.split, data_dir=data.data_dir or None, path=data.path or None)
        held_out = []
    if data.limit:
        train = train[: data.limit]
    if not train:
        raise DataError(f"data.dataset={data.dataset!r} split {data.split!r} holds no problems")
    return train, held_out
