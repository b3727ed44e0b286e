"""GSM8K in its official JSONL form (plain and Socratic), from the hub, and its ChatGPT sub-questions.

The official solution text mixes prose with `<<a*b=c>>` calculator marks and a `#### 72` answer
line; students should learn from the prose, and scorers need the bare number, so both are split here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cotdistill.errors import DataError
from cotdistill.problems.jsonio import iter_jsonl
from cotdistill.problems.record import Problem, Step

GSM8K_SPLITS = ("train", "test")
_CALC_MARK = re.compile(r"<<[^<>]*>>")
_SOCRATIC_SEP = "**"
_LABEL = re.compile(r"^\s*([QA])(\d+)\s*:\s*")
_FINAL = re.compile(r"^\s*final answer\s*:", re.IGNORECASE)


def strip_calculator_marks(text: str) -> str:
    """Drop GSM8K's `<<48/2=24>>` annotations, which only drove the authors' calculator."""
    return _CALC_MARK.sub("", text)


def gold_number(text: str) -> str:
    """The answer as written after `####`, without thousands separators ("1,600" -> "1600")."""
    return text.strip().replace(",", "")


def parse_solution(solution: str, socratic: bool = False) -> tuple[str, str, tuple[Step, ...]]:
    """Split a GSM8K solution into (gold answer, rationale, Socratic steps).

    Raises ValueError (callers add the file and line) when the `####` line is missing, or when a
    Socratic line lacks its ` ** ` separator.
    """
    body, sep, answer = solution.rpartition("####")
    if not sep:
        raise ValueError("solution has no '####' answer line")
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    steps: list[Step] = []
    prose: list[str] = []
    for line in lines:
        if socratic:
            question, found, step = line.partition(_SOCRATIC_SEP)
            if not found:
                raise ValueError(f"Socratic line lacks ' ** ': {line[:80]!r}")
            step = strip_calculator_marks(step).strip()
            steps.append(Step(question=question.strip(), answer=step))
            prose.append(step)
        else:
            prose.append(strip_calculator_marks(line).strip())
    return gold_number(answer), "\n".join(prose), tuple(steps)


def problems_from_rows(
    rows: Iterable[Mapping[str, Any]], name: str, split: str, socratic: bool = False
) -> list[Problem]:
    """Problems from in-memory {"question","answer"} rows (the hub's shape); ids `<name>/<split>/<i>`."""
    problems = []
    for index, row in enumerate(rows):
        answer, rationale, steps = parse_solution(row["answer"], socratic=socratic)
        problems.append(
            Problem(
                id=f"{name}/{split}/{index}",
                question=row["question"].strip(),
                answer=answer,
                rationale=rationale,
                steps=steps,
                source=name,
            )
        )
    return problems


def read_gsm8k(path: str | Path, split: str, socratic: bool = False) -> list[Problem]:
    """Read an official GSM8K JSONL file; ids are `gsm8k/<split>/<index in file>`."""
    name = "gsm8k_socratic" if socratic else "gsm8k"
    problems = []
    for item in iter_jsonl(path):
        question, solution = item.text("question"), item.text("answer")
        try:
            answer, rationale, steps = parse_solution(solution, socratic=socratic)
        except ValueError as err:
            raise DataError(f"{item.path}: {item.where}: {err}") from err
        problems.append(
            Problem(
                id=f"{name}/{split}/{item.index}",
                question=question.strip(),
                answer=answer,
                rationale=rationale,
                steps=steps,
                source=name,
            )
        )
    return problems


def gsm8k_file(data_dir: Path, split: str, socratic: bool = False) -> Path:
    """Where a split lives in a folder laid out like the shared data (`gsm8k/test_socratic.jsonl`)."""
    return data_dir / "gsm8k" / f"{split}{'_socratic' if socratic else ''}.jsonl"


def load_gsm8k(data_dir: Path, split: str, socratic: bool = False) -> list[Problem]:
    """GSM8K from local files; "all" is train then test, the order `splits/gsm8k__default.json` indexes."""
    splits = GSM8K_SPLITS if split == "all" else (split,)
    problems: list[Problem] = []
    for part in splits:
        problems += read_gsm8k(gsm8k_file(data_dir, part, socratic), part, socratic=socratic)
    return problems


def load_gsm8k_hub(split: str, socratic: bool = False) -> list[Problem]:
    """GSM8K from the Hugging Face hub (`openai/gsm8k`); imports `datasets` only when asked."""
    try:
        from datasets import load_dataset
    except ImportError as err:  # pragma: no cover - datasets is a declared dependency
        raise DataError("loading GSM8K from the hub needs the 'datasets' package") from err
    config = "socratic" if socratic else "main"
    name = "gsm8k_socratic" if socratic else "gsm8k"
    problems: list[Problem] = []
    for part in GSM8K_SPLITS if split == "all" else (split,):
        rows = load_dataset("openai/gsm8k", config, split=part)
        problems += problems_from_rows(rows, name, part, socratic=socratic)
    return problems


def read_gsm8k_subquestions(path: str | Path) -> list[Problem]:
    """Read ChatGPT's sub-questions for the GSM8K test set (`qg_test_data_raw.jsonl`).

    Ids are `gsm8k_subquestions/test/<i>`, aligned with `gsm8k/test/<i>`. Steps pair `Qk` with `Ak`
    by number; the last `Ak` wins (ChatGPT sometimes redoes its steps), a question with no answer gets
    "", and answers with no question stay only in the rationale. The gold answer is the GSM8K one.
    """
    problems = []
    for item in iter_jsonl(path):
        questions = _labelled(_joined(item.field("questions")))
        answers = _labelled(_joined(item.field("answers")))
        by_number = {number: text for number, text in answers}
        steps = tuple(Step(question=text, answer=by_number.get(number, "")) for number, text in questions)
        gold = item.text("answer")
        if "####" in gold:
            gold = gold.rpartition("####")[2]
        problems.append(
            Problem(
                id=f"gsm8k_subquestions/test/{item.index}",
                question=item.text("problem").strip(),
                answer=gold_number(gold),
                rationale="\n".join(text for _, text in answers),
                steps=steps,
                source="gsm8k_subquestions",
            )
        )
    return problems


def _joined(value: Any) -> str:
    """The file stores each block as a one-element list of text; accept plain text too."""
    if isinstance(value, str):
        return value
    return "\n".join(str(part) for part in value)


def _labelled(block: str) -> list[tuple[int, str]]:
    """Items of a `Q1: ...\\nQ2: ...` block as (number, text); unlabelled lines continue the last item.

    Both Q and A labels count in either block (ChatGPT occasionally writes `Q4:` among answers);
    a `Final answer:` line ends the block.
    """
    items: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        if _FINAL.match(line):
            break
        label = _LABEL.match(line)
        if label:
            items.append((int(label.group(2)), line[label.end() :].strip()))
        elif items:
            number, text = items[-1]
            items[-1] = (number, f"{text}\n{line.strip()}")
    return items
