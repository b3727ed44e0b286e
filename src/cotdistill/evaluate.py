"""Accuracy of a student on problems: one evaluation path for ``cotdistill eval``, ``eval-checkpoints`` and the
dev sets evaluated during training.

``evaluate_set`` takes a loaded student, a data set and an :class:`~cotdistill.config.EvalSpec` (one set of
defaults for all three callers) and dispatches to prompted evaluation (the strategy's prompts under the
spec's protocol, ``protocols``) or Socratic inference (``socratic_eval``). Generation is the shared library
in ``generation``; scoring is the protocol's, which reads answers with ``answers``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from cotdistill.answers import majority_answer
from cotdistill.config import EvalRunConfig, EvalSpec, eval_spec
from cotdistill.engine import Engine
from cotdistill.eval_sets import BBH_PREFIX, EvalSet, folder_name, resolve_eval_sets
from cotdistill.generation import ContextFit, EvalReport, Prediction, generate_texts, prompt_hash
from cotdistill.logs import setup_logging
from cotdistill.outputs import check_output_dir
from cotdistill.problems.record import Problem
from cotdistill.protocols import PROTOCOLS, Protocol, get_protocol
from cotdistill.report import markdown_table
from cotdistill.rng import isolated_rng
from cotdistill.runs import resolve_strategy
from cotdistill.socratic_eval import SocraticSettings, evaluate_socratic_loaded, evaluate_socratic_sets
from cotdistill.student import Student, open_student

log = logging.getLogger(__name__)


def make_prediction(index: int, problem: Problem, prompt: str, generated: str, tokens: int,
                    protocol: Protocol = PROTOCOLS["cotdistill"]) -> Prediction:
    """Score one generation under a protocol (junk text scores wrong, never raises)."""
    text = protocol.clean(generated)
    scored = protocol.score(problem, text)
    return Prediction(index, problem.id, problem.question, problem.answer, prompt, text, scored.extracted,
                      scored.correct, tokens, extraction=scored.extraction, filters=scored.filters)


def majority_vote(problem: Problem, prompt: str, index: int, texts: Sequence[str], tokens: int,
                  protocol: Protocol = PROTOCOLS["cotdistill"]) -> Prediction:
    """Self-consistency (Wang et al.): the most frequent extracted answer wins; ties go to the earliest sample.

    Samples with no extractable answer do not vote; if none votes, the prediction is wrong.
    """
    scored = [make_prediction(index, problem, prompt, text, tokens, protocol) for text in texts]
    votes = Counter(p.extracted for p in scored if p.extracted is not None)
    first = scored[0]
    winner = majority_answer([p.extracted for p in scored])
    chosen = next((p for p in scored if winner is not None and p.extracted == winner), None)
    return Prediction(index, first.id, first.question, first.gold, prompt, first.generated, winner,
                      chosen is not None and chosen.correct, tokens, samples=[p.generated for p in scored],
                      votes=dict(votes), extraction=chosen.extraction if chosen else "none")


def spec_settings(spec: EvalSpec, strategy: str) -> dict:
    """The settings that produced a figure, recorded next to it (metrics.json)."""
    settings = {"protocol": spec.protocol, "strategy": strategy, "max_new_tokens": spec.max_new_tokens,
                "max_prompt_tokens": spec.max_prompt_tokens, "batch_size": spec.batch_size,
                "samples": spec.samples, "decoding": "greedy" if spec.samples == 1 else "sampled"}
    if strategy == "few_shot_cot":
        settings.update(k_shot=spec.k_shot, seed=spec.seed)
    if spec.samples > 1:
        settings["temperature"] = spec.temperature
    if spec.chat_template:
        settings["chat_template"] = True
    if spec.protocol == "kojima" and strategy == "zero_shot_cot":
        settings["answer_tokens"] = spec.answer_tokens
    return settings


def evaluate_problems(engine: Engine, student: Student, problems: Sequence[Problem], spec: EvalSpec, *,
                      strategy: str = "", demo_pool: Sequence[Problem] = (), prompts: Sequence[str] | None = None,
                      desc: str = "eval") -> EvalReport:
    """Collective: every rank calls this with the same problems; all get the full report.

    ``strategy`` (default ``spec.strategy``) is a prompt strategy; ``prompts`` are ready-made prompts (BBH).
    ``spec.samples`` > 1 turns on self-consistency: that many sampled generations per problem at
    ``spec.temperature``, scored by majority vote over extracted answers.
    """
    started = time.perf_counter()
    strategy = strategy or spec.strategy or "zero_shot_cot"
    protocol = get_protocol(spec.protocol)
    prompts = protocol.prompts(problems, strategy, demo_pool=demo_pool, k_shot=spec.k_shot, seed=spec.seed,
                               ready=prompts if spec.protocol == "cotdistill" else None)
    tokenizer, causal = student.tokenizer, student.causal
    fit = ContextFit()  # prompt + new tokens fitted to the model's positions, counted in the report
    outputs = generate_texts(engine, tokenizer, causal, prompts, max_new_tokens=spec.max_new_tokens,
                             batch_size=spec.batch_size, max_prompt_tokens=spec.max_prompt_tokens,
                             stop_strings=protocol.stops, samples=spec.samples, temperature=spec.temperature,
                             desc=desc, fit=fit, chat=spec.chat_template)
    second = protocol.answer_prompts(problems, prompts, [protocol.clean(texts[0]) for texts, _ in outputs], strategy)
    if second is not None:  # two stages (Kojima et al.): the answer is generated after the trigger
        answers = generate_texts(engine, tokenizer, causal, second, max_new_tokens=spec.answer_tokens,
                                 batch_size=spec.batch_size, max_prompt_tokens=spec.max_prompt_tokens,
                                 stop_strings=protocol.stops, desc=f"{desc} answer", fit=fit,
                                 chat=spec.chat_template)
        predictions = []
        for i, (problem, prompt, (_, tokens), (answer, more)) in enumerate(
                zip(problems, prompts, outputs, answers, strict=True)):
            found = make_prediction(i, problem, prompt, answer[0], tokens + more, protocol)
            found.generated = second[i][len(prompt):].strip() + " " + found.generated
            predictions.append(found)
    elif spec.samples > 1:
        predictions = [majority_vote(problems[i], prompts[i], i, texts, tokens, protocol)
                       for i, (texts, tokens) in enumerate(outputs)]
    else:
        predictions = [make_prediction(i, problems[i], prompts[i], texts[0], tokens, protocol)
                       for i, (texts, tokens) in enumerate(outputs)]
    settings = {**spec_settings(spec, strategy), "prompt_sha256": prompt_hash(prompts),
                "world_size": engine.world_size, **fit.settings()}
    return EvalReport(predictions, time.perf_counter() - started, settings)


def evaluate_set(engine: Engine, student: Student, eval_set: EvalSet, spec: EvalSpec, desc: str = "") -> EvalReport:
    """Collective: the loaded student on one data set under ``spec`` (a Socratic spec: the model plays both parts).

    The one evaluation every caller shares: training's dev sets, ``cotdistill eval`` and ``eval-checkpoints``.
    """
    desc = desc or eval_set.name
    # Sampling draws from streams seeded by the spec (the same figure whenever it runs), and training's own
    # streams (dropout) come back untouched, so a dev eval never changes the run it interrupts.
    with isolated_rng(eval_seed(spec, engine.rank)):
        if spec.strategy == "socratic":
            settings = SocraticSettings.from_spec(spec, student.name)
            report = evaluate_socratic_loaded(engine, student, eval_set.problems, settings, name=desc)
        else:
            report = evaluate_problems(engine, student, eval_set.problems, spec, demo_pool=eval_set.demo_pool,
                                       prompts=eval_set.prompts, desc=desc)
    report.settings["zero_stage"] = student.zero_stage
    if student.checkpoint is not None:
        report.settings["checkpoint"] = str(student.checkpoint)  # the exact weights behind the figure
    return report


def eval_seed(spec: EvalSpec, rank: int) -> int:
    """The seed of one rank's sampling streams: ``eval.seed``, distinct per rank (each samples its own shard)."""
    return spec.seed + 1_000_003 * rank


def bbh_average(reports: dict[str, EvalReport]) -> float | None:
    """BBH is reported as the unweighted mean over its tasks, as in Suzgun et al."""
    tasks = [r.accuracy for name, r in reports.items() if name.startswith(BBH_PREFIX)]
    return sum(tasks) / len(tasks) if tasks else None


def summary_table(reports: dict[str, EvalReport]) -> str:
    """One row per data set; how many answers rest on a fallback or are missing; each filter of a protocol that
    reports several."""
    filters = list(next((r.filter_accuracies() for r in reports.values() if r.filter_accuracies()), {}))
    rows = []
    for name, r in reports.items():
        metrics = r.metrics()
        counts = metrics["extraction"]
        guessed = sum(n for method, n in counts.items() if method not in ("marker", "none"))
        rows.append([name, r.total, r.correct, f"{100 * r.accuracy:.1f}%",
                     *[f"{100 * r.filter_accuracies().get(f, 0.0):.1f}%" for f in filters], guessed,
                     counts.get("none", 0), f"{metrics['mean_generated_tokens']:.1f}",
                     f"{metrics['examples_per_s']:.2f}"])
    blanks = [""] * (len(filters) + 4)
    bbh = bbh_average(reports)
    if bbh is not None:
        count = sum(name.startswith(BBH_PREFIX) for name in reports)
        rows.append([f"bbh (mean of {count} tasks)", "", "", f"{100 * bbh:.1f}%", *blanks])
    if len(reports) > 1:
        mean = sum(r.accuracy for r in reports.values()) / len(reports)
        rows.append(["average", "", "", f"{100 * mean:.1f}%", *blanks])
    return markdown_table(["data set", "problems", "correct", "accuracy", *filters, "answers by fallback",
                           "no answer", "mean generated tokens", "examples/s"], rows)


def settings_line(reports: dict[str, EvalReport]) -> str:
    """The protocol and generation settings behind a summary's figures, in one line."""
    first = next(iter(reports.values()), None)
    if first is None:
        return ""
    keys = ("protocol", "strategy", "decoding", "k_shot", "max_new_tokens", "answer_tokens", "max_step_tokens",
            "subquestions", "zero_stage", "world_size")
    return ", ".join(f"{key} {first.settings[key]}" for key in keys if first.settings.get(key) is not None)


def resolved_spec(config: EvalRunConfig) -> EvalRunConfig:
    """``config`` with its strategy decided: as given, else the run's own (a run, checkpoint or final/ inside a
    run), else zero_shot_cot; logged in one line."""
    if config.strategy:
        return config
    strategy, subquestions, source = resolve_strategy(config.model, config.subquestions)
    log.info("strategy %s%s (%s); --strategy chooses another", strategy,
             f" with {subquestions} sub-questions" if strategy == "socratic" else "", source)
    return replace(config, strategy=strategy, subquestions=subquestions)


def run_evaluation(config: EvalRunConfig) -> dict[str, EvalReport]:
    """Evaluate a student on data sets across all ranks; rank 0 writes the outputs. Every rank calls this."""
    check_output_dir(config.output_dir)  # before any model loads: one error line, not a traceback per rank
    engine = Engine()
    try:
        setup_logging(engine.rank)
        config = resolved_spec(config)
        spec = eval_spec(config)
        out = Path(config.output_dir)
        sets = resolve_eval_sets(config)  # bad names and missing files fail before any model is loaded
        reports: dict[str, EvalReport] = {}

        def record(name: str, report: EvalReport) -> None:
            report.settings.update({"model": config.model, "dataset": name})
            if name == "synthetic":  # which problems: the generator's settings
                report.settings["synthetic"] = asdict(config.synthetic)
            reports[name] = report
            if engine.is_main:
                report.write(out / folder_name(name))
                log.info("%s: %d/%d = %.1f%%", name, report.correct, report.total, 100 * report.accuracy)

        if spec.strategy == "socratic" and (config.decomposer or config.solver):
            socratic = SocraticSettings.from_config(config)
            log.info("evaluating with socratic inference (decomposer %s, solver %s, %s sub-questions) on %s",
                     socratic.decomposer, socratic.solver, socratic.subquestions, ", ".join(s.name for s in sets))
            for name, report in evaluate_socratic_sets(engine, {s.name: s.problems for s in sets}, socratic).items():
                record(name, report)
        else:
            student = open_student(engine, config.model, config.precision, config.zero_stage, config.offload)
            log.info("evaluating %s (%s) on %s: %s, protocol %s", config.model,
                     "causal" if student.causal else "seq2seq", ", ".join(s.name for s in sets), spec.strategy,
                     spec.protocol)
            for found in sets:
                record(found.name, evaluate_set(engine, student, found, spec))
        if engine.is_main:
            first = next(iter(reports.values()))
            metrics = {"model": config.model, "checkpoint": first.settings.get("checkpoint"),
                       "strategy": spec.strategy, "protocol": spec.protocol,
                       "world_size": engine.world_size, "zero_stage": first.settings.get("zero_stage"),
                       "datasets": {name: r.metrics() for name, r in reports.items()}}
            if spec.strategy == "socratic":
                metrics.update({key: first.settings[key] for key in ("decomposer", "solver", "subquestions")})
            if bbh_average(reports) is not None:
                metrics["bbh_average"] = bbh_average(reports)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            (out / "summary.md").write_text(f"{summary_table(reports)}\n\n{settings_line(reports)}\n",
                                            encoding="utf-8")
        return reports
    finally:
        engine.close()
