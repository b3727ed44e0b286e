"""The problems a training run uses: the embedded synthetic generator or a named data set."""

from __future__ import annotations

from dataclasses import replace

from cotdistill.config import DataConfig, RunConfig, SyntheticDataConfig
from cotdistill.errors import DataError
from cotdistill.formats import Example, build_examples
from cotdistill.problems.loaders import DATASET_NAMES, check_source, load_problems
from cotdistill.problems.record import Problem
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems

RUN_DATASETS = ("synthetic", *DATASET_NAMES)


def synthetic_spec(s: SyntheticDataConfig) -> SyntheticSpec:
    """The generator spec of the training problems a synthetic config describes."""
    return SyntheticSpec(n=s.train_size, seed=s.seed, min_steps=s.min_steps, max_steps=s.max_steps,
                         operand_min=s.operand_min, operand_max=s.operand_max, operations=tuple(s.operations))


# Evaluation splits of the embedded generator, all from the run's own settings. "held_out" is in distribution
# (eval_steps operations, the training operands); the others are out of distribution in one respect each, for
# checkpoint selection as Fu et al. do it (in- vs out-of-distribution accuracy).
SYNTHETIC_SPLITS = {
    "held_out": "unseen problems of eval_steps operations with the training operands (in distribution)",
    "more_steps": "unseen problems of max_steps + 1 operations, one more than any training problem",
    "larger_numbers": "unseen problems whose operands lie in operand_max+1 .. 2*operand_max+1, past every "
                      "training operand",
}
_SPLIT_SEED_OFFSET = {"held_out": 7919, "more_steps": 2 * 7919, "larger_numbers": 3 * 7919}


def synthetic_problems(data: DataConfig, split: str = "held_out") -> tuple[list[Problem], list[Problem]]:
    """Training problems and an evaluation split (`SYNTHETIC_SPLITS`) from a disjoint seed, no question of which
    was seen in training.

    Candidates are drawn in growing rounds until ``eval_size`` unseen, distinct questions are found; a
    question space too small for that is an error rather than a silently smaller evaluation.
    """
    if split not in SYNTHETIC_SPLITS:
        raise DataError(f"unknown synthetic split {split!r}; known: {', '.join(SYNTHETIC_SPLITS)}")
    s = data.synthetic
    spec = synthetic_spec(s)
    train = generate_problems(spec)
    steps = s.eval_steps or 0
    evaluated = replace(spec, seed=s.seed + _SPLIT_SEED_OFFSET[split], min_steps=steps or s.min_steps,
                        max_steps=steps or s.max_steps)
    if split == "more_steps":
        evaluated = replace(evaluated, min_steps=s.max_steps + 1, max_steps=s.max_steps + 1)
    elif split == "larger_numbers":
        evaluated = replace(evaluated, operand_min=s.operand_max + 1, operand_max=2 * s.operand_max + 1,
                            max_total=max(spec.max_total, 4 * (2 * s.operand_max + 1)))
    seen = {p.question for p in train}
    chosen: list[Problem] = []
    drawn = 0
    for round_size in (2 * s.eval_size, 8 * s.eval_size, 32 * s.eval_size):
        candidates = generate_problems(replace(evaluated, n=drawn + round_size))[drawn:]
        drawn += round_size
        for problem in candidates:
            if problem.question not in seen and len(chosen) < s.eval_size:
                chosen.append(problem)
                seen.add(problem.question)
        if len(chosen) == s.eval_size:
            return train, chosen
    raise DataError(f"data.synthetic: only {len(chosen)} of eval_size={s.eval_size} {split} problems differ "
                    "from the training questions; widen operand_min..operand_max or the step range, or lower "
                    "eval_size")


def check_run_data(data: DataConfig) -> None:
    """The data checks that need no reading (name, split, file), so ``validate_run`` refuses a typo before a run
    starts rather than after its output folder exists."""
    if data.dataset not in RUN_DATASETS:
        raise DataError(f"unknown data.dataset {data.dataset!r}; known: {', '.join(RUN_DATASETS)}")
    if data.dataset != "synthetic":
        check_source(data.dataset, data.split, data.path or None)


def load_run_problems(data: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """(training problems, held-out problems); named data sets have no held-out part here."""
    check_run_data(data)
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


def run_examples(config: RunConfig, problems: list[Problem], demo_pool: list[Problem] | None = None) -> list[Example]:
    """The examples a run makes of ``problems``: its format mixture, per-problem mixing, k-shot demonstrations
    from ``demo_pool`` (default: the problems themselves, the training split) and its seed.

    The one recipe for a run's texts: training, the tokenizers of tiny and random models, and the benchmarks'
    baselines all call it, so they see the same examples.
    """
    return build_examples(problems, config.data.formats, k_shot=config.data.k_shot, seed=config.train.seed,
                          demo_pool=problems if demo_pool is None else demo_pool,
                          per_problem=config.data.per_problem)
