"""Teacher-trace files and generic question/answer files (JSON list or JSONL).

A teacher trace carries no gold answer, only the teacher's own "The answer is X"; the answer is
extracted with `cotdistill.answers` so that filtering traces against gold later uses exactly the
rules evaluation uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.answers import KINDS, extract_answer, stated_kind
from cotdistill.errors import ConfigError, DataError
from cotdistill.problems.gsm8k import parse_solution
from cotdistill.problems.jsonio import Located, iter_records, require_file
from cotdistill.problems.record import Problem, Step

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TraceLoad:
    """The problems read from a trace file and where the dropped (answerless) records were."""

    problems: list[Problem]
    dropped: tuple[str, ...]  # e.g. ("record 17", ...) for records whose answer could not be extracted


def read_traces(
    path: str | Path,
    question_field: str = "instruction",
    rationale_field: str = "output",
    answer_kind: str = "auto",
    keep_unanswered: bool = False,
    source: str | None = None,
) -> TraceLoad:
    """Read teacher traces: the question, the full output as rationale, the answer it ends with.

    `answer_kind` is "number", "yesno", "text" (see `cotdistill.answers`) or "auto" (yes/no when
    the output says "the answer is yes/no/true/false", else a number). Records whose answer cannot be
    extracted are dropped and listed in `dropped` unless `keep_unanswered`, which keeps them with
    answer "". Ids are `traces/<file stem>/<index>`; the source defaults to the file stem.
    """
    if answer_kind != "auto" and answer_kind not in KINDS:
        raise ConfigError(f"unknown answer_kind {answer_kind!r}; valid: auto, {', '.join(KINDS)}")
    path = require_file(path)
    source = source or path.stem
    problems: list[Problem] = []
    dropped: list[str] = []
    for item in iter_records(path):
        question, output = item.text(question_field).strip(), item.text(rationale_field).strip()
        answer = extract_answer(output, _kind_for(output, answer_kind))
        if answer is None and not keep_unanswered:
            dropped.append(item.where)
            continue
        problems.append(
            Problem(
                id=f"traces/{path.stem}/{item.index}",
                question=question,
                answer=answer or "",
                rationale=output,
                source=source,
            )
        )
    return TraceLoad(problems=problems, dropped=tuple(dropped))


def load_traces(path: str | Path, **options: Any) -> list[Problem]:
    """`read_traces` for the registry: the problems, with a warning that counts dropped records."""
    loaded = read_traces(path, **options)
    if loaded.dropped:
        log.warning(
            "%s: dropped %d trace(s) with no extractable answer (first: %s)",
            path,
            len(loaded.dropped),
            loaded.dropped[0],
        )
    return loaded.problems


def read_problem_file(
    path: str | Path,
    question_field: str = "question",
    answer_field: str = "answer",
    rationale_field: str = "rationale",
    id_field: str = "id",
    records: Iterable[Located] | None = None,
) -> list[Problem]:
    """A generic file of {"question","answer"} records (JSON list or JSONL).

    An answer written as GSM8K writes it (a worked solution, then ``#### 72``) is split into the gold
    number and the rationale (calculator marks dropped), so GSM8K-style files serve as evaluation sets and
    few-shot demonstrations as they are. Optional fields: "rationale", "id" (default
    `<file stem>/<index>`), "source" (default the file stem), "steps" (a list of {"question","answer"}
    objects) and "teacher_tokens" (the data builder's per-token log-probs), so saved Problems read back whole.
    `records`: the file's records when the caller has parsed them already (e.g. from bytes it checked).
    """
    path = require_file(path) if records is None else Path(path)
    problems = []
    for item in iter_records(path) if records is None else records:
        answer, rationale = item.text(answer_field).strip(), item.optional_text(rationale_field)
        if "####" in answer and rationale is None:
            answer, rationale, _ = parse_solution(answer)
        problems.append(
            Problem(
                id=item.optional_text(id_field) or f"{path.stem}/{item.index}",
                question=item.text(question_field).strip(),
                answer=answer,
                rationale=rationale or None,
                steps=_steps(item),
                source=item.optional_text("source") or path.stem,
                teacher_tokens=tuple(item.record.get("teacher_tokens") or ()),
            )
        )
    return problems


def _kind_for(output: str, answer_kind: str) -> str:
    """"auto" reads a yes/no/true/false right after the final answer marker as yes/no, else a number."""
    return stated_kind(output) if answer_kind == "auto" else answer_kind


def _steps(item: Located) -> tuple[Step, ...]:
    raw = item.record.get("steps") or []
    if not isinstance(raw, list):
        raise DataError(f"{item.path}: {item.where}: field 'steps' must be a list")
    steps = []
    for number, step in enumerate(raw):
        if not isinstance(step, Mapping) or "question" not in step or "answer" not in step:
            raise DataError(
                f"{item.path}: {item.where}: steps[{number}] must be an object with 'question' and 'answer'"
            )
        steps.append(Step(question=str(step["question"]), answer=str(step["answer"])))
    return tuple(steps)
