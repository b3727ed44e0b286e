"""Grade teacher samples against gold: what is kept, what is dropped and why, and the teacher's accuracy.

Answers are extracted with `cotdistill.answers`, the module the evaluator uses, so a trace kept here is
one the evaluator would also call correct. Grading is a pure function of the samples, so a resumed build
grades exactly like an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cotdistill.answers import answers_match, clean_generation, extract_answer, infer_kind, majority_answer
from cotdistill.problems.record import Problem, Step
from cotdistill.teacher.prompts import parse_steps

Sample = dict[str, Any]  # {"text", "finish_reason", "tokens"?} as cached


@dataclass
class TaskStats:
    """Counts over one task's samples; `summary()` adds the rates the manifest reports."""

    questions: int = 0
    samples: int = 0  # graded samples
    missing: int = 0  # samples never obtained (requests that failed after all retries)
    malformed: int = 0  # nothing to grade: no extractable answer, or a decomposition that does not parse
    no_answer: int = 0  # of `malformed`: parsed, but no answer (none stated, or a marker with a non-answer)
    truncated: int = 0  # of `malformed`: cut off at max_tokens (finish_reason "length"); never graded
    wrong: int = 0
    correct: int = 0
    duplicates: int = 0  # correct, but the same text as a sample already kept for that question
    kept: int = 0
    questions_kept: int = 0  # questions with at least one kept sample
    first_sample_correct: int = 0
    majority_correct: int = 0
    unverified: int = 0  # gold decompositions whose steps carry no answers to check (StrategyQA)

    def add(self, other: TaskStats) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def summary(self) -> dict[str, Any]:
        def rate(part: int, whole: int) -> float | None:
            return round(part / whole, 6) if whole else None

        return {**asdict(self),
                "first_sample_accuracy": rate(self.first_sample_correct, self.questions),
                "majority_vote_accuracy": rate(self.majority_correct, self.questions),
                "kept_fraction": rate(self.kept, self.samples),
                "question_coverage": rate(self.questions_kept, self.questions)}


@dataclass
class Graded:
    records: list[dict[str, Any]] = field(default_factory=list)
    stats: TaskStats = field(default_factory=TaskStats)


def grade_cot(problem: Problem, samples: Sequence[tuple[int, Sample]], wanted: int) -> Graded:
    """Keep the samples whose extracted answer equals gold, each distinct text once, in sample order."""
    kind = infer_kind(problem.source, problem.answer)

    def read(sample: Sample) -> tuple[Any, str | None]:
        text = clean_generation(sample["text"])
        return text, extract_answer(text, kind)

    def record(index: int, sample: Sample, text: str, answer: str) -> dict[str, Any]:
        kept = {"id": f"{problem.id}#cot{index}", "problem_id": problem.id, "question": problem.question,
                "answer": problem.answer, "rationale": text, "teacher_answer": answer, "sample_index": index,
                "source": problem.source}
        if sample.get("tokens"):
            kept["teacher_tokens"] = tokens_within(sample["tokens"], sample["text"], text)
        return kept

    return _grade(problem, kind, samples, wanted, read, lambda text: " ".join(text.split()), record)


def grade_decompositions(problem: Problem, samples: Sequence[tuple[int, Sample]], wanted: int) -> Graded:
    """Keep decompositions that parse into Q/A steps and whose last step's answer equals gold."""
    kind = infer_kind(problem.source, problem.answer)

    def read(sample: Sample) -> tuple[Any, str | None]:
        steps = parse_steps(clean_generation(sample["text"]))
        # None content: the decomposition does not parse (malformed, but not a missing answer).
        return (steps, extract_answer(steps[-1].answer, kind)) if steps else (None, None)

    return _grade(problem, kind, samples, wanted, read, lambda steps: steps,
                  lambda index, sample, steps, answer: decomposition_record(problem, steps, index))


def _grade(problem: Problem, kind: str, samples: Sequence[tuple[int, Sample]], wanted: int,
           read: Callable[[Sample], tuple[Any, str | None]], dedup_key: Callable[[Any], Hashable],
           record: Callable[[int, Sample, Any, str], dict[str, Any]]) -> Graded:
    """The grading both tasks share: `read` gives (content, extracted answer), content None when the
    sample does not parse; wrong, answerless and repeated (by `dedup_key`) samples are dropped and
    counted, answerless ones apart from wrong ones (a trace that states no answer is not a wrong
    teacher); the majority vote is over all samples.

    A sample cut off at max_tokens is dropped unread (counted in `truncated`): its last number, or the
    last complete step of a decomposition, is where the text stopped, not an answer the teacher gave,
    and keeping it when that number happens to equal gold would train on an unfinished trace."""
    graded = Graded(stats=TaskStats(questions=1, samples=len(samples), missing=wanted - len(samples)))
    extracted: list[str | None] = []
    seen: set[Hashable] = set()
    for index, sample in samples:
        if sample.get("finish_reason") == "length":
            extracted.append(None)
            graded.stats.malformed += 1
            graded.stats.truncated += 1
            continue
        content, answer = read(sample)
        extracted.append(answer)
        if answer is None:
            graded.stats.malformed += 1
            graded.stats.no_answer += content is not None
            continue
        if not answers_match(answer, problem.answer, kind):
            graded.stats.wrong += 1
            continue
        graded.stats.correct += 1
        graded.stats.first_sample_correct += index == 0
        key = dedup_key(content)
        if key in seen:
            graded.stats.duplicates += 1
            continue
        seen.add(key)
        graded.records.append(record(index, sample, content, answer))
    winner = majority_answer(extracted)
    graded.stats.majority_correct = int(winner is not None and answers_match(winner, problem.answer, kind))
    _finish(graded)
    return graded


def grade_gold_steps(problem: Problem) -> Graded:
    """A data set's own decomposition (GSM8K Socratic, StrategyQA, synthetic) as one record.

    Steps with answers are checked like a teacher's (the last answer must be gold); StrategyQA's carry
    only sub-questions and are kept as they are, counted as unverified.
    """
    graded = Graded(stats=TaskStats(questions=1, samples=1 if problem.steps else 0, missing=0))
    if not problem.steps:
        return graded
    kind = infer_kind(problem.source, problem.answer)
    if all(not s.answer.strip() for s in problem.steps):
        graded.stats.unverified += 1
    elif not answers_match(extract_answer(problem.steps[-1].answer, kind), problem.answer, kind):
        graded.stats.wrong += 1
        return graded
    graded.stats.correct += 1
    graded.stats.first_sample_correct += 1
    graded.stats.majority_correct += 1
    graded.records.append(decomposition_record(problem, problem.steps, 0))
    _finish(graded)
    return graded


def decomposition_record(problem: Problem, steps: Sequence[Step], index: int) -> dict[str, Any]:
    return {"id": f"{problem.id}#dec{index}", "problem_id": problem.id, "question": problem.question,
            "answer": problem.answer, "steps": [{"question": s.question, "answer": s.answer} for s in steps],
            "sample_index": index, "source": problem.source}


def tokens_within(tokens: Sequence[Sequence[Any]], raw: str, kept: str) -> list[Any]:
    """The teacher's tokens that make up `kept` (a stripped, possibly cut prefix region of `raw`).

    Tokens are [text, logprob, [[alt, logprob], ...]]; leading whitespace tokens before the kept text
    and every token past its end are dropped, so the stored tokens spell the rationale (up to spaces
    at the edges a tokenizer glues onto words).
    """
    start = raw.find(kept) if kept else 0
    end = start + len(kept)
    chosen, position = [], 0
    for token in tokens:
        begin, position = position, position + len(token[0])
        if position <= start and start > 0:
            continue
        if begin >= end:
            break
        chosen.append(token)
    return chosen


def _finish(graded: Graded) -> None:
    graded.stats.kept = len(graded.records)
    graded.stats.questions_kept = int(bool(graded.records))
