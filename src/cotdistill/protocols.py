"""Evaluation protocols: how a problem is prompted, where generation stops, and how its text is scored.

A number is only comparable with a published one when it was produced the same way, so each figure
records the protocol behind it. Three are built in:

* ``cotdistill``: the prompts the students were trained on (``formats``; BBH's official layout), scored with
  marker-strict extraction (``answers.read_answer``): an explicit answer marker that is not followed by an
  answer is *no answer*, and fallbacks without any marker are named in every prediction.
* ``kojima``: two-stage zero-shot CoT (Kojima et al. 2022): ``Q: ...\\nA: Let's think step by step.``, the
  reasoning is generated, then the answer trigger for the data set's answer type is appended (``Therefore,
  the answer (arabic numerals) is``) and the answer generated (``answer_tokens``); the first answer after
  the trigger counts (``answers.kojima_answer``). ``answer_only`` is the paper's zero-shot baseline: the
  trigger alone, one stage.
* ``lm-eval``: lm-evaluation-harness's GSM8K task: ``Question: ...\\nAnswer:`` with the first ``k_shot``
  demonstrations (few_shot_cot), generation cut at ``Question:``, and both of its filters reported:
  strict-match (``#### N``, the primary accuracy) and flexible-extract (the last number).

Adding a protocol is one class here plus its tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cotdistill.answers import (
    NEXT_QUESTION,
    answers_match,
    clean_generation,
    infer_kind,
    kojima_answer,
    lm_eval_exact_match,
    lm_eval_flexible,
    lm_eval_strict,
    read_answer,
)
from cotdistill.errors import ConfigError
from cotdistill.formats import eval_prompts
from cotdistill.problems.record import Problem

LM_EVAL_INVALID = "[invalid]"


@dataclass(frozen=True)
class Scored:
    """A text's answer under a protocol: the answer read (None: none), whether it is right, how it was read."""

    extracted: str | None
    correct: bool
    extraction: str
    filters: dict[str, dict[str, Any]] | None = None


def score_answer(problem: Problem, text: str) -> Scored:
    """The project's scorer: marker-strict extraction, numbers compared within tolerance (answers module)."""
    kind = infer_kind(problem.source, problem.answer)
    found = read_answer(text, kind)
    return Scored(found.answer, answers_match(found.answer, problem.answer, kind=kind), found.method)


class Protocol:
    """Prompts, stop strings and scoring of one evaluation protocol."""

    name: ClassVar[str] = ""
    stops: ClassVar[tuple[str, ...]] = NEXT_QUESTION

    def prompts(self, problems: Sequence[Problem], strategy: str, *, demo_pool: Sequence[Problem], k_shot: int,
                seed: int, ready: Sequence[str] | None = None) -> list[str]:
        raise NotImplementedError

    def clean(self, text: str) -> str:
        """The part of a generation that is the answer to this prompt."""
        return clean_generation(text)

    def answer_prompts(self, problems: Sequence[Problem], prompts: Sequence[str], texts: Sequence[str],
                       strategy: str) -> list[str] | None:
        """Second-stage prompts (prompt + reasoning + answer trigger), or None for one-stage protocols."""
        return None

    def score(self, problem: Problem, text: str) -> Scored:
        return score_answer(problem, text)


class CotdistillProtocol(Protocol):
    name = "cotdistill"

    def prompts(self, problems, strategy, *, demo_pool, k_shot, seed, ready=None):
        if ready is not None:
            return list(ready)
        return eval_prompts(problems, strategy, k_shot=k_shot, seed=seed, demo_pool=demo_pool)


# Kojima et al. (2022), Table 9 and their code: the answer trigger per answer type; zero-shot uses it alone.
KOJIMA_TRIGGERS = {"number": "the answer (arabic numerals) is", "yesno": "the answer (Yes or No) is",
                   "choice": "among A through E, the answer is", "text": "the answer is"}
KOJIMA_REASONING = "Let's think step by step."


def _answer_type(problem: Problem) -> str:
    kind = infer_kind(problem.source, problem.answer)
    if kind == "text" and problem.answer.strip().startswith("(") and len(problem.answer.strip()) == 3:
        return "choice"  # BBH-style "(B)"
    return kind


class KojimaProtocol(Protocol):
    name = "kojima"

    def prompts(self, problems, strategy, *, demo_pool, k_shot, seed, ready=None):
        if strategy == "zero_shot_cot":
            return [f"Q: {p.question}\nA: {KOJIMA_REASONING}" for p in problems]
        if strategy == "answer_only":
            triggers = (KOJIMA_TRIGGERS[_answer_type(p)] for p in problems)
            return [f"Q: {p.question}\nA: {t[0].upper()}{t[1:]}" for p, t in zip(problems, triggers, strict=True)]
        raise ConfigError(f"protocol kojima is zero-shot: strategy must be zero_shot_cot or answer_only, "
                          f"got {strategy}")

    def answer_prompts(self, problems, prompts, texts, strategy):
        if strategy != "zero_shot_cot":
            return None
        # The prompt is kept byte for byte (callers cut it off again); only the reasoning is trimmed.
        return [" ".join(part for part in (prompt, text.strip(), f"Therefore, {KOJIMA_TRIGGERS[_answer_type(p)]}")
                         if part)
                for p, prompt, text in zip(problems, prompts, texts, strict=True)]

    def score(self, problem, text):
        kind = infer_kind(problem.source, problem.answer)
        found = kojima_answer(text, kind)
        return Scored(found.answer, answers_match(found.answer, problem.answer, kind=kind), found.method)


def lm_eval_target(problem: Problem) -> str:
    """A demonstration's answer as GSM8K writes it: the worked solution, then ``#### N``."""
    return f"{problem.rationale}\n#### {problem.answer}" if problem.rationale else f"#### {problem.answer}"


class LmEvalProtocol(Protocol):
    name = "lm-eval"
    stops = ("Question:", "</s>", "<|im_end|>")

    def prompts(self, problems, strategy, *, demo_pool, k_shot, seed, ready=None):
        wrong = [p for p in problems if infer_kind(p.source, p.answer) != "number"]
        if wrong:
            raise ConfigError(f"protocol lm-eval is the harness's GSM8K task (numeric answers); problem "
                              f"{wrong[0].id!r} has the answer {wrong[0].answer!r}")
        demos = list(demo_pool[:k_shot]) if strategy == "few_shot_cot" else []
        if strategy == "few_shot_cot" and len(demos) < k_shot:
            raise ConfigError(f"protocol lm-eval: k_shot={k_shot} but the demonstration pool holds {len(demos)}")
        context = "".join(f"Question: {d.question}\nAnswer: {lm_eval_target(d)}\n\n" for d in demos)
        return [f"{context}Question: {p.question}\nAnswer:" for p in problems]

    def clean(self, text: str) -> str:
        for stop in self.stops:  # the harness cuts at each `until` string and keeps the rest as it is
            text = text.split(stop, 1)[0]
        return text

    def score(self, problem, text):
        strict, flexible = lm_eval_strict(text), lm_eval_flexible(text)
        filters = {"strict-match": {"extracted": strict, "correct": lm_eval_exact_match(strict, problem.answer)},
                   "flexible-extract": {"extracted": flexible,
                                        "correct": lm_eval_exact_match(flexible, problem.answer)}}
        valid = strict != LM_EVAL_INVALID
        return Scored(strict if valid else None, filters["strict-match"]["correct"], "marker" if valid else "none",
                      filters)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (CotdistillProtocol(), KojimaProtocol(), LmEvalProtocol())}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
