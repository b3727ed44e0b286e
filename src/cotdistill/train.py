"""The training loop: read it top to bottom.

prepare output dir -> problems -> formatted examples -> (tiny model if asked) -> tokens -> DeepSpeed engine
-> resume from the newest complete checkpoint -> steps (TensorBoard, progress bar, checkpoints)
-> export Hugging Face weights -> held-out accuracy.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from cotdistill import checkpoints as ckpt
from cotdistill.batching import (
    BatchStream,
    DataState,
    LengthGroupedBatches,
    run_batch_order,
    tokenize_examples,
)
from cotdistill.chat import check_chat_student
from cotdistill.config import EvalRunConfig, EvalSpec, RunConfig, eval_spec, to_yaml, validate_run
from cotdistill.cpu_precision import slow_precision_note
from cotdistill.ds_config import check_precision, read_template, resolve_ds_config
from cotdistill.engine import Engine
from cotdistill.errors import ConfigError, TeacherUnavailable
from cotdistill.eval_sets import EvalSet, folder_name, resolve_eval_sets
from cotdistill.evaluate import evaluate_set
from cotdistill.export import export_from_engine, save_run_meta
from cotdistill.formats import format_split, validate_mixture
from cotdistill.generation import EvalReport
from cotdistill.logs import setup_logging
from cotdistill.modeling import detect_kind, load_model, load_tokenizer
from cotdistill.outputs import check_output_dir, removed_on_failure
from cotdistill.packed_attention import PACKABLE_SEQ2SEQ, attention_dropout, can_pack, describe_packed_attention
from cotdistill.profiling import StepProfiler, parse_step_range
from cotdistill.rng import capture_rng, restore_rng, seed_everything
from cotdistill.run_data import load_run_problems, run_examples
from cotdistill.run_folder import RunFolder
from cotdistill.runs import mixture_strategy
from cotdistill.schedule import lr_at
from cotdistill.student import Student
from cotdistill.tiny import build_tiny_model
from cotdistill.training_objectives import MicroBatch, MicroLoss, Objective, TrainingSetup, make_objective

HELD_OUT = "held-out"


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_loss: float
    export_dir: Path | None = None
    eval: EvalReport | None = None
    losses: list[float] = field(default_factory=list)


def prepare_output_dir(output_dir: str, engine: Engine) -> Path:
    """Create the run folder and prove it is writable before any expensive work starts."""
    path = Path(output_dir)
    problem = ""
    if engine.is_main:
        try:
            check_output_dir(path)
            path.mkdir(parents=True, exist_ok=True)
        except ConfigError as err:
            problem = str(err)
        except OSError as err:
            problem = f"output_dir {path} is not writable: {err.strerror or err}"
    problem = engine.broadcast_object(problem)
    if problem:
        raise ConfigError(problem)
    return path


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (preemption, time limits) into a checkpoint at the next step boundary.

    Installed before anything slow starts, so a signal during start-up is remembered rather than fatal.
    `release()` (after the training loop) ignores further USR1s and restores TERM: a late USR1 during
    interpreter shutdown must not kill a process that already saved its checkpoint.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        for sig in self.SIGNALS:
            # Only the main thread may install handlers; elsewhere (a test runner thread) keep the default.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def release(self) -> None:
        for sig, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, signal.SIG_IGN if sig == signal.SIGUSR1 else previous)
        self._previous.clear()


def _ensure_model(config: RunConfig, engine: Engine, texts: list[str], log) -> str:
    """Return the model path, building the tiny model on rank 0 when the recipe asks for one."""
    name = config.model.name_or_path
    if config.model.make_tiny and not Path(name).exists():
        with engine.main_first():
            if engine.is_main and not Path(name).exists():
                tiny = config.model.tiny
                log.info("making a tiny %s at %s (vocab <= %d, d_model %d, %d layers)", config.model.make_tiny,
                         name, tiny.vocab_size, tiny.d_model, tiny.num_layers)
                build_tiny_model(config.model.make_tiny, name, texts, tiny, seed=config.train.seed)
    return name


def _eval_spec(config: RunConfig) -> EvalSpec:
    """The dev sets' evaluation spec: ``eval``'s keys, the strategy from the mixture when not given, prompts in the
    layout training uses (data.chat_template)."""
    strategy, subquestions = mixture_strategy(config)
    return eval_spec(config.eval, strategy=strategy, subquestions=subquestions,
                     chat_template=config.data.chat_template)




def train(config: RunConfig) -> TrainResult:
    """Run (or resume) one training job described by ``config``; every rank calls this.

    Everything ``show-config`` validates is checked before any folder or model exists, and a run that fails
    before its first logged step leaves no run folder of its own making behind.
    """
    validate_run(config)
    stop = StopRequest()
    engine = Engine()
    try:
        with removed_on_failure(config.output_dir, scratch=RunFolder.STARTUP, enabled=engine.is_main):
            trainer = Trainer(engine, config, stop)
            try:
                trainer.setup()
                return trainer.fit()
            finally:
                trainer.objective.close()
    finally:
        stop.release()
        engine.close()


class Trainer:
    """One training job on this rank: ``setup`` (data, model, engine, resume), ``loss_step`` (one micro-batch
    through the run's objective), ``train_step`` (one optimizer step, logged), ``fit`` (steps, checkpoints,
    dev evaluations, then export and the final evaluation).

    What the loss is belongs to the objective (``cotdistill.training_objectives``, ``train.objective``); the
    trainer only asks it for the data it needs and for a loss per micro-batch.
    """

    def __init__(self, engine: Engine, config: RunConfig, stop: StopRequest) -> None:
        self.engine = engine
        self.config = config
        self.stop = stop
        self.objective: Objective = make_objective(config.train)
        self.log = setup_logging(engine.rank)

    # -- set-up ---------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything before the first step: run folder, data, tokens, DeepSpeed engine, batch order, resume."""
        engine, config, log = self.engine, self.config, self.log
        t = config.train
        seed_everything(t.seed)
        self.out = prepare_output_dir(config.output_dir, engine)
        self.run = RunFolder(self.out)
        template = read_template(config.deepspeed_config)

        train_problems, held_out = load_run_problems(config.data)
        validate_mixture(config.data.formats)
        examples = run_examples(config, train_problems)
        log.info("data: %d training problems -> %d examples (%s); %d held-out problems; objective %s",
                 len(train_problems), len(examples), format_split(examples), len(held_out), self.objective.name)

        self.dev_sets = _dev_sets(config, train_problems, held_out)  # resolved now: a bad name fails early
        if self.dev_sets and not _eval_spec(config).strategy:
            log.info("a decomposer alone cannot be scored: no dev-set evaluation (evaluate it with its solver: "
                     "cotdistill eval --strategy socratic --decomposer ... --solver ...)")
            self.dev_sets = []

        model_path = _ensure_model(config, engine, [e.source + e.target for e in examples], log)
        kind = config.model.kind if config.model.kind != "auto" else detect_kind(model_path)
        self.causal = kind == "causal"
        self.tokenizer = tokenizer = load_tokenizer(model_path)
        if config.data.chat_template:  # before any model is loaded: no template (or T5) is one clear error
            check_chat_student(tokenizer, self.causal)
        if engine.is_main:
            save_run_meta(model_path, tokenizer, self.out)
        teacher_fn = _teacher_fn(config, tokenizer, examples) if self.objective.needs.teacher_distributions else None
        self.tokenized, truncation = tokenize_examples(examples, tokenizer, self.causal,
                                                       config.data.max_source_tokens, config.data.max_target_tokens,
                                                       teacher_fn=teacher_fn, chat=config.data.chat_template)
        log.info("tokens: %s", truncation.summary())

        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(model_path)
        check_precision(model_config.model_type, config)
        slow = slow_precision_note(engine.device.type, t.precision, "train.precision")
        if slow and engine.is_main:
            log.warning("%s", slow)
        self.packed = t.pack_sequences and can_pack(model_config)
        if t.pack_sequences and not self.packed:
            log.info("packing: %s students are padded (packed micro-batches support causal LMs and %s)",
                     model_config.model_type, "/".join(PACKABLE_SEQ2SEQ))
        hidden = getattr(model_config, "d_model", None) or getattr(model_config, "hidden_size", None)
        ds_config = resolve_ds_config(template, config, engine.world_size, hidden, source=config.deepspeed_config)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[t.precision]
        packed_line = (describe_packed_attention(t.packed_attention, engine.device, dtype,
                                                 attention_dropout(model_config), self.causal)
                       if self.packed else "")  # refuses varlen where no kernel runs, before loading
        model = engine.load_model(ds_config, lambda: load_model(
            model_path, kind, dtype=dtype, gradient_checkpointing=config.model.gradient_checkpointing,
            packed=self.packed, packed_kernel=t.packed_attention))
        engine.initialize(model)
        if packed_line and engine.is_main:
            log.info("%s", packed_line)

        self.order = run_batch_order(self.tokenized, self.causal, engine.world_size, t,
                                     config.data.single_format_batches, self.packed)
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.order.steps_per_epoch
                                                           / t.gradient_accumulation))
        latest = ckpt.latest_checkpoint(self.out) if config.checkpoint.resume else None
        self.step, self.consumed, self.micro_steps, data = (
            _resume(engine, config, self.out, latest, self.order, log) if latest is not None
            else (0, 0, 0, self.order.position(0)))
        if latest is None and engine.is_main:
            for stale in ckpt.remove_incomplete(self.out):
                log.info("removed incomplete checkpoint %s", stale)
        if engine.is_main:  # every start, with or without a checkpoint: steps after `step` are trained again
            dropped = _forget_logged_steps_after(self.run.train_log, self.step)
            if dropped:
                log.info("%s: dropped %d row%s of steps after %d (they are trained again)", self.run.TRAIN_LOG,
                         dropped, "s" * (dropped > 1), self.step)
        self.last_saved = self.step if latest is not None else -1
        self.batches = self.order.stream(data)
        by_id = {p.id: p for p in train_problems}
        self.objective.prepare(TrainingSetup(config, tokenizer, self.causal, self.packed, engine.world_size,
                                             tuple(by_id.get(e.problem_id) for e in examples), engine))
        self.losses: list[float] = []

    # -- steps ----------------------------------------------------------------------------------------------

    def loss_step(self) -> MicroLoss:
        """One micro-batch of this rank: the objective's forward and loss, backward, DeepSpeed's step."""
        engine = self.engine
        index = self.micro_steps  # the global micro-step, the same on every rank, on any world size after a resume
        indices = tuple(self.batches.next_step()[engine.rank])
        self.consumed += self.order.global_batch
        self.micro_steps += 1
        micro = self.objective.loss(engine, MicroBatch(indices, tuple(self.tokenized[i] for i in indices), index,
                                                       engine.rank))
        engine.backward(micro.loss)
        engine.step()
        return micro

    def train_step(self, writer) -> float:
        """One optimizer step (``train.gradient_accumulation`` micro-batches); returns the step's mean target-token
        loss over all ranks and logs it (TensorBoard, train_log.jsonl) every ``train.log_every`` steps."""
        engine, t = self.engine, self.config.train
        engine.set_lr(lr_at(self.step, self.total_steps, t))
        started = time.perf_counter()
        loss_sum = tokens = real = slots = 0.0
        metrics: dict[str, tuple[float, float]] = {}
        step_start = ((self.consumed, self.micro_steps, self.batches.mark(), capture_rng())
                      if self.objective.asks_a_teacher else None)
        for _ in range(t.gradient_accumulation):
            try:
                micro = self.loss_step()
            except TeacherUnavailable as err:
                if step_start is None:
                    raise
                self._stop_for_teacher(err, *step_start)
            real, slots = real + micro.real, slots + micro.slots
            loss_sum, tokens = loss_sum + float(micro.loss.detach()) * micro.tokens, tokens + micro.tokens
            for name, (value, count) in micro.metrics.items():
                before = metrics.get(name, (0.0, 0.0))
                metrics[name] = (before[0] + value, before[1] + count)
        self.step += 1
        elapsed = time.perf_counter() - started
        # Every rank must reduce the same list: the names are the objective's, the same on every rank.
        names = sorted(metrics)
        loss_sum, tokens, real, slots, *summed = engine.all_reduce_sum(
            [loss_sum, tokens, real, slots, *(x for n in names for x in metrics[n])])
        mean_loss = loss_sum / max(tokens, 1.0)
        self.losses.append(mean_loss)
        grad_norm = engine.grad_norm()
        lr = engine.current_lr()
        if writer is not None and (self.step % t.log_every == 0 or self.step == self.stop_at):
            samples = t.micro_batch_size * t.gradient_accumulation * engine.world_size
            scalars = {"train/loss": mean_loss, "train/lr": lr, "train/grad_norm": grad_norm,
                       "train/samples_per_s": samples / elapsed, "train/tokens_per_s": real / elapsed,
                       "train/padding_fraction": 1.0 - real / max(slots, 1.0), "train/step_time_s": elapsed,
                       **{f"train/{n}": summed[2 * k] / max(summed[2 * k + 1], 1e-12) for k, n in enumerate(names)}}
            spent = [scalars[f"train/{n}"] for n in names if n.endswith("_s")]
            if spent:  # an objective that generates or waits for a teacher: the rest of the step is training
                scalars["train/train_s"] = max(0.0, elapsed - sum(spent))
            for name, value in scalars.items():
                writer.add_scalar(name, value, self.step)
            with open(self.run.train_log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": self.step, **{k.split("/")[1]: v for k, v in scalars.items()},
                                     "time": time.time()}) + "\n")
        return mean_loss

    # -- the run ----------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Steps until ``train.max_steps`` (or ``train.stop_after_steps`` more, or a stop signal), checkpoints and
        dev evaluations on their schedule; at the end, the export and the final evaluation."""
        engine, config, log, t = self.engine, self.config, self.log, self.config.train
        writer = _tensorboard(self.run, config, self.step) if engine.is_main else None
        self.stop_at = min(self.total_steps, self.step + t.stop_after_steps) if t.stop_after_steps else self.total_steps
        progress = _progress_bar(engine, self.total_steps, self.step)
        profiler = StepProfiler(parse_step_range(t.profile_steps), self.run.profile, engine.rank)
        engine.train()
        try:
            while self.step < self.stop_at:
                profiler.before_step(self.step + 1)
                mean_loss = self.train_step(writer)
                if progress is not None:
                    progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{engine.current_lr():.2e}", refresh=False)
                    progress.update(1)
                stopping = engine.any_rank(self.stop.requested)
                report = profiler.after_step(self.step, stopping=stopping or self.step == self.stop_at)
                if report is not None:
                    log.info("profile of steps %s written to %s (and a trace to open in ui.perfetto.dev)",
                             t.profile_steps, report)
                due = config.checkpoint.every and self.step % config.checkpoint.every == 0
                if due or stopping or self.step == self.stop_at:
                    self._save(mean_loss)
                if stopping:
                    log.info("stop requested: checkpoint saved at step %d; rerun the same command to resume",
                             self.step)
                    break
                if (config.eval.every and self.step % config.eval.every == 0 and self.step < self.total_steps
                        and self.dev_sets):
                    _evaluate_dev_sets(engine, self.tokenizer, self.causal, self.dev_sets, config, self.step,
                                       writer, self.run.eval_dir(self.step), log)
        finally:  # also on an error (a full disk), so its `error:` line starts a line of its own
            if progress is not None:
                progress.close()

        if self.step > 0 and self.last_saved != self.step:
            self._save(self.losses[-1] if self.losses else float("nan"))
        result = TrainResult(self.out, self.step, self.losses[-1] if self.losses else float("nan"),
                             losses=self.losses)
        if self.step < self.total_steps:
            if writer is not None:
                writer.close()
            return result
        if config.checkpoint.export_final:
            result.export_dir = export_from_engine(engine, self.tokenizer, self.run.final)
            log.info("exported Hugging Face weights to %s", result.export_dir)
        if config.eval.at_end and self.dev_sets:
            reports = _evaluate_dev_sets(engine, self.tokenizer, self.causal, self.dev_sets, config, self.step,
                                         writer, self.run.eval_dir(), log)
            result.eval = reports.get(HELD_OUT)
        if writer is not None:
            writer.close()
        return result

    def _save(self, loss: float, data: DataState | None = None) -> None:
        _save(self.engine, self.config, self.out, self.step, self.consumed, self.micro_steps,
              data or self.batches.state(), loss, self.log, self.total_steps)
        self.last_saved = self.step

    def _stop_for_teacher(self, err: TeacherUnavailable, consumed: int, micro_steps: int, mark: tuple,
                          rng: dict) -> NoReturn:
        """Every rank: checkpoint the last finished step as it stood before this step's micro-batches (weights and
        optimizer are untouched until the step ends; the data position and RNG streams are put back), then stop
        with one line. Rerunning resumes there and takes this step again, exactly."""
        self.consumed, self.micro_steps = consumed, micro_steps
        restore_rng(rng)
        if self.step > 0 and self.last_saved != self.step:
            self._save(self.losses[-1] if self.losses else float("nan"), BatchStream.state_at(mark))
        if not self.engine.is_main:  # rank 0 prints the one line; the others stop with its exit code
            raise SystemExit(err.exit_code)
        if self.step > 0:
            where = f"checkpoint step {self.step} is saved; rerun the same command to resume from it"
        else:
            where = "no step had finished, so there is nothing to resume: rerun the same command"
        raise TeacherUnavailable(f"{err} during step {self.step + 1}; {where}") from None


def _resume(engine: Engine, config: RunConfig, out: Path, latest, order: LengthGroupedBatches,
            log) -> tuple[int, int, int, DataState]:
    """Load the newest complete checkpoint, on any world size; returns (optimizer step, samples, global micro-steps,
    data state).

    A checkpoint written by another number of ranks is converted to a universal checkpoint. The data carries
    over as the epoch's unconsumed samples in their sequence (``DataState``), re-cut into this world size's
    micro-steps, so no sample of the epoch is skipped or repeated.
    """
    t = config.train
    saved_world = int(latest.meta.get("world_size", engine.world_size))
    resharded = saved_world != engine.world_size
    if resharded:
        log.info("checkpoint step %d was written by %d rank%s; converting to a universal checkpoint for %d "
                 "rank%s", latest.step, saved_world, "s" * (saved_world > 1), engine.world_size,
                 "s" * (engine.world_size > 1))
    state = engine.load_checkpoint(latest.path, ckpt.TAG, saved_world_size=saved_world)
    step = int(state["step"])
    if engine.optimizer_on_nvme and engine.is_main:
        log.warning("resumed with the optimizer on NVMe: DeepSpeed (0.19.8 measured) restarts Adam's moments at "
                    "zero after such a resume (its purge_state marks the swapped states absent), so steps after "
                    "%d differ from an uninterrupted run (docs/BENCHMARKS.md); weights, step and schedule carry "
                    "over", step)
    saved_ds = state.get("ds_config") or {}
    saved = ckpt.load_data_state(latest.path)
    if saved is not None:
        data = DataState.from_json(saved)
    else:  # written before data states were saved: replay the saving job's own batch order
        before = order.relaid(saved_world, int(saved_ds.get("train_micro_batch_size_per_gpu", order.micro)))
        data = before.position(int(state["micro_step"]))
    if resharded:
        saved_batch = int(saved_ds.get("train_batch_size", 0))
        batch = t.micro_batch_size * t.gradient_accumulation * engine.world_size
        if engine.is_main and saved_batch and saved_batch != batch:
            log.warning("the global batch changes from %d to %d samples per optimizer step (micro batch x "
                        "gradient accumulation x %d ranks); set train.gradient_accumulation to keep it",
                        saved_batch, batch, engine.world_size)
        missing = ckpt.missing_rng_ranks(latest.path, engine.world_size)
        if missing:
            log.info("rank%s %s had no saved RNG state (the checkpoint has %d): fresh streams seeded from "
                     "train.seed, the step and the rank", "s" * (len(missing) > 1),
                     ", ".join(map(str, missing)), saved_world)
    if not ckpt.load_rng(latest.path, engine.rank):
        seed_everything(t.seed + 1_000_003 * step + engine.rank)
        if not resharded:
            log.warning("checkpoint %s has no RNG state for rank %d; its streams restart from a fresh seed",
                        latest.path, engine.rank)
    log.info("resumed from %s (step %d, epoch %d with %d samples left)", latest.path, step, data.epoch,
             len(data.remaining))
    samples = int(state.get("samples", latest.meta.get("samples", 0)))
    # Counted, not derived from the samples: a resume on another world size neither repeats nor skips an index.
    micro_steps = int(latest.meta.get("micro_steps", samples // order.global_batch))
    return step, samples, micro_steps, data


def _teacher_fn(config: RunConfig, tokenizer, examples: list) -> Callable:
    """The per-token teacher distributions, for an objective that needs them (distribution matching)."""
    if not any(e.teacher_tokens for e in examples):
        raise ConfigError("train.kd_weight > 0 but no training example carries teacher log-probs; build the data "
                          "with sampling.logprobs > 0 (cotdistill build-data) and train on its cot product")
    from cotdistill.alignment import StudentVocab, teacher_targets

    vocab = StudentVocab(tokenizer)
    renormalize = config.train.kd_renormalize
    return lambda teacher_tokens, target_ids: teacher_targets(teacher_tokens, target_ids, tokenizer, vocab,
                                                              renormalize=renormalize)


def _dev_sets(config: RunConfig, train_problems: list, held_out: list) -> list[EvalSet]:
    """The held-out synthetic problems plus ``eval.datasets``, each capped at ``eval.limit`` problems. A
    ``synthetic`` set among them is generated with the run's ``data.synthetic`` settings, as ``cotdistill eval``
    generates it for the run's checkpoints (`cotdistill.runs.with_run_synthetic`), not with the defaults."""
    spec = _eval_spec(config)
    limit = config.eval.limit
    sets = [EvalSet(HELD_OUT, held_out[: limit or len(held_out)], train_problems)] if held_out else []
    if config.eval.datasets:
        request = EvalRunConfig(**vars(eval_spec(spec, strategy=spec.strategy or "answer_only")),
                                model=config.model.name_or_path, datasets=list(config.eval.datasets),
                                data_dir=config.data.data_dir, synthetic=config.data.synthetic)
        sets += resolve_eval_sets(request)
    return sets


def _evaluate_dev_sets(engine: Engine, tokenizer, causal: bool, sets: list[EvalSet], config: RunConfig, step: int,
                       writer, folder: Path, log) -> dict[str, EvalReport]:
    """Collective: accuracy on each dev set with the live engine, evaluated exactly as ``cotdistill eval``
    evaluates the checkpoint (same spec and defaults, same code); TensorBoard eval/<set>/accuracy."""
    spec = _eval_spec(config)
    student = Student(tokenizer, causal, config.model.name_or_path, None,
                      label=f"{config.output_dir} at step {step} (the training engine's weights)")
    reports = {}
    for dev in sets:
        report = evaluate_set(engine, student, dev, spec, desc=f"eval {dev.name}")
        reports[dev.name] = report
        if engine.is_main:
            report.write(folder / folder_name(dev.name))
            writer.add_scalar(f"eval/{dev.name}/accuracy", report.accuracy, step)
            log.info("step %d %s accuracy (%s, protocol %s): %d/%d = %.1f%%", step, dev.name, spec.strategy,
                     spec.protocol, report.correct, report.total, 100 * report.accuracy)
    return reports


def _save(engine: Engine, config: RunConfig, out: Path, step: int, samples: int, micro_steps: int, data: DataState,
          loss: float, log, total_steps: int) -> None:
    """Collective: write checkpoint ``step``, complete (marker last) or not at all.

    A checkpoint that will not fit is refused before anything is written (its size is the previous
    checkpoint's, or estimated from the parameter counts); one whose write runs out of space anyway is
    removed. Either way every rank stops with one ``error:`` line (``DiskFullError``) and the previous
    complete checkpoint stays.
    """
    folder = ckpt.checkpoint_path(out, step)
    need = ckpt.expected_size(out, engine.checkpoint_size_estimate()) if engine.is_main else 0
    reports = engine.all_gather_objects((need, ckpt.disk_free(folder)))
    need, free = reports[0][0], min(f for _, f in reports)
    if free < need:
        _stop_full_disk(engine, config, out, folder, need, free, ran_out=False)
    if engine.is_main:
        ckpt.prepare_folder(folder)  # before DeepSpeed's makedirs, which must not fail (Engine.save_checkpoint)
    engine.barrier()
    failure = engine.save_checkpoint(folder, ckpt.TAG, {"step": step, "samples": samples})
    if failure is None:
        failure = _attempt(lambda: ckpt.save_rng(folder, engine.rank))
    _agree_saved(engine, config, out, folder, need, free, failure)
    failure = None
    if engine.is_main:
        def finish() -> None:
            ckpt.save_data_state(folder, data.to_json())
            ckpt.mark_complete(folder, {"step": step, "samples": samples, "micro_steps": micro_steps, "loss": loss,
                                        "total_steps": total_steps, "world_size": engine.world_size,
                                        "time": time.time()})
        failure = _attempt(finish)
    _agree_saved(engine, config, out, folder, need, free, failure)
    if engine.is_main:
        removed = ckpt.rotate(out, config.checkpoint.keep_last)
        log.info("checkpoint step %d saved to %s%s", step, folder,
                 f" (removed {len(removed)} older)" if removed else "")
    engine.barrier()


def _attempt(fn: Callable[[], None]) -> Exception | None:
    """Run ``fn``; return its error rather than raise it, so all ranks can first agree on the outcome."""
    try:
        fn()
    except Exception as err:
        return err
    return None


def _agree_saved(engine: Engine, config: RunConfig, out: Path, folder: Path, need: int, free_before: int,
                 failure: Exception | None) -> None:
    """Collective: return when no rank failed writing ``folder``; otherwise remove it and stop every rank.

    A full disk on any rank becomes one ``DiskFullError`` line; any other error is raised again on the rank
    that hit it (the others name that rank).
    """
    mine = None
    if failure is not None:
        full = ckpt.is_full_disk(failure, ckpt.disk_free(folder), need)  # measured before the cleanup frees it
        mine = (engine.rank, full, f"{type(failure).__name__}: {failure}")
    reports = [r for r in engine.all_gather_objects(mine) if r is not None]
    if not reports:
        return
    full_disk = any(full for _, full, _ in reports)
    if full_disk and failure is not None:
        _drop_tracebacks(failure)  # their frames hold torch.save's open file, whose space rmtree can't free
    if engine.is_main:
        shutil.rmtree(folder, ignore_errors=True)  # no COMPLETE marker yet: invisible anyway, now gone too
    engine.barrier()
    if full_disk:
        _stop_full_disk(engine, config, out, folder, need, free_before, ran_out=True, cause=failure)
    if failure is not None:
        raise failure
    rank, _, text = reports[0]
    raise RuntimeError(f"rank {rank} could not write checkpoint {folder}: {text}")


def _drop_tracebacks(err: BaseException) -> None:
    """Let go of the frames an error (and the errors it chains) still reference."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        cause.__traceback__ = None
        cause = cause.__cause__ or cause.__context__


def _stop_full_disk(engine: Engine, config: RunConfig, out: Path, folder: Path, need: int, free: int,
                    ran_out: bool, cause: Exception | None = None) -> None:
    """Every rank stops here together: rank 0 raises the one-line error, the others exit with its code
    quietly (each would otherwise print the same line again)."""
    if not engine.is_main:
        raise SystemExit(2)
    raise ckpt.DiskFullError(ckpt.full_disk_message(folder, need, free, ckpt.latest_checkpoint(out),
                                                    config.checkpoint.keep_last, ran_out=ran_out)) from cause


def _forget_logged_steps_after(path: Path, step: int) -> int:
    """Keep one row per step up to ``step`` (the one training resumes after); return how many rows went.

    Called at every start: steps after the checkpoint (all of them without one) are trained again, and a
    run killed mid-write leaves a torn last line that is dropped here rather than breaking the next run
    (or gluing the next row onto it). A step logged twice by an older version keeps its last row.
    """
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    rows: dict[int, str] = {}
    for line in lines:
        try:
            row = json.loads(line)
            logged = int(row["step"])
        except (ValueError, TypeError, KeyError):  # torn (kill -9 mid-write) or blank
            continue
        if logged <= step:
            rows[logged] = line
    kept = [rows[s] for s in sorted(rows)]
    if kept != lines or not text.endswith("\n"):  # a last row without its newline would take the next one
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(row + "\n" for row in kept), encoding="utf-8")
        os.replace(tmp, path)
    return len(lines) - len(kept)


def _tensorboard(run: RunFolder, config: RunConfig, step: int):
    """The run's TensorBoard writer; events of steps after ``step`` from earlier starts are purged (trained
    again), as in the JSONL log."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.tensorboard), purge_step=step + 1)
    writer.add_text("config", "```yaml\n" + to_yaml(config) + "\n```")
    run.config_file.write_text(to_yaml(config), encoding="utf-8")
    return writer


def _progress_bar(engine: Engine, total: int, initial: int):
    if not engine.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
