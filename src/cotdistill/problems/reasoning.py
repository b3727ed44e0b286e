"""Loaders for the non-arithmetic sets: StrategyQA (yes/no with decompositions) and BIG-Bench Hard."""

from __future__ import annotations

from pathlib import Path

from cotdistill.errors import DataError
from cotdistill.problems.jsonio import Located, iter_json_list, read_json, require_file
from cotdistill.problems.record import Problem, Step

STRATEGYQA_SPLITS = ("train", "dev")

# The 27 BBH tasks, fixed by the benchmark; listed so a typo fails before any file is read.
BBH_TASKS = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)


def read_strategyqa(path: str | Path) -> list[Problem]:
    """StrategyQA's JSON list: answer "yes"/"no", facts (as sentences) as rationale, decomposition as steps.

    The data set gives no sub-answers, so each Step's answer is "". Ids are `strategyqa/<qid>`.
    """
    problems = []
    for item in iter_json_list(path):
        answer = item.field("answer")
        if not isinstance(answer, bool):
            raise DataError(f"{item.path}: {item.where}: field 'answer' must be true or false")
        facts = _string_list(item.record.get("facts") or [], "facts", item.path, item.where)
        decomposition = _string_list(
            item.record.get("decomposition") or [], "decomposition", item.path, item.where
        )
        problems.append(
            Problem(
                id=f"strategyqa/{item.text('qid')}",
                question=item.text("question").strip(),
                answer="yes" if answer else "no",
                rationale=" ".join(_sentence(fact) for fact in facts if fact.strip()) or None,
                steps=tuple(Step(question=q.strip(), answer="") for q in decomposition),
                source="strategyqa",
            )
        )
    return problems


def load_strategyqa(data_dir: Path, split: str) -> list[Problem]:
    """StrategyQA "train" (2061), "dev" (229) or "all" (train then dev)."""
    problems: list[Problem] = []
    for part in STRATEGYQA_SPLITS if split == "all" else (split,):
        problems += read_strategyqa(data_dir / "strategyqa" / f"{part}.json")
    return problems


def read_bbh_task(path: str | Path, task: str | None = None) -> list[Problem]:
    """One BBH task file `{"examples": [{"input","target"}]}`; ids `bbh/<task>/<i>`, source `bbh/<task>`."""
    path = require_file(path)
    task = task or path.stem
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise DataError(f"{path}: missing required field 'examples' (a list)")
    problems = []
    for item in _examples(path, data["examples"]):
        problems.append(
            Problem(
                id=f"bbh/{task}/{item.index}",
                question=item.text("input").strip(),
                answer=item.text("target").strip(),
                source=f"bbh/{task}",
            )
        )
    return problems


def load_bbh(data_dir: Path, split: str) -> list[Problem]:
    """All 27 BBH tasks ("all", 6511 examples) or one task, named as the split."""
    tasks = BBH_TASKS if split == "all" else (split,)
    problems: list[Problem] = []
    for task in tasks:
        problems += read_bbh_task(data_dir / "bbh" / "bbh" / f"{task}.json", task)
    return problems


def bbh_cot_prompt(task: str, data_dir: str | Path) -> str:
    """The official 3-shot chain-of-thought prompt for a BBH task, without the canary header.

    The files start with a canary line and a `-----` rule that must not reach a model.
    """
    if task not in BBH_TASKS:
        raise DataError(f"unknown BBH task {task!r}; known tasks: {', '.join(BBH_TASKS)}")
    path = require_file(Path(data_dir) / "bbh" / "cot-prompts" / f"{task}.txt")
    return strip_canary_header(path.read_text(encoding="utf-8"))


def strip_canary_header(text: str) -> str:
    """Drop a leading canary line and the dashed rule under it; other text is returned unchanged."""
    lines = text.splitlines()
    if lines and "canary" in lines[0].lower():
        lines = lines[1:]
        if lines and lines[0].strip() and set(lines[0].strip()) == {"-"}:
            lines = lines[1:]
    return "\n".join(lines).strip()


def _examples(path: Path, examples: list) -> list[Located]:
    """BBH examples as located records (the list sits under "examples", not at the top)."""
    located = []
    for index, record in enumerate(examples):
        where = f"examples[{index}]"
        if not isinstance(record, dict):
            raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
        located.append(Located(path=path, where=where, index=index, record=record))
    return located


def _sentence(fact: str) -> str:
    """A fact as a sentence: several joined facts must not run into each other."""
    fact = fact.strip()
    return fact if fact[-1] in ".!?" else f"{fact}."


def _string_list(value: object, name: str, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}: {where}: field {name!r} must be a list of strings")
    return value
