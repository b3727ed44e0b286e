"""Evaluation data sets by name: which split is evaluated and where few-shot demonstrations come from.

Resolved before any model is loaded, so a typo or a missing file fails before any rank generates.
Following Fu et al. (2023), the out-of-distribution math sets (SVAMP, ASDiv, MultiArith) take their
demonstrations from GSM8K's training split; StrategyQA takes them from its own training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cotdistill.config import DataConfig, EvalRunConfig
from cotdistill.errors import DataError
from cotdistill.problems.loaders import dataset_splits, load_problems, resolve_data_dir
from cotdistill.problems.reasoning import BBH_TASKS, bbh_cot_prompt, read_bbh_task
from cotdistill.problems.record import Problem
from cotdistill.run_data import SYNTHETIC_SPLITS, synthetic_problems

GSM8K_TRAIN = ("gsm8k", "train")

# name -> (default split, where demonstrations come from)
EVAL_SETS: dict[str, tuple[str, tuple[str, str] | None]] = {
    "gsm8k": ("test", GSM8K_TRAIN),
    "svamp": ("all", GSM8K_TRAIN),
    "asdiv": ("all", GSM8K_TRAIN),
    "multiarith": ("all", GSM8K_TRAIN),
    "strategyqa": ("dev", ("strategyqa", "train")),
    "synthetic": ("held_out", None),
    "bbh": ("all", None),  # expands to one set per task, prompted with the official 3-shot CoT prompts
}
BBH_PREFIX = "bbh/"


@dataclass
class EvalSet:
    name: str
    problems: list[Problem]
    demo_pool: list[Problem]
    prompts: list[str] | None = None  # ready-made prompts (BBH); otherwise formats.eval_prompts builds them


def folder_name(name: str) -> str:
    """A data set's label as a folder name (``svamp:test`` -> ``svamp_test``, ``bbh/x`` -> ``bbh_x``)."""
    return name.replace(":", "_").replace("/", "_")


def bbh_prompt(problem: Problem, strategy: str, cot_prompt: str) -> str:
    """BBH's own Q/A layout (Suzgun et al.): the official 3 demonstrations for few-shot CoT."""
    question = f"Q: {problem.question}\nA:"
    if strategy == "answer_only":
        return question
    question += " Let's think step by step."
    return f"{cot_prompt.strip()}\n\n{question}" if strategy == "few_shot_cot" else question


def _bbh_task(task: str, config: EvalRunConfig) -> EvalSet:
    if task not in BBH_TASKS:
        raise DataError(f"unknown BBH task {task!r}; known tasks: {', '.join(BBH_TASKS)}")
    folder = resolve_data_dir(config.data_dir or None)
    if folder is None:
        raise DataError("bbh needs data_dir= or $COTDISTILL_DATA_DIR: a folder laid out like the shared data")
    problems = read_bbh_task(folder / "bbh" / "bbh" / f"{task}.json", task)
    cot = bbh_cot_prompt(task, folder) if config.strategy == "few_shot_cot" else ""
    found = _limited(EvalSet(BBH_PREFIX + task, problems, []), config)
    found.prompts = [bbh_prompt(p, config.strategy, cot) for p in found.problems]
    return found


def _parse(spec: str) -> tuple[str, str | None]:
    name, _, split = spec.partition(":")
    return name.strip(), (split.strip() or None)


def _is_file_spec(spec: str) -> bool:
    return spec.endswith((".json", ".jsonl")) or Path(spec).is_file()


def check_eval_set(spec: str) -> None:
    """Refuse a data set name, split, BBH task or file that ``resolve_eval_set`` would refuse, without reading
    any data: a recipe's eval.datasets is checked before training starts."""
    if _is_file_spec(spec):
        if not Path(spec).is_file():
            raise DataError(f"evaluation file not found: {spec}")
        return
    name, split = _parse(spec)
    if name not in EVAL_SETS:
        raise DataError(f"unknown evaluation data set {name!r}; known: {', '.join(EVAL_SETS)}, "
                        "or a path to a .json/.jsonl file")
    if name == "bbh":
        if split in (None, "default", "all"):
            raise DataError("bbh holds 27 tasks: name one as bbh:<task>, or list bbh in datasets for all of them")
        if split not in BBH_TASKS:
            raise DataError(f"unknown BBH task {split!r}; known tasks: {', '.join(BBH_TASKS)}")
        return
    if name == "synthetic":
        if split not in (None, "default", *SYNTHETIC_SPLITS):
            raise DataError(f"unknown synthetic split {split!r}; known: "
                            + "; ".join(f"{k} ({v})" for k, v in SYNTHETIC_SPLITS.items()))
        return
    split = EVAL_SETS[name][0] if split in (None, "default") else split
    if split not in dataset_splits(name):
        raise DataError(f"unknown split {split!r} for {name!r}; valid splits: {', '.join(dataset_splits(name))}")


def resolve_eval_set(spec: str, config: EvalRunConfig) -> EvalSet:
    """Load one data set named ``name[:split]`` (or a .json/.jsonl file of question/answer records)."""
    data_dir = config.data_dir or None
    check_eval_set(spec)
    if _is_file_spec(spec):
        problems = load_problems("jsonl", path=spec)
        return _limited(EvalSet(Path(spec).stem, problems, problems), config)
    name, split = _parse(spec)
    default_split, demo_source = EVAL_SETS[name]
    if name == "bbh":
        return _bbh_task(str(split), config)
    if name == "synthetic":
        split = default_split if split in (None, "default") else split
        train, held_out = synthetic_problems(DataConfig(dataset="synthetic", synthetic=config.synthetic), split)
        return _limited(EvalSet("synthetic" if split == default_split else f"synthetic:{split}", held_out, train),
                        config)
    split = default_split if split in (None, "default") else split
    problems = load_problems(name, split, data_dir=data_dir)
    demos: list[Problem] = []
    if config.strategy == "few_shot_cot" and demo_source is not None:
        demos = load_problems(demo_source[0], demo_source[1], data_dir=data_dir)
    label = name if split == default_split else f"{name}:{split}"
    return _limited(EvalSet(label, problems, demos), config)


def _limited(found: EvalSet, config: EvalRunConfig) -> EvalSet:
    if config.limit:
        found.problems = found.problems[: config.limit]
    if not found.problems:
        raise DataError(f"evaluation data set {found.name!r} holds no problems")
    return found


def _expand(datasets: list[str]) -> list[str]:
    """The data sets named, with ``bbh`` (or ``bbh:all``) expanded to its 27 tasks."""
    names: list[str] = []
    for spec in (s.strip() for s in datasets if s.strip()):
        if spec in ("bbh", "bbh:all", "bbh:default"):
            names += [f"bbh:{task}" for task in BBH_TASKS]
        else:
            names.append(spec)
    return names


def check_eval_sets(datasets: list[str]) -> None:
    """``check_eval_set`` for each of a list, as ``resolve_eval_sets`` reads it."""
    for spec in _expand(datasets):
        check_eval_set(spec)


def resolve_eval_sets(config: EvalRunConfig) -> list[EvalSet]:
    """Every requested set; ``bbh`` (or ``bbh:all``) expands to its 27 tasks. ``config.demos`` (a file) replaces
    every set's demonstration pool."""
    names = _expand(config.datasets)
    demos = None
    if config.demos:
        if not Path(config.demos).is_file():
            raise DataError(f"demonstration file not found: {config.demos}")
        demos = load_problems("jsonl", path=config.demos)
    sets = [resolve_eval_set(spec, config) for spec in names]
    labels = [s.name for s in sets]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise DataError(f"data set(s) named twice: {', '.join(duplicates)}")
    if demos is not None:
        for found in sets:
            found.demo_pool = demos
    return sets
