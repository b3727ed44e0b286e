"""Greedy accuracy of a student on problems, sharded over ranks, correct under ZeRO-3.

Every rank makes the same number of ``generate`` calls (short shards are padded with a dummy batch whose
outputs are dropped) and ``generate`` runs with ``synced_gpus`` under ZeRO-3, so no rank waits forever
for a partner's parameter gather. Results are gathered to every rank and put back in dataset order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cotdistill.answers import answers_match, extract_answer, infer_kind
from cotdistill.batching import padded_prompts
from cotdistill.config import EvalConfig
from cotdistill.engine import Engine
from cotdistill.formats import eval_prompts
from cotdistill.problems.record import Problem


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


def evaluate_problems(
    engine: Engine,
    tokenizer,
    causal: bool,
    problems: Sequence[Problem],
    fmt: str,
    settings: EvalConfig,
    demo_pool: Sequence[Problem] = (),
    k_shot: int = 0,
    seed: int = 0,
    max_source_tokens: int = 1024,
) -> EvalReport:
    """Collective: every rank calls this with the same problems; all get the full report."""
    started = time.perf_counter()
    prompts = eval_prompts(problems, fmt, k_shot=k_shot, seed=seed, demo_pool=demo_pool)
    encoded = tokenizer(list(prompts), add_special_tokens=not causal)["input_ids"]
    encoded = [ids[-max_source_tokens:] for ids in encoded]
    order = sorted(range(len(problems)), key=lambda i: -len(encoded[i]))
    batches = _shard_batches(order, settings.batch_size, engine.world_size, engine.rank)
    pad_id = tokenizer.pad_token_id
    mine: list[Prediction] = []
    was_training = engine.module.training
    engine.eval()
    for batch in batches:
        indices = batch or order[:1]  # dummy batch keeps this rank in step with the others
        inputs = padded_prompts([encoded[i] for i in indices], pad_id, left=causal)
        output = engine.generate(**inputs, max_new_tokens=settings.max_new_tokens, do_sample=False,
                                 num_beams=1, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1]:] if causal else output[:, 1:]
        if not batch:
            continue
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for row, i in enumerate(indices):
            problem = problems[i]
            kind = infer_kind(problem.source, problem.answer)
            extracted = extract_answer(texts[row], kind=kind)
            count = int((new_tokens[row] != pad_id).sum())
            mine.append(Prediction(i, problem.id, problem.question, problem.answer, prompts[i], texts[row].strip(),
                                   extracted, answers_match(extracted, problem.answer, kind=kind), count))
    if was_training:
        engine.train()
    gathered = engine.all_gather_objects(mine)
    seen: dict[int, Prediction] = {}
    for shard in gathered:
        for prediction in shard:
            seen.setdefault(prediction.index, prediction)
    ordered = [seen[i] for i in sorted(seen)]
    return EvalReport(ordered, time.perf_counter() - started,
                      {"format": fmt, "max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size,
                       "world_size": engine.world_size})
