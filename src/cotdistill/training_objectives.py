"""What the trainer optimizes, chosen by ``train.objective``: one class per objective, in one registry.

An objective declares what it needs from the data (`Needs`: e.g. the teacher's top-k distribution attached to
every target token at tokenization) and turns one collated micro-batch into a loss. Everything else (data
order, DeepSpeed, checkpoints, logs, evaluation) belongs to the trainer in ``cotdistill.train``, so a new
objective is one class here plus its tests. The loss arithmetic itself lives in ``cotdistill.objectives``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from cotdistill.batching import TokenizedExample, collate, forward_batch
from cotdistill.config import TrainConfig
from cotdistill.errors import ConfigError
from cotdistill.objectives import distill_loss, mean_token_nll, one_hot_targets

AUTO = "auto"


@dataclass(frozen=True)
class Needs:
    """What an objective needs that plain supervised training does not.

    ``teacher_distributions``: every tokenized target token carries the teacher's top-k distribution (mapped
    into the student's vocabulary at tokenization, ``cotdistill.alignment``), and micro-batches carry them as
    dense ``kd_ids``/``kd_probs`` tensors.
    """

    teacher_distributions: bool = False


@dataclass
class MicroLoss:
    """One micro-batch's loss: backward goes through ``loss`` (the mean over its ``tokens`` target tokens).

    ``metrics`` are sums over the micro-batch that the trainer adds up over ranks and micro-batches and logs
    divided by the step's target tokens (e.g. a divergence that is not the loss itself).
    """

    loss: torch.Tensor
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


class Objective:
    """Base class: collate by the objective's needs, run the student's forward, compute the loss."""

    name: ClassVar[str]
    needs: ClassVar[Needs] = Needs()

    def __init__(self, train: TrainConfig) -> None:
        self.train = train

    def collate(self, examples: Sequence[TokenizedExample], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
        return collate(examples, pad_id, loss_weights=self.train.loss_weights or None,
                       teacher=self.needs.teacher_distributions, pack=packed)

    def loss(self, engine: Any, batch: dict[str, torch.Tensor], causal: bool) -> MicroLoss:
        raise NotImplementedError


def student_forward(engine: Any, batch: dict[str, torch.Tensor], causal: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], bool]:
    """The student's logits on a collated micro-batch (teacher-forced), with the labels and per-token targets they
    are scored against, all on the engine's device, and whether the causal shift is still to be applied."""
    fb = forward_batch(batch, causal)
    if not causal:
        fb.inputs["decoder_input_ids"] = fb.decoder_input_ids(
            lambda labels: engine.module.prepare_decoder_input_ids_from_labels(labels=labels))
    with fb.forward_context():
        outputs = engine.forward(**fb.inputs, use_cache=False)  # no KV cache to keep in training
    targets = {k: v.to(engine.device) for k, v in fb.targets.items()}
    return outputs.logits, fb.labels.to(engine.device), targets, not fb.aligned


class SupervisedFineTuning(Objective):
    """Next-token NLL on the teacher's text (per-format ``train.loss_weights`` scale each example's tokens)."""

    name = "sft"

    def loss(self, engine: Any, batch: dict[str, torch.Tensor], causal: bool) -> MicroLoss:
        logits, labels, targets, shift = student_forward(engine, batch, causal)
        if "token_weights" not in targets:
            return MicroLoss(*mean_token_nll(logits, labels, shift))
        ids, probs = (t.to(labels.device) for t in one_hot_targets(labels))
        return MicroLoss(*distill_loss(logits, labels, ids, probs, targets["token_weights"], 0.0, shift))


class DistributionMatching(Objective):
    """Off-policy distillation: per target token ``(1 - w) NLL + w KL(teacher top-k || student)``, ``w =
    train.kd_weight``, on the teacher's samples (Fu et al. 2023); tokens without a teacher distribution learn
    their one-hot target."""

    name = "kd"
    needs = Needs(teacher_distributions=True)

    def loss(self, engine: Any, batch: dict[str, torch.Tensor], causal: bool) -> MicroLoss:
        logits, labels, targets, shift = student_forward(engine, batch, causal)
        if "kd_ids" in targets:
            ids, probs = targets["kd_ids"], targets["kd_probs"]
        else:
            ids, probs = (t.to(labels.device) for t in one_hot_targets(labels))
        return MicroLoss(*distill_loss(logits, labels, ids, probs, targets.get("token_weights"),
                                       self.train.kd_weight, shift))


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SupervisedFineTuning, DistributionMatching)}


def objective_name(train: TrainConfig) -> str:
    """``train.objective``, with ``auto`` resolved: distribution matching when ``train.kd_weight`` > 0, else SFT."""
    if train.objective != AUTO:
        return train.objective
    return DistributionMatching.name if train.kd_weight > 0 else SupervisedFineTuning.name


def check_objective(train: TrainConfig) -> None:
    """Refuse an unknown objective and a ``kd_weight`` that contradicts the chosen one, naming both keys."""
    if train.objective != AUTO and train.objective not in OBJECTIVES:
        raise ConfigError(f"train.objective={train.objective!r} is not one of {AUTO}, {', '.join(OBJECTIVES)}")
    name = objective_name(train)
    if name == SupervisedFineTuning.name and train.kd_weight > 0:
        raise ConfigError(f"train.objective=sft trains on the teacher's text only, but train.kd_weight="
                          f"{train.kd_weight:g} asks for distribution matching: set train.objective=kd (or auto), "
                          "or train.kd_weight=0")
    if name == DistributionMatching.name and train.kd_weight <= 0:
        raise ConfigError("train.objective=kd matches the teacher's distribution with weight train.kd_weight, "
                          "which is 0: set train.kd_weight in (0, 1]")


def make_objective(train: TrainConfig) -> Objective:
    """The run's objective (``check_objective`` has passed for this config)."""
    return OBJECTIVES[objective_name(train)](train)
