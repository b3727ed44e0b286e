"""Socratic inference (Shridhar, Stolfo, Sachan): a decomposer asks the sub-questions, a solver answers them.

Collective, like ``evaluate_problems``: every rank calls it with the same problems and all get the full
report. Two phases:

1. Sub-questions. The decomposer generates greedily for every problem (``subquestions="model"``) and
   ``socratic.parse_subquestions`` reads its list, or the data set's own steps are used (``"gold"``).
   The generations are gathered, so every rank knows every problem's sub-questions.
2. Solver rounds. Round s asks every problem that has an s-th sub-question, with the problem, the
   earlier sub-questions and the solver's *own* earlier answers in the prompt. Each round is one
   sharded, dummy-padded generation (``generation.generate_all``), so every rank makes the same number of
   ``generate`` calls under ZeRO-3; all ranks agree on the number of rounds because they share the
   sub-questions.

The final answer is extracted from the last sub-answer; a problem with no sub-question scores wrong.

The Engine holds one model at a time. A unified model (decomposer == solver) is opened once; with two
models the decomposer runs over every data set first, is released, and then the solver is opened, so at
most one model is in memory and each is loaded once however many data sets there are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cotdistill.config import EvalRunConfig, EvalSpec
from cotdistill.engine import Engine
from cotdistill.errors import ConfigError, DataError
from cotdistill.generation import ContextFit, EvalReport, Prediction, generate_all, prompt_hash
from cotdistill.modeling import detect_kind
from cotdistill.problems.record import Problem, Step
from cotdistill.protocols import score_answer
from cotdistill.run_folder import RunFolder
from cotdistill.socratic import (
    DECOMPOSER_STOPS,
    SOLVER_STOPS,
    clean_solver_answer,
    cut_at,
    decomposer_prompt,
    parse_subquestions,
    solver_prompt,
)
from cotdistill.student import Student, open_student
from cotdistill.targets import resolve_checkpoint

log = logging.getLogger(__name__)

SUBQUESTION_MODES = ("model", "gold")


@dataclass
class SocraticPrediction(Prediction):
    """A prediction with its chain: every sub-question asked and the solver's answer to each.

    ``prompt`` is the decomposer's prompt and ``generated`` its text (empty with gold sub-questions);
    ``generated_tokens`` counts the decomposer's and every solver step's tokens.
    """

    subquestions: list[str] | None = None
    subanswers: list[str] | None = None


@dataclass(frozen=True)
class SocraticSettings:
    """Which models play which part, and the generation budgets of a Socratic evaluation (defaults: EvalSpec's)."""

    decomposer: str
    solver: str
    subquestions: str = EvalSpec.subquestions
    max_subquestions: int = EvalSpec.max_subquestions
    max_new_tokens: int = EvalSpec.max_new_tokens  # the decomposer's budget
    max_step_tokens: int = EvalSpec.max_step_tokens  # the solver's budget per sub-answer
    batch_size: int = EvalSpec.batch_size
    max_source_tokens: int = EvalSpec.max_prompt_tokens
    precision: str = EvalSpec.precision
    zero_stage: str = EvalSpec.zero_stage
    offload: bool = EvalSpec.offload
    chat_template: bool = EvalSpec.chat_template  # prompts in the students' chat template (data.chat_template)

    @classmethod
    def from_spec(cls, spec: EvalSpec, decomposer: str, solver: str = "") -> SocraticSettings:
        """The spec's Socratic settings for these models (``solver`` '': the decomposer, a unified model)."""
        return cls(decomposer=decomposer, solver=solver or decomposer, subquestions=spec.subquestions,
                   max_subquestions=spec.max_subquestions, max_new_tokens=spec.max_new_tokens,
                   max_step_tokens=spec.max_step_tokens, batch_size=spec.batch_size,
                   max_source_tokens=spec.max_prompt_tokens, precision=spec.precision,
                   zero_stage=str(spec.zero_stage), offload=spec.offload, chat_template=spec.chat_template)

    @classmethod
    def from_config(cls, config: EvalRunConfig) -> SocraticSettings:
        """Empty ``decomposer``/``solver`` mean ``model`` (one unified Socratic model)."""
        return cls.from_spec(config, config.decomposer or config.model, config.solver or config.model)

    @property
    def unified(self) -> bool:
        return same_model(self.decomposer, self.solver)


@dataclass
class Decomposition:
    """A problem's sub-questions and where they came from (the decomposer's text, or gold steps)."""

    prompt: str
    text: str
    subquestions: list[str]
    tokens: int


def same_model(a: str, b: str) -> bool:
    """Whether two model names point at the same model (local folders compare by resolved path)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


class ModelSlot:
    """The one model the Engine holds, opened on demand; opening another releases the current one."""

    def __init__(self, engine: Engine, settings: SocraticSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.name: str | None = None
        self.student: Student | None = None

    def open(self, name: str) -> Student:
        """Collective: ``name`` loaded into the engine (a no-op when it already is)."""
        if self.student is not None and self.name is not None and same_model(self.name, name):
            return self.student
        self.release()
        s = self.settings
        self.student = open_student(self.engine, name, s.precision, s.zero_stage, s.offload)
        self.name = name
        return self.student

    def release(self) -> None:
        if self.student is not None:
            self.engine.release_model()
        self.student, self.name = None, None


def check_model(name: str) -> None:
    """Fail early (ConfigError) when ``name`` is not a loadable model, before a long phase with another one."""
    found = resolve_checkpoint(name)
    detect_kind(RunFolder(found[0]).hf_meta if found else name)


def gold_decompositions(problems: Sequence[Problem], max_subquestions: int, name: str) -> list[Decomposition]:
    """The problems' own sub-questions; every problem must have steps."""
    missing = [p.id for p in problems if not p.steps]
    if missing:
        raise DataError(f"data set {name!r}: {len(missing)} of {len(problems)} problems have no Socratic steps "
                        f"(e.g. {missing[0]!r}), so subquestions=gold cannot be used; use subquestions=model, "
                        "or a data set with decompositions (gsm8k_socratic, synthetic)")
    return [Decomposition(decomposer_prompt(p.question), "", [s.question.strip() for s in p.steps][:max_subquestions],
                          0) for p in problems]


def decompose(engine: Engine, student: Student, problems: Sequence[Problem], settings: SocraticSettings,
              desc: str = "decompose", fit: ContextFit | None = None) -> list[Decomposition]:
    """Collective: the decomposer's sub-questions for every problem, on every rank."""
    prompts = [decomposer_prompt(p.question) for p in problems]
    outputs = generate_all(engine, student.tokenizer, student.causal, prompts, max_new_tokens=settings.max_new_tokens,
                           batch_size=settings.batch_size, stop_strings=DECOMPOSER_STOPS,
                           max_source_tokens=settings.max_source_tokens, desc=desc, fit=fit,
                           chat=settings.chat_template)
    return [Decomposition(prompt, cut_at(text, DECOMPOSER_STOPS), parse_subquestions(text)[:settings.max_subquestions],
                          tokens) for prompt, (text, tokens) in zip(prompts, outputs, strict=True)]


def solve(engine: Engine, student: Student, problems: Sequence[Problem], subquestions: Sequence[Sequence[str]],
          settings: SocraticSettings, desc: str = "solve",
          fit: ContextFit | None = None) -> list[list[tuple[str, int]]]:
    """Collective: the solver's (answer, generated tokens) for each sub-question of each problem, round by round.

    Every rank must pass the same sub-questions: they decide how many rounds there are.
    """
    answers: list[list[tuple[str, int]]] = [[] for _ in problems]
    rounds = max((len(q) for q in subquestions), default=0)
    for step in range(rounds):
        active = [i for i, asked in enumerate(subquestions) if len(asked) > step]
        prompts = [solver_prompt(problems[i].question,
                                 [Step(q, a) for q, (a, _) in zip(subquestions[i][:step], answers[i], strict=True)],
                                 subquestions[i][step]) for i in active]
        outputs = generate_all(engine, student.tokenizer, student.causal, prompts,
                               max_new_tokens=settings.max_step_tokens, batch_size=settings.batch_size,
                               stop_strings=SOLVER_STOPS, max_source_tokens=settings.max_source_tokens,
                               desc=f"{desc} {step + 1}/{rounds}", fit=fit, chat=settings.chat_template)
        for i, (text, tokens) in zip(active, outputs, strict=True):
            answers[i].append((clean_solver_answer(text), tokens))
    return answers


def socratic_prediction(index: int, problem: Problem, decomposition: Decomposition,
                        answers: Sequence[tuple[str, int]]) -> SocraticPrediction:
    """Score a problem's chain: the answer is read from the last sub-answer (none: wrong)."""
    subanswers = [a for a, _ in answers]
    scored = score_answer(problem, subanswers[-1]) if subanswers else None
    tokens = decomposition.tokens + sum(t for _, t in answers)
    return SocraticPrediction(index, problem.id, problem.question, problem.answer, decomposition.prompt,
                              decomposition.text, scored.extracted if scored else None,
                              bool(scored and scored.correct), tokens,
                              extraction=scored.extraction if scored else "none",
                              subquestions=list(decomposition.subquestions), subanswers=subanswers)


def evaluate_socratic_sets(engine: Engine, sets: Mapping[str, Sequence[Problem]],
                           settings: SocraticSettings) -> dict[str, EvalReport]:
    """Collective: Socratic accuracy on several data sets (name -> problems); every rank gets every report.

    Each model is loaded once: the decomposer runs over every set, then the solver (the same engine slot;
    a unified model is not reloaded). The engine holds no model afterwards.
    """
    if settings.subquestions not in SUBQUESTION_MODES:
        raise ConfigError(f"subquestions must be one of {', '.join(SUBQUESTION_MODES)}, got {settings.subquestions!r}")
    gold = settings.subquestions == "gold"
    decompositions: dict[str, list[Decomposition]] = {}
    if gold:  # before any model is loaded
        decompositions = {name: gold_decompositions(problems, settings.max_subquestions, name)
                          for name, problems in sets.items()}
    for name in (settings.solver,) if gold or settings.unified else (settings.decomposer, settings.solver):
        check_model(name)  # a missing solver fails now, not after the decomposer's whole pass
    seconds = dict.fromkeys(sets, 0.0)
    fits = {name: ContextFit() for name in sets}
    slot = ModelSlot(engine, settings)
    try:
        if not gold:
            log.info("decomposer: %s", settings.decomposer)
            student = slot.open(settings.decomposer)
            for name, problems in sets.items():
                started = time.perf_counter()
                decompositions[name] = decompose(engine, student, problems, settings, desc=f"{name} decompose",
                                                 fit=fits[name])
                seconds[name] += time.perf_counter() - started
        log.info("solver: %s%s", settings.solver, "" if gold or settings.unified else " (decomposer released)")
        student = slot.open(settings.solver)
        answers: dict[str, list[list[tuple[str, int]]]] = {}
        for name, problems in sets.items():
            started = time.perf_counter()
            answers[name] = solve(engine, student, problems, [d.subquestions for d in decompositions[name]],
                                  settings, desc=f"{name} solve", fit=fits[name])
            seconds[name] += time.perf_counter() - started
    finally:
        slot.release()
    return {name: socratic_report(engine, problems, decompositions[name], answers[name], seconds[name], settings,
                                  fits[name]) for name, problems in sets.items()}


def socratic_report(engine: Engine, problems: Sequence[Problem], decompositions: Sequence[Decomposition],
                    answers: Sequence[Sequence[tuple[str, int]]], seconds: float,
                    settings: SocraticSettings, fit: ContextFit | None = None) -> EvalReport:
    """Score every chain and record the settings (the decomposer is None with gold sub-questions)."""
    predictions = [socratic_prediction(i, p, d, a)
                   for i, (p, d, a) in enumerate(zip(problems, decompositions, answers, strict=True))]
    counts = [len(d.subquestions) for d in decompositions]
    gold = settings.subquestions == "gold"
    return EvalReport(predictions, seconds, {
        "protocol": "cotdistill", "strategy": "socratic",
        "decomposer": None if gold else settings.decomposer, "solver": settings.solver,
        "subquestions": settings.subquestions, "max_subquestions": settings.max_subquestions,
        "max_new_tokens": settings.max_new_tokens, "max_step_tokens": settings.max_step_tokens,
        "batch_size": settings.batch_size, "world_size": engine.world_size, "decoding": "greedy",
        "prompt_sha256": prompt_hash([d.prompt for d in decompositions]),
        "mean_subquestions": sum(counts) / max(len(counts), 1),
        "without_subquestions": sum(c == 0 for c in counts), **(fit or ContextFit()).settings()})


def evaluate_socratic_loaded(engine: Engine, student: Student, problems: Sequence[Problem],
                             settings: SocraticSettings, name: str = "problems") -> EvalReport:
    """Collective: the model already in ``engine`` plays both parts (a unified model, e.g. during training).

    Nothing is opened or released; ``settings.decomposer``/``solver`` only label the report, and the
    precision/ZeRO keys are unused. ``student`` may be ``Student(tokenizer, causal, name, None)``.
    """
    started = time.perf_counter()
    fit = ContextFit()
    if settings.subquestions == "gold":
        decompositions = gold_decompositions(problems, settings.max_subquestions, name)
    else:
        decompositions = decompose(engine, student, problems, settings, desc=f"{name} decompose", fit=fit)
    answers = solve(engine, student, problems, [d.subquestions for d in decompositions], settings,
                    desc=f"{name} solve", fit=fit)
    return socratic_report(engine, problems, decompositions, answers, time.perf_counter() - started, settings, fit)


def evaluate_socratic(engine: Engine, problems: Sequence[Problem], settings: SocraticSettings,
                      name: str = "problems") -> EvalReport:
    """Collective: Socratic accuracy on one data set (``name`` labels errors and progress bars)."""
    return evaluate_socratic_sets(engine, {name: problems}, settings)[name]
