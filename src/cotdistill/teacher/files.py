"""Import teacher traces written elsewhere (``shared/data/teacher_traces/``, any JSON list or JSONL).

Trace files carry a question and the teacher's output but no gold answer and no id, so each trace is
matched to a problem by its question text (case and whitespace ignored). Traces of questions the
problems do not hold, or of questions that appear twice with different gold answers, are counted and
left out. The matched traces then go through the same grading as sampled ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cotdistill.problems.jsonio import iter_records, require_file
from cotdistill.problems.record import Problem

log = logging.getLogger(__name__)


@dataclass
class ImportStats:
    files: int = 0
    traces: int = 0
    matched: int = 0
    unmatched: int = 0  # no problem has this question
    ambiguous: int = 0  # the question appears twice in the problems with different gold answers

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def question_key(question: str) -> str:
    """How a trace finds its problem: the question, case-folded, with whitespace collapsed."""
    return " ".join(question.split()).casefold()


def import_trace_files(
    paths: Sequence[str | Path],
    problems: Sequence[Problem],
    question_field: str = "instruction",
    rationale_field: str = "output",
) -> tuple[dict[str, list[tuple[int, dict[str, Any]]]], ImportStats]:
    """Samples per problem id, numbered in file order (file 1's traces first), and the import counts."""
    by_question: dict[str, Problem | None] = {}
    for problem in problems:
        key = question_key(problem.question)
        if key not in by_question:
            by_question[key] = problem
        elif (known := by_question[key]) is not None and known.answer != problem.answer:
            by_question[key] = None
    samples: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    stats = ImportStats()
    for path in paths:
        file = require_file(path)
        stats.files += 1
        for item in iter_records(file):
            stats.traces += 1
            key = question_key(item.text(question_field))
            if key not in by_question:
                stats.unmatched += 1
                continue
            problem = by_question[key]
            if problem is None:
                stats.ambiguous += 1
                continue
            stats.matched += 1
            mine = samples.setdefault(problem.id, [])
            mine.append((len(mine), {"text": item.text(rationale_field), "finish_reason": "",
                                     "origin": f"{file.name}:{item.where}"}))
    log.info("imported %d of %d traces from %d file(s) (%d with no matching question, %d ambiguous)",
             stats.matched, stats.traces, stats.files, stats.unmatched, stats.ambiguous)
    return samples, stats
