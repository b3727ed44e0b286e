"""Problem -> training example in each prompt format, mixed as Fu et al. (2023) specialize.

Training on a mixture of answer-only, zero-shot CoT and few-shot in-context CoT examples keeps a
student usable under each prompting style; the evaluator renders prompts with the same `prompt`
so training and evaluation never drift apart.

Conventions (``source + target`` reads as one natural text for a causal LM):

* question block: ``"Question: {q}\\nAnswer:"``;
* ``answer_only``: prompt is the question block, target ``" The answer is {answer}."``;
* ``zero_shot_cot``: prompt is the question block + ``" Let's think step by step."``,
  target ``" {rationale} The answer is {answer}."``;
* ``few_shot_cot``: k demonstrations, each a question block followed by its CoT target,
  separated by blank lines, then the question block; target as for zero-shot CoT.
* A source never ends with whitespace and a target always starts with exactly one space.
  Seq2seq students may strip the target; causal students concatenate ``source + target``.
* A rationale that already ends with its own "The answer is X" sentence is kept as it is
  (X must match the gold answer) instead of repeating the sentence.
* ``decomposer`` and ``solver`` are the Socratic formats (see ``cotdistill.socratic``): a problem
  drawn into ``solver`` gives one example per sub-question.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cotdistill.answers import answers_match, extract_answer, infer_kind
from cotdistill.errors import ConfigError, DataError
from cotdistill.problems.record import Problem
from cotdistill.socratic import (
    SOCRATIC_FORMATS,
    decomposer_prompt,
    decomposer_target,
    socratic_problem_errors,
    solver_examples,
)

FORMATS = ("answer_only", "zero_shot_cot", "few_shot_cot", *SOCRATIC_FORMATS)
PROMPT_FORMATS = ("answer_only", "zero_shot_cot", "few_shot_cot")  # one prompt -> one answer, as evaluated
COT_FORMATS = ("zero_shot_cot", "few_shot_cot")
COT_TRIGGER = "Let's think step by step."

# A final sentence "... the answer is X." (periods inside X only as decimal points).
_TRAILING_ANSWER = re.compile(r"\bthe answer is\s+(?:[^\n.]|\.(?=\d))*\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Example:
    """One training example: the prompt (`source`) and the text to learn (`target`)."""

    problem_id: str
    format: str
    source: str
    target: str
    teacher_tokens: tuple | None = None  # the teacher's [token, logprob, top-k] for the target's rationale


def _check_format(fmt: str, valid: tuple[str, ...] = FORMATS) -> None:
    if fmt in SOCRATIC_FORMATS and valid == PROMPT_FORMATS:
        raise ConfigError(f"format {fmt!r} is Socratic: its prompts come from cotdistill.socratic")
    if fmt not in valid:
        raise ConfigError(f"unknown format {fmt!r}; valid formats: {', '.join(valid)}")


def validate_mixture(mixture: Mapping[str, float]) -> dict[str, float]:
    """Check a format mixture and return it as probabilities of the formats with weight > 0."""
    unknown = sorted(str(name) for name in mixture if name not in FORMATS)
    if unknown:
        raise ConfigError(
            f"unknown format(s) in mixture: {', '.join(unknown)}; valid formats: {', '.join(FORMATS)}"
        )
    weights: dict[str, float] = {}
    for name, weight in mixture.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"mixture weight for {name!r} must be a finite number, got {weight!r}")
        if weight < 0:
            raise ConfigError(f"mixture weight for {name!r} is negative ({weight}); weights must be >= 0")
        weights[name] = float(weight)
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(
            f"mixture weights are all zero; give at least one of {', '.join(FORMATS)} a positive weight"
        )
    return {name: weights[name] / total for name in FORMATS if weights.get(name, 0) > 0}


def _question_block(problem: Problem) -> str:
    return f"Question: {problem.question.strip()}\nAnswer:"


def _answer_sentence(answer: str) -> str:
    answer = answer.strip()
    return f"The answer is {answer}" + ("" if answer.endswith(".") else ".")


def _cot_text(problem: Problem) -> str:
    """The rationale ending in exactly one answer sentence that states the gold answer."""
    rationale = (problem.rationale or "").strip()
    if not rationale:
        raise DataError(
            f"problem {problem.id!r} has no rationale, so it cannot make a chain-of-thought example; "
            "attach a teacher trace, drop the problem, or train it answer-only"
        )
    if _TRAILING_ANSWER.search(rationale):
        kind = infer_kind(problem.source, problem.answer)
        if not answers_match(extract_answer(rationale, kind), problem.answer, kind):
            raise DataError(
                f"problem {problem.id!r}: rationale ends with an answer that is not the gold "
                f"{problem.answer!r}; filter traces with cotdistill.answers.answers_match first"
            )
        return rationale if rationale.endswith(".") else rationale + "."
    return f"{rationale} {_answer_sentence(problem.answer)}"


def target(problem: Problem, fmt: str) -> str:
    """The text a student learns to produce for `problem` in format `fmt` (starts with a space)."""
    _check_format(fmt, PROMPT_FORMATS)
    if fmt == "answer_only":
        return " " + _answer_sentence(problem.answer)
    return " " + _cot_text(problem)


def prompt(problem: Problem, fmt: str, demos: Sequence[Problem] = ()) -> str:
    """The prompt for `problem` in format `fmt`; `demos` are used by few_shot_cot only."""
    _check_format(fmt, PROMPT_FORMATS)
    block = _question_block(problem)
    if fmt == "answer_only":
        return block
    if fmt == "zero_shot_cot":
        return f"{block} {COT_TRIGGER}"
    shots = [_question_block(demo) + target(demo, "few_shot_cot") for demo in demos]
    return "\n\n".join([*shots, block])


class _DemoSampler:
    """Draws few-shot demonstrations from a pool, never the problem itself."""

    def __init__(self, pool: Sequence[Problem]) -> None:
        self.pool = [p for p in pool if (p.rationale or "").strip()]
        self._ids = Counter(p.id for p in self.pool)
        self._questions = Counter(p.question for p in self.pool)

    def draw(self, problem: Problem, k: int, rng: random.Random) -> list[Problem]:
        # Sample enough extra to skip every copy of the problem, keeping one draw per problem.
        extra = self._ids[problem.id] + self._questions[problem.question]
        picks = rng.sample(range(len(self.pool)), min(len(self.pool), k + extra))
        demos = [
            self.pool[i] for i in picks
            if self.pool[i].id != problem.id and self.pool[i].question != problem.question
        ][:k]
        if len(demos) < k:
            raise DataError(
                f"problem {problem.id!r}: the demo pool has only {len(demos)} other problems with a "
                f"rationale, fewer than k_shot={k}; lower k_shot or pass a larger demo_pool"
            )
        return demos


def _check_problem(problem: Problem, formats: Iterable[str]) -> None:
    """A problem must be able to make an example in every format of the mixture."""
    formats = list(formats)
    for fmt in SOCRATIC_FORMATS:
        if fmt in formats and (problem_error := socratic_problem_errors(problem, fmt)):
            raise DataError(problem_error)
    if not (problem.rationale or "").strip() and any(f in COT_FORMATS for f in formats):
        raise DataError(
            f"problem {problem.id!r} has no rationale but the mixture includes chain-of-thought "
            "formats; attach a teacher trace, drop the problem, or use mixture {'answer_only': 1}"
        )


def build_examples(
    problems: Iterable[Problem],
    mixture: Mapping[str, float],
    *,
    k_shot: int = 0,
    seed: int = 0,
    demo_pool: Sequence[Problem] | None = None,
    per_problem: bool = False,
) -> list[Example]:
    """Training examples for `problems` in the formats of `mixture`, deterministic for `seed`.

    By default each problem gets one format drawn from the mixture weights; with `per_problem`
    it gets one example per format of positive weight (as Fu et al. trained). Random draws are
    seeded by ``(seed, problem.id)``, so a problem's format and demos do not depend on which
    other problems are in the list. Demos come from `demo_pool` (default: `problems`, which
    should be the training split) and never include the problem itself.
    Any problem without a rationale raises DataError when the mixture has a CoT format.
    """
    probabilities = validate_mixture(mixture)
    problems = list(problems)
    if "few_shot_cot" in probabilities and k_shot < 1:
        raise ConfigError(f"few_shot_cot has a positive weight but k_shot={k_shot}; set k_shot >= 1")
    sampler = _DemoSampler(problems if demo_pool is None else demo_pool)
    names, weights = list(probabilities), list(probabilities.values())
    examples = []
    for problem in problems:
        _check_problem(problem, names)  # for every format of the mixture, not just the ones drawn
        rng = random.Random(f"{seed}:{problem.id}")
        formats = names if per_problem else rng.choices(names, weights=weights)
        for fmt in formats:
            examples += _examples_for(problem, fmt, sampler, k_shot, rng)
    return examples


def format_split(examples: Sequence[Example]) -> str:
    """How many of the built examples each format has, e.g. "decomposer 2,000 (33%), solver 4,042 (67%)".

    Counted from the examples themselves, not the mixture's weights: a Socratic problem makes one decomposer
    example but one solver example per sub-question, and the draw per problem is random, so the weights
    alone misstate what a run trains on.
    """
    counts = Counter(example.format for example in examples)
    total = sum(counts.values())
    return ", ".join(f"{fmt} {n:,} ({n / total:.0%})" for fmt, n in sorted(counts.items(), key=_by_format_order))


def _by_format_order(item: tuple[str, int]) -> int:
    """Formats in their FORMATS order, so the split reads the same in every run."""
    return FORMATS.index(item[0]) if item[0] in FORMATS else len(FORMATS)


def _examples_for(problem: Problem, fmt: str, sampler: _DemoSampler, k_shot: int,
                  rng: random.Random) -> list[Example]:
    if fmt in SOCRATIC_FORMATS:
        if fmt == "decomposer":
            return [Example(problem.id, fmt, decomposer_prompt(problem.question), decomposer_target(problem.steps))]
        return [Example(f"{problem.id}#step{i}", fmt, source, target)
                for i, (source, target) in enumerate(solver_examples(problem), 1)]
    demos = sampler.draw(problem, k_shot, rng) if fmt == "few_shot_cot" else ()
    teacher = problem.teacher_tokens if fmt in COT_FORMATS and problem.teacher_tokens else None
    return [Example(problem.id, fmt, prompt(problem, fmt, demos), target(problem, fmt), teacher)]


def eval_prompts(
    problems: Sequence[Problem],
    fmt: str,
    *,
    k_shot: int = 0,
    seed: int = 0,
    demo_pool: Sequence[Problem] = (),
) -> list[str]:
    """Prompts for evaluating `problems` in format `fmt`, with the same seeded demo draws as training."""
    _check_format(fmt, PROMPT_FORMATS)
    if fmt != "few_shot_cot":
        return [prompt(problem, fmt) for problem in problems]
    if k_shot < 1:
        raise ConfigError(f"few_shot_cot evaluation needs k_shot >= 1, got {k_shot}")
    sampler = _DemoSampler(demo_pool)
    return [prompt(p, fmt, sampler.draw(p, k_shot, random.Random(f"{seed}:eval:{p.id}"))) for p in problems]
