"""Greedy accuracy of a student on problems, sharded over ranks, correct under ZeRO-3.

Every rank makes the same number of ``generate`` calls (short shards are padded with a dummy batch whose
outputs are dropped) and ``generate`` runs with ``synced_gpus`` under ZeRO-3, so no rank waits forever
for a partner's parameter gather. Results are gathered to every rank and put back in dataset order.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cotdistill.answers import (
    NEXT_QUESTION,
    answers_match,
    clean_generation,
    extract_answer,
    infer_kind,
    majority_answer,
)
from cotdistill.batching import padded_prompts
from cotdistill.config import EvalRunConfig
from cotdistill.engine import Engine
from cotdistill.eval_sets import BBH_PREFIX, folder_name, resolve_eval_sets
from cotdistill.formats import eval_prompts
from cotdistill.logs import setup_logging
from cotdistill.problems.record import Problem
from cotdistill.report import markdown_table
from cotdistill.student import open_student


@dataclass
class Prediction:
    index: int
    id: str
    question: str
    gold: str
    prompt: str
    generated: str
    extracted: str | None
    correct: bool
    generated_tokens: int
    samples: list[str] | None = None  # self-consistency: every sampled text (generated is the first)
    votes: dict[str, int] | None = None  # self-consistency: extracted answer -> count


@dataclass
class EvalReport:
    predictions: list[Prediction]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.predictions)

    @property
    def correct(self) -> int:
        return sum(p.correct for p in self.predictions)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def metrics(self) -> dict[str, Any]:
        tokens = [p.generated_tokens for p in self.predictions]
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total,
                "mean_generated_tokens": sum(tokens) / max(len(tokens), 1),
                "examples_per_s": self.total / self.seconds if self.seconds else 0.0, **self.settings}

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "predictions.jsonl", "w", encoding="utf-8") as fh:
            for p in self.predictions:
                fh.write(json.dumps(asdict(p)) + "\n")
        metrics = self.metrics()
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        (folder / "summary.md").write_text(
            "| problems | correct | accuracy | mean generated tokens | examples/s |\n|---|---|---|---|---|\n"
            f"| {self.total} | {self.correct} | {100 * self.accuracy:.1f}% | "
            f"{metrics['mean_generated_tokens']:.1f} | {metrics['examples_per_s']:.2f} |\n", encoding="utf-8")


def _shard_batches(order: Sequence[int], batch_size: int, world: int, rank: int) -> list[list[int]]:
    """This rank's batches: consecutive global batches of similar length, one slice per rank."""
    span = batch_size * world
    batches = []
    for start in range(0, len(order), span):
        piece = list(order[start:start + span])
        batches.append(piece[rank * batch_size:(rank + 1) * batch_size])
    return batches


def make_prediction(index: int, problem: Problem, prompt: str, generated: str, tokens: int) -> Prediction:
    """Score one generation with the project's one answer module (junk text scores wrong, never raises)."""
    text = clean_generation(generated)
    kind = infer_kind(problem.source, problem.answer)
    extracted = extract_answer(text, kind=kind)
    return Prediction(index, problem.id, problem.question, problem.answer, prompt, text, extracted,
                      answers_match(extracted, problem.answer, kind=kind), tokens)


def majority_vote(problem: Problem, prompt: str, index: int, texts: Sequence[str], tokens: int) -> Prediction:
    """Self-consistency (Wang et al.): the most frequent extracted answer wins; ties go to the earliest sample.

    Samples with no extractable answer do not vote; if none votes, the prediction is wrong.
    """
    scored = [make_prediction(index, problem, prompt, text, tokens) for text in texts]
    votes = Counter(p.extracted for p in scored if p.extracted is not None)
    first = scored[0]
    winner = majority_answer([p.extracted for p in scored])
    correct = winner is not None and next(p.correct for p in scored if p.extracted == winner)
    return Prediction(index, first.id, first.question, first.gold, prompt, first.generated, winner, correct, tokens,
                      samples=[p.generated for p in scored], votes=dict(votes))


def sharded_generations(
    engine: Engine,
    tokenizer,
    causal: bool,
    encoded: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str] = NEXT_QUESTION,
    samples: int = 1,
    temperature: float = 0.7,
    desc: str = "eval",
) -> Iterator[tuple[int, list[str], int]]:
    """Collective: generate for every prompt (token ids), this rank's share; yields (index, texts, tokens).

    ``texts`` holds ``samples`` decoded generations of prompt ``index`` and ``tokens`` the mean count of
    generated tokens per sample. Prompts are sorted by length and cut into global batches of
    ``batch_size`` per rank; a rank with nothing left runs a dummy batch whose outputs are dropped, so
    every rank makes the same number of ``generate`` calls (ZeRO-3 gathers stay matched). Every rank must
    consume the whole iterator. Greedy (``samples`` == 1) or sampled at ``temperature``; causal models stop
    at ``stop_strings`` (seq2seq ones at their end of sequence).
    """
    if not encoded:
        return
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    batches = _shard_batches(order, batch_size, engine.world_size, engine.rank)
    pad_id = tokenizer.pad_token_id
    was_training = engine.module.training
    engine.eval()
    progress = tqdm(total=len(encoded), desc=desc, unit="problem", disable=not engine.is_main,
                    dynamic_ncols=True)
    span = batch_size * engine.world_size
    for number, batch in enumerate(batches):
        indices = batch or order[:1]  # dummy batch keeps this rank in step with the others
        inputs = padded_prompts([encoded[i] for i in indices], pad_id, left=causal)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "num_return_sequences": samples} \
            if samples > 1 else {"do_sample": False}
        if causal and stop_strings:  # a decoder-only model may run on past its answer: stop it there
            sampling.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        output = engine.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, pad_token_id=pad_id,
                                 eos_token_id=tokenizer.eos_token_id, use_cache=True, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1]:] if causal else output[:, 1:]
        progress.update(min(span, len(order) - number * span))  # real problems of this step, all ranks
        if not batch:
            continue
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for row, i in enumerate(indices):
            rows = slice(row * samples, (row + 1) * samples)
            count = int((new_tokens[rows] != pad_id).sum()) // samples
            yield i, texts[rows], count
    progress.close()
    if was_training:
        engine.train()


def generate_all(engine: Engine, tokenizer, causal: bool, prompts: Sequence[str], *, max_new_tokens: int,
                 batch_size: int, stop_strings: Sequence[str] = NEXT_QUESTION, max_source_tokens: int = 1024,
                 desc: str = "generate") -> list[tuple[str, int]]:
    """Collective greedy generation: (text, generated tokens) for every prompt, in order, on every rank.

    Prompts longer than ``max_source_tokens`` keep their end. Sharded like ``evaluate_problems``, so it is
    correct under ZeRO-3 on any number of ranks.
    """
    if not prompts:
        return []
    encoded = tokenizer(list(prompts), add_special_tokens=not causal)["input_ids"]
    encoded = [ids[-max_source_tokens:] for ids in encoded]
    mine = [(i, texts[0], count) for i, texts, count in
            sharded_generations(engine, tokenizer, causal, encoded, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, stop_strings=stop_strings, desc=desc)]
    found: dict[int, tuple[str, int]] = {}
    for shard in engine.all_gather_objects(mine):
        for i, text, count in shard:
            found.setdefault(i, (text, count))
    return [found[i] for i in range(len(prompts))]


def evaluate_problems(
    engine: Engine,
    tokenizer,
    causal: bool,
    problems: Sequence[Problem],
    fmt: str,
    *,
    max_new_tokens: int,
    batch_size: int,
    demo_pool: Sequence[Problem] = (),
    k_shot: int = 0,
    seed: int = 0,
    max_source_tokens: int = 1024,
    desc: str = "eval",
    prompts: Sequence[str] | None = None,
    samples: int = 1,
    temperature: float = 0.7,
) -> EvalReport:
    """Collective: every rank calls this with the same problems; all get the full report.

    ``samples`` > 1 turns on self-consistency: that many sampled generations per problem at
    ``temperature``, scored by majority vote over extracted answers.
    """
    started = time.perf_counter()
    if prompts is None:
        prompts = eval_prompts(problems, fmt, k_shot=k_shot, seed=seed, demo_pool=demo_pool)
    encoded = tokenizer(list(prompts), add_special_tokens=not causal)["input_ids"]
    encoded = [ids[-max_source_tokens:] for ids in encoded]
    mine: list[Prediction] = []
    for i, texts, count in sharded_generations(engine, tokenizer, causal, encoded, max_new_tokens=max_new_tokens,
                                               batch_size=batch_size, samples=samples, temperature=temperature,
                                               desc=desc):
        if samples > 1:
            mine.append(majority_vote(problems[i], prompts[i], i, texts, count))
        else:
            mine.append(make_prediction(i, problems[i], prompts[i], texts[0], count))
    gathered = engine.all_gather_objects(mine)
    seen: dict[int, Prediction] = {}
    for shard in gathered:
        for prediction in shard:
            seen.setdefault(prediction.index, prediction)
    ordered = [seen[i] for i in sorted(seen)]
    settings = {"format": fmt, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                "world_size": engine.world_size, "samples": samples}
    if samples > 1:
        settings["temperature"] = temperature
    return EvalReport(ordered, time.perf_counter() - started, settings)


def bbh_average(reports: dict[str, EvalReport]) -> float | None:
    """BBH is reported as the unweighted mean over its tasks, as in Suzgun et al."""
    tasks = [r.accuracy for name, r in reports.items() if name.startswith(BBH_PREFIX)]
    return sum(tasks) / len(tasks) if tasks else None


def summary_table(reports: dict[str, EvalReport]) -> str:
    rows = [[name, r.total, r.correct, f"{100 * r.accuracy:.1f}%", f"{r.metrics()['mean_generated_tokens']:.1f}",
             f"{r.metrics()['examples_per_s']:.2f}"] for name, r in reports.items()]
    bbh = bbh_average(reports)
    if bbh is not None:
        count = sum(name.startswith(BBH_PREFIX) for name in reports)
        rows.append([f"bbh (mean of {count} tasks)", "", "", f"{100 * bbh:.1f}%", "", ""])
    if len(reports) > 1:
        mean = sum(r.accuracy for r in reports.values()) / len(reports)
        rows.append(["average", "", "", f"{100 * mean:.1f}%", "", ""])
    return markdown_table(["data set", "problems", "correct", "accuracy", "mean generated tokens", "examples/s"],
                          rows)


def run_evaluation(config: EvalRunConfig) -> dict[str, EvalReport]:
    """Evaluate a student on data sets across all ranks; rank 0 writes the outputs. Every rank calls this."""
    engine = Engine()
    try:
        log = setup_logging(engine.rank)
        out = Path(config.output_dir)
        sets = resolve_eval_sets(config)  # bad names and missing files fail before any model is loaded
        if engine.is_main:
            out.mkdir(parents=True, exist_ok=True)
        reports: dict[str, EvalReport] = {}

        def record(name: str, report: EvalReport) -> None:
            report.settings.update({"model": config.model, "dataset": name})
            reports[name] = report
            if engine.is_main:
                report.write(out / folder_name(name))
                log.info("%s: %d/%d = %.1f%%", name, report.correct, report.total, 100 * report.accuracy)

        if config.strategy == "socratic":
            from cotdistill.socratic_eval import SocraticSettings, evaluate_socratic_sets

            socratic = SocraticSettings.from_config(config)
            log.info("evaluating %s with socratic inference (decomposer %s, solver %s, %s sub-questions) on %s",
                     config.model, socratic.decomposer, socratic.solver, socratic.subquestions,
                     ", ".join(s.name for s in sets))
            for name, report in evaluate_socratic_sets(engine, {s.name: s.problems for s in sets}, socratic).items():
                record(name, report)
        else:
            student = open_student(engine, config.model, config.precision, config.zero_stage, config.offload)
            log.info("evaluating %s (%s) on %s with %s", config.model, "causal" if student.causal else "seq2seq",
                     ", ".join(s.name for s in sets), config.strategy)
            for found in sets:
                report = evaluate_problems(engine, student.tokenizer, student.causal, found.problems,
                                           config.strategy, max_new_tokens=config.max_new_tokens,
                                           batch_size=config.batch_size, demo_pool=found.demo_pool,
                                           k_shot=config.k_shot, seed=config.seed,
                                           max_source_tokens=config.max_prompt_tokens, desc=found.name,
                                           prompts=found.prompts, samples=config.samples,
                                           temperature=config.temperature)
                record(found.name, report)
        if engine.is_main:
            metrics = {"model": config.model, "strategy": config.strategy, "world_size": engine.world_size,
                       "datasets": {name: r.metrics() for name, r in reports.items()}}
            if config.strategy == "socratic":
                first = next(iter(reports.values()))
                metrics.update({key: first.settings[key] for key in ("decomposer", "solver", "subquestions")})
            if bbh_average(reports) is not None:
                metrics["bbh_average"] = bbh_average(reports)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            (out / "summary.md").write_text(summary_table(reports) + "\n", encoding="utf-8")
        return reports
    finally:
        engine.close()
