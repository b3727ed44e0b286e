"""What the trainer optimizes, chosen by ``train.objective``: one class per objective, in one registry.

An objective declares what it needs from the data (`Needs`: e.g. the teacher's top-k distribution attached to
every target token at tokenization) and turns one collated micro-batch into a loss. Everything else (data
order, DeepSpeed, checkpoints, logs, evaluation) belongs to the trainer in ``cotdistill.train``, so a new
objective is one class here plus its tests. The loss arithmetic itself lives in ``cotdistill.objectives``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from cotdistill.batching import TokenizedExample, collate, forward_batch, padding_stats
from cotdistill.config import TrainConfig
from cotdistill.errors import ConfigError, TeacherUnavailable
from cotdistill.objectives import IGNORE_INDEX, distill_loss, mean_token_nll, one_hot_targets

if TYPE_CHECKING:
    from cotdistill.problems.record import Problem

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

    ``real``/``slots``: the token positions the training forward computed without and with padding (the logs'
    tokens/s and padding fraction). ``metrics`` are (sum, count) pairs that the trainer adds up over ranks and
    micro-batches and logs as sum / count under ``train/<name>``: e.g. (a divergence summed over tokens, the
    tokens), or (seconds spent, 1 / gradient accumulation) for a per-step time averaged over ranks.
    """

    loss: torch.Tensor
    tokens: int
    real: float = 0.0
    slots: float = 0.0
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MicroBatch:
    """This rank's examples for one micro-step. ``index`` is the global micro-step, the same on every rank: what
    must agree across ranks (e.g. whether ZeRO-3 ranks all generate) is decided from it; ``rank`` seeds what
    may differ."""

    indices: tuple[int, ...]
    examples: tuple[TokenizedExample, ...]
    index: int
    rank: int


@dataclass(frozen=True)
class TrainingSetup:
    """What an objective may need to know about the run, handed over once before the first step."""

    config: Any  # the RunConfig
    tokenizer: Any
    causal: bool
    packed: bool
    world_size: int
    problems: tuple[Problem | None, ...] = ()  # the Problem of each training example, by its index (None: unknown)
    engine: Any = None


class Objective:
    """Base class: collate by the objective's needs, run the student's forward, compute the loss."""

    name: ClassVar[str]
    needs: ClassVar[Needs] = Needs()
    # May raise TeacherUnavailable mid-step: the trainer then keeps each step's starting point to checkpoint it.
    asks_a_teacher: ClassVar[bool] = False

    def __init__(self, train: TrainConfig) -> None:
        self.train = train
        self.setup: TrainingSetup | None = None

    def prepare(self, setup: TrainingSetup) -> None:
        """Called once before the first step (a teacher connection, say, is made here)."""
        self.setup = setup

    def close(self) -> None:
        """Called once after the last step, also on an error."""

    def collate(self, examples: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        return collate(examples, self.setup.tokenizer.pad_token_id, loss_weights=self.train.loss_weights or None,
                       teacher=self.needs.teacher_distributions, pack=self.setup.packed)

    def loss(self, engine: Any, micro: MicroBatch) -> MicroLoss:
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

    def loss(self, engine: Any, micro: MicroBatch) -> MicroLoss:
        batch = self.collate(micro.examples)
        real, slots = padding_stats(batch, self.setup.causal)
        logits, labels, targets, shift = student_forward(engine, batch, self.setup.causal)
        if "token_weights" not in targets:
            return MicroLoss(*mean_token_nll(logits, labels, shift), real, slots)
        ids, probs = (t.to(labels.device) for t in one_hot_targets(labels))
        return MicroLoss(*distill_loss(logits, labels, ids, probs, targets["token_weights"], 0.0, shift), real, slots)


class DistributionMatching(Objective):
    """Off-policy distillation: per target token ``(1 - w) NLL + w KL(teacher top-k || student)``, ``w =
    train.kd_weight``, on the teacher's samples (Fu et al. 2023); tokens without a teacher distribution learn
    their one-hot target."""

    name = "kd"
    needs = Needs(teacher_distributions=True)

    def loss(self, engine: Any, micro: MicroBatch) -> MicroLoss:
        batch = self.collate(micro.examples)
        real, slots = padding_stats(batch, self.setup.causal)
        logits, labels, targets, shift = student_forward(engine, batch, self.setup.causal)
        if "kd_ids" in targets:
            ids, probs = targets["kd_ids"], targets["kd_probs"]
        else:
            ids, probs = (t.to(labels.device) for t in one_hot_targets(labels))
        return MicroLoss(*distill_loss(logits, labels, ids, probs, targets.get("token_weights"),
                                       self.train.kd_weight, shift), real, slots)


class OnPolicyDistillation(Objective):
    """GKD (Agarwal et al. 2024): on a fraction ``train.on_policy.lmbda`` of micro-steps the student samples its own
    completions of the batch's prompts, on the rest it takes the data's (teacher-written) targets; either way the
    teacher scores every completion token and the loss is the generalized JSD (``beta``) between the teacher's
    top-k (+ tail) and the student, on completion tokens only (``cotdistill.on_policy``)."""

    name = "on_policy"
    asks_a_teacher = True

    def prepare(self, setup: TrainingSetup) -> None:
        super().prepare(setup)
        from cotdistill.alignment import StudentVocab

        self.vocab = StudentVocab(setup.tokenizer)
        self.scorer = make_scorer(self.train.on_policy, setup.engine)
        self.gathered = self._gathers(setup.engine)
        if setup.engine is not None and setup.engine.is_main:
            facts = self.scorer.describe()
            where = facts.get("device") or facts.get("base_url") or "the server"
            held = (f"partitioned over {setup.engine.world_size} ranks with ZeRO-3 (rank 0 holds "
                    f"{facts['parameters_held']:,} of its {facts['parameters']:,} parameters)"
                    if facts.get("partitioned") else f"on {where}")
            logging.getLogger("cotdistill").info("on-policy teacher: %s %s, %s", facts.get("backend"),
                                                 facts.get("model"), held)
            if setup.engine.is_zero3:
                logging.getLogger("cotdistill").info(
                    "on-policy sampling: %s", "the student's weights gathered on every rank for each generate call"
                    if self.gathered else "in lockstep on the ZeRO-3 partitions (every rank joins every forward)")

    def _gathers(self, engine: Any) -> bool:
        """``gather_for_generation`` decided once, the same on every rank (auto asks the ranks' memory)."""
        choice = self.train.on_policy.gather_for_generation
        if engine is None or not engine.is_zero3 or choice == "false":
            return False
        return choice == "true" or engine.generation_fits_gathered()

    def close(self) -> None:
        scorer = getattr(self, "scorer", None)
        if scorer is not None:
            scorer.close()

    @staticmethod
    def _agreed(engine: Any, score: Any) -> Any:
        """``score()``, or on every rank the same ``TeacherUnavailable`` when the teacher stayed down on any rank:
        no rank goes on to the backward's collectives while another stops."""
        try:
            found, failure = score(), None
        except TeacherUnavailable as err:
            found, failure = None, err
        if engine.any_rank(failure is not None):
            reasons = [reason for reason in engine.all_gather_objects(str(failure) if failure else None) if reason]
            raise TeacherUnavailable(reasons[0])  # the same reason on every rank (the first failing rank's)
        return found

    def loss(self, engine: Any, micro: MicroBatch) -> MicroLoss:
        import time

        from cotdistill import on_policy as op
        from cotdistill.objectives import generalized_jsd, shift_for_causal

        cfg, setup, t = self.train.on_policy, self.setup, self.train
        started = time.perf_counter()
        prompts = [op.prompt_of(e) for e in micro.examples]
        sampled = op.samples_this_micro_step(t.seed, micro.index, cfg.lmbda)
        if sampled:
            completions = op.sample_completions(engine, setup.tokenizer, prompts, setup.causal, cfg.temperature,
                                                cfg.max_new_tokens, op.sampling_seed(t.seed, micro.index, micro.rank),
                                                gathered=self.gathered)
        else:
            completions = [op.target_of(e) for e in micro.examples]
        generated = time.perf_counter()
        targets = self._agreed(engine, lambda: op.score_completions(self.scorer, setup.tokenizer, self.vocab,
                                                                    prompts, completions, cfg.top_k))
        scored = time.perf_counter()
        batch = op.divergence_batch(prompts, completions, targets, setup.causal, setup.tokenizer.pad_token_id,
                                    pack=setup.packed)
        real, slots = padding_stats(batch, setup.causal)
        logits, labels, targ, shift = student_forward(engine, batch, setup.causal)
        ids, probs, weights = targ["kd_ids"], targ["kd_probs"], targ["token_weights"]
        if shift:
            logits, labels = shift_for_causal(logits, labels)
            ids, probs, weights = ids[:, 1:], probs[:, 1:], weights[:, 1:]
        scored_positions = (labels != IGNORE_INDEX) & (weights > 0)
        per_token = generalized_jsd(logits, ids, probs, cfg.beta)
        per_token = torch.where(scored_positions, per_token, torch.zeros_like(per_token))
        count = int(scored_positions.sum().item())
        loss = per_token.sum() / max(count, 1)
        share = 1.0 / t.gradient_accumulation  # per-step times: summed over micro-batches, averaged over ranks
        metrics = {"divergence": (float(per_token.sum().detach()), float(count)),
                   "on_policy_fraction": (float(sampled), 1.0),
                   "generate_s": (generated - started, share), "score_s": (scored - generated, share)}
        if sampled:
            texts = [setup.tokenizer.decode(list(c), skip_special_tokens=True) for c in completions]
            problems = [setup.problems[i] if i < len(setup.problems) else None for i in micro.indices]
            correct = op.samples_correct(problems, texts)
            metrics["completion_tokens"] = (float(sum(len(c) for c in completions)), float(len(completions)))
            metrics["sample_accuracy"] = (float(correct), float(len(completions)))
        else:
            metrics["completion_tokens"] = (0.0, 0.0)
            metrics["sample_accuracy"] = (0.0, 0.0)
        return MicroLoss(loss, count, real, slots, metrics)


SCORER_BACKENDS = ("hf", "openai")


def make_scorer(cfg: Any, engine: Any) -> Any:
    """The teacher that scores completions (``train.on_policy.teacher``): a local one loaded outside the student's
    ZeRO-3, or a client of a served one."""
    teacher = cfg.teacher
    if teacher.backend == "openai":
        from cotdistill.teacher.openai_scoring import OpenAITokenScorer
        from cotdistill.teacher.retry import RetryPolicy

        return OpenAITokenScorer(teacher.model, teacher.base_url, teacher.api_key_env, teacher.timeout,
                                 teacher.concurrency, RetryPolicy(teacher.max_retries, teacher.backoff_initial,
                                                                  teacher.backoff_max))
    from cotdistill.teacher.scoring import HFTokenScorer

    if teacher.partition:
        return HFTokenScorer(teacher.model, precision=teacher.precision, batch_size=teacher.batch_size,
                             partition_over=engine)
    with engine.outside_zero3():
        return HFTokenScorer(teacher.model, teacher.device, teacher.precision, teacher.batch_size)


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SupervisedFineTuning, DistributionMatching,
                                                                    OnPolicyDistillation)}


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
    if name == OnPolicyDistillation.name:
        op = train.on_policy
        if not 0.0 <= op.lmbda <= 1.0 or not 0.0 <= op.beta <= 1.0:
            raise ConfigError(f"train.on_policy.lmbda and .beta must be in [0, 1], got {op.lmbda:g} and {op.beta:g}")
        if op.gather_for_generation not in ("auto", "true", "false"):
            raise ConfigError(f"train.on_policy.gather_for_generation must be auto, true or false, got "
                              f"{op.gather_for_generation!r}")
        if op.temperature <= 0 or op.max_new_tokens < 1 or op.top_k < 1:
            raise ConfigError("train.on_policy needs temperature > 0, max_new_tokens >= 1 and top_k >= 1")
        if not op.teacher.model:
            raise ConfigError("train.objective=on_policy needs a teacher: set train.on_policy.teacher.model")
        if op.teacher.backend not in SCORER_BACKENDS:
            raise ConfigError(f"train.on_policy.teacher.backend={op.teacher.backend!r} is not one of "
                              f"{', '.join(SCORER_BACKENDS)}")
        if op.teacher.partition and (op.teacher.backend != "hf" or op.teacher.device != "auto"):
            raise ConfigError("train.on_policy.teacher.partition=true shares a local (backend=hf) teacher's weights "
                              "over the training ranks, on their devices: set backend=hf and device=auto, got "
                              f"backend={op.teacher.backend}, device={op.teacher.device}")
        if op.teacher.backend == "openai":
            if not op.teacher.base_url:
                raise ConfigError("train.on_policy.teacher.backend=openai needs train.on_policy.teacher.base_url "
                                  "(e.g. http://localhost:8000/v1)")
            if op.teacher.concurrency < 1 or op.teacher.timeout <= 0 or op.teacher.max_retries < 0:
                raise ConfigError("train.on_policy.teacher needs concurrency >= 1, timeout > 0 and max_retries >= 0")
            if not 0 <= op.teacher.backoff_initial <= op.teacher.backoff_max:
                raise ConfigError("train.on_policy.teacher needs 0 <= backoff_initial <= backoff_max, got "
                                  f"{op.teacher.backoff_initial:g} and {op.teacher.backoff_max:g}")
        if train.loss_weights:
            raise ConfigError(f"train.loss_weights={train.loss_weights} weighs the teacher's text per format; "
                              "train.objective=on_policy does not apply it (every scored token weighs the same): "
                              "remove train.loss_weights")
        if train.kd_weight > 0:
            raise ConfigError("train.kd_weight is distribution matching on stored teacher log-probs; "
                              "train.objective=on_policy scores with train.on_policy.teacher instead: set kd_weight=0")
    if name == DistributionMatching.name and train.kd_weight <= 0:
        raise ConfigError("train.objective=kd matches the teacher's distribution with weight train.kd_weight, "
                          "which is 0: set train.kd_weight in (0, 1]")


def make_objective(train: TrainConfig) -> Objective:
    """The run's objective (``check_objective`` has passed for this config)."""
    return OBJECTIVES[objective_name(train)](train)
