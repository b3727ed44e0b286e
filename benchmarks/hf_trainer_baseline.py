"""The Hugging Face Trainer baseline for benchmarks/train_throughput.py, trained exactly like a cotdistill run.

Launch it like our trainer, with the same recipe and overrides:

    deepspeed --num_gpus 2 benchmarks/hf_trainer_baseline.py --config recipes/demo-t5-synthetic.yaml \
        model.name_or_path=runs/tiny-t5 output_dir=runs/hf-baseline train.max_steps=40

What is identical to `launchers/train.py`: the config (`cotdistill.config.load_config`), the problems
(`load_run_problems`), the formatted examples (`run_examples`: the same seed, demo pool and
mixture), the tokenized examples (`tokenize_examples`: same sources, targets, truncation, -100 over a
causal prompt), the tokenizer and the saved random-init model folder (`from_pretrained` in the training
precision under the live ZeRO-3 config, so it is partitioned at load), the DeepSpeed JSON template (the
Trainer fills its "auto" values itself from the arguments below: batch sizes, clipping, lr, betas, eps,
weight decay, bf16, and the ZeRO bucket sizes from the hidden size with the same rules as
`cotdistill.ds_config`), micro-batch, gradient accumulation, max_steps, lr, warmup, schedule, weight decay,
clipping, seed and precision. One thread per rank, by the rule cotdistill's Engine applies
(`share_cpu_threads`: the usable cores split among the node's ranks; OMP_NUM_THREADS wins if set); two
ranks on two cores that each start a thread per core slow both trainers down many times.

Everything else is the Trainer's default: `Seq2SeqTrainer` with `DataCollatorForSeq2Seq` (dynamic padding
to the longest example of each micro-batch, labels padded with -100; a T5 gets its decoder_input_ids from the
collator, a GPT-2 gets the causal examples as tokenized, with -100 over the prompt), a random sampler
without length grouping (`train_sampling_strategy="random"`, the default), the model's own loss averaged
over the target tokens of all ranks (`average_tokens_across_devices=True`, the default; our trainer averages
each rank's micro-batch and DeepSpeed averages the gradients; T5's own loss is computed on bf16 logits, where
ours upcasts them to fp32), `save_strategy="no"`, `report_to=[]`, `logging_steps=1`, the default progress bar.

The schedule: cotdistill's cosine-to-`min_lr_ratio` is the Trainer's "cosine_with_min_lr" with
`min_lr_rate`, "constant" is "constant_with_warmup", and "linear" is "linear" (only with min_lr_ratio 0,
since the Trainer's linear decay ends at 0). One difference is left: the Trainer's warmup gives the first
update lr 0 and reaches the peak at step `warmup_steps`, ours gives the first update peak/warmup and reaches
the peak one step earlier.

On a CUDA machine the Trainer runs on the GPUs with NCCL, as DeepSpeed and our Engine do there; everything
below is for CPU-only machines.

DeepSpeed on CPU with transformers 5.23 (and accelerate 1.15), what is needed and why:
- `use_cpu=True`. Without it `TrainingArguments(bf16=True)` stops at once: "Your setup doesn't support
  bf16/gpu. You need to assign use_cpu if you want to train the model on CPU."
- `ddp_backend="gloo"`. With `use_cpu` the Trainer's PartialState is a multi-CPU one, which starts the
  torch.distributed group from the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) with MPI where
  torch has it and gloo otherwise; gloo is what our Engine uses.
- `deepspeed.init_distributed()` right after TrainingArguments and before `from_pretrained`. The multi-CPU
  state never starts DeepSpeed's own comm layer (accelerate does that only on its accelerator path), so
  ZeRO-3's `zero.Init` inside `from_pretrained` sees a world of 1 and rejects the batch sizes the Trainer
  filled in for 2 ranks ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step *
  world_size 32 != 16 * 1 * 1"). Called then, DeepSpeed adopts the existing gloo group.
- Nothing else: the Accelerator the Trainer builds still switches to DeepSpeed because the
  `deepspeed_plugin` from `TrainingArguments(deepspeed=...)` is set, so the model is wrapped in a
  DeepSpeedEngine with ZeRO-3 and DeepSpeedCPUAdam (printed at the end of a run), mixed precision is left to
  DeepSpeed's bf16 (no autocast), and `use_cpu` turns dataloader pin memory off.
DeepSpeed's CPU shared-memory all-reduce op is kept out of the process group, as cotdistill's Engine does:
nothing uses it, and it leaves buffers in /dev/shm that broke a later job on the same port.

Written per optimizer step to `<output_dir>/train_log.jsonl` (rank 0), like our trainer's log: `step`,
`loss` (the mean target-token loss over both ranks: the Trainer's logged loss, divided by the number of
ranks for T5, see `trainer_loss_scale`), `trainer_loss` (as logged), `lr` (after the step's scheduler step,
so the next update's), `grad_norm`, `samples`,
`real_tokens` and `token_slots` (summed over ranks and micro-batches, counted on the collated batches with
`cotdistill.batching.padding_stats`, the definition our trainer logs), `samples_per_s`, `tokens_per_s`,
`padding_fraction`, `step_time_s` (from the previous step's log to this step's end), `time` (unix time at
the step's end, taken in a TrainerCallback's on_step_end), `examples` ([source, target] tokens of every
example of the step) and `shapes` ([rows, input width, label width] of every padded micro-batch).

The final weights, with `checkpoint.export_final` (the default, as for our trainer), after `trainer.train()`
returned (after the last step's log row, so outside the benchmark's measured window): `<output_dir>/final`, a
Hugging Face folder (`from_pretrained`) written the way our trainer exports (`cotdistill.export.export_from_engine`):
every ZeRO-3 partitioned parameter gathered in turn (`deepspeed.zero.GatheredParameters`, all ranks) onto rank 0's
CPU, which writes them with `cotdistill.export.write_hf_folder` (`save_pretrained` with that state dict, plus the
tokenizer). These are the weights the model held and trained with (bf16 under bf16 training), not a copy of
the fp32 master weights. `trainer.save_model()` would not do: with `stage3_gather_16bit_weights_on_model_save:
false` in the template it writes no consolidated weights.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path
from typing import Any

import torch

HF_SCHEDULES = {"cosine": "cosine_with_min_lr", "constant": "constant_with_warmup", "linear": "linear"}


class CountingCollator:
    """`DataCollatorForSeq2Seq` that remembers what each batch it pads holds, for the step log.

    Per batch: real tokens and token slots (`cotdistill.batching.padding_stats`), the examples' (source,
    target) token counts (a causal example's source is its prompt, the positions labelled -100) and the
    padded shape (rows, input width, label width), from which the benchmark counts useful and hardware FLOPs.
    The Trainer's dataloader collates ahead of the step that consumes a batch (accelerate keeps one batch in
    hand and the Trainer fetches a whole accumulation window at once), but always in training order, so the
    records wait in a FIFO queue until the step that used them ends.
    """

    def __init__(self, collator: Any, causal: bool) -> None:
        self.collator = collator
        self.causal = causal
        self.queue: collections.deque[dict[str, Any]] = collections.deque()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from cotdistill.batching import padding_stats

        batch = self.collator(features)
        real, slots = padding_stats(batch, self.causal)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        targets = (batch["labels"] != -100).sum(dim=1).tolist()
        examples = [[n - t, t] if self.causal else [n, t] for n, t in zip(lengths, targets, strict=True)]
        shape = [len(features), batch["input_ids"].shape[1], batch["labels"].shape[1]]
        self.queue.append({"real": real, "slots": slots, "samples": len(features), "examples": examples,
                           "shapes": [shape]})
        return batch

    def take(self, batches: int) -> dict[str, Any]:
        """The records of the next `batches` collated batches (one optimizer step's micro-batches), merged."""
        merged: dict[str, Any] = {"real": 0, "slots": 0, "samples": 0, "examples": [], "shapes": []}
        for _ in range(batches):
            for key, value in self.queue.popleft().items():
                merged[key] += value
        return merged


def cotdistill_order(config: Any, tokenized: list, causal: bool, world_size: int) -> list[int]:
    """Example indices in the order the Trainer must draw them to train on our trainer's exact batches.

    Our trainer gives rank r the r-th micro-batch of every global micro-step (`run_batch_order`, the order
    `launchers/train.py` streams from step 0). accelerate hands a sampler's consecutive batches of
    `per_device_train_batch_size` to ranks 0, 1, ... in turn, so laying each micro-step's per-rank batches end
    to end, rank by rank, gives every rank of the Trainer the very examples our rank of the same number gets.
    Used to take batch-order noise out of a loss comparison: both trainers then see identical batches.
    """
    from transformers import AutoConfig

    from cotdistill.batching import run_batch_order
    from cotdistill.packed_attention import can_pack

    t = config.train
    pack = t.pack_sequences and can_pack(AutoConfig.from_pretrained(config.model.name_or_path))
    order = run_batch_order(tokenized, causal, world_size, t, config.data.single_format_batches, pack)
    stream = order.stream(order.position(0))
    indices: list[int] = []
    for _ in range(t.max_steps * t.gradient_accumulation):
        per_rank = stream.next_step()
        if any(len(batch) != t.micro_batch_size for batch in per_rank):
            raise SystemExit("--batch_order cotdistill needs full micro-batches (accelerate deals them out by size)")
        for batch in per_rank:
            indices += batch
    return indices


def with_sampler(trainer_class: type, indices: list[int]) -> type:
    """A Trainer subclass whose training sampler yields `indices` in this order (the same on every rank)."""

    class FixedOrder(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(indices)

        def __len__(self) -> int:
            return len(indices)

    class FixedOrderTrainer(trainer_class):
        def _get_train_sampler(self, *args: Any, **kwargs: Any):
            return FixedOrder()

    return FixedOrderTrainer


def step_logger(collator: CountingCollator, path: Path, rank: int, loss_divisor: float = 1.0):
    """A TrainerCallback writing one JSON row per optimizer step (rank 0 writes; every rank gathers).

    `loss` is the Trainer's logged loss divided by `loss_divisor` (see `trainer_loss_scale`); the logged
    value itself is kept as `trainer_loss`.
    """
    import torch.distributed as dist
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.time()
            self.pending: dict[int, dict[str, Any]] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.time()
            mine = collator.take(args.gradient_accumulation_steps)
            parts = [mine]
            if dist.is_initialized() and dist.get_world_size() > 1:
                parts = [None] * dist.get_world_size()
                dist.all_gather_object(parts, mine)
            real = sum(p["real"] for p in parts)
            slots = sum(p["slots"] for p in parts)
            samples = sum(p["samples"] for p in parts)
            elapsed = now - self.last
            self.pending[state.global_step] = {
                "step": state.global_step, "samples": samples, "real_tokens": real, "token_slots": slots,
                "samples_per_s": samples / elapsed, "tokens_per_s": real / elapsed,
                "padding_fraction": 1.0 - real / max(slots, 1), "step_time_s": elapsed, "time": now,
                "examples": [e for p in parts for e in p["examples"]],
                "shapes": [s for p in parts for s in p["shapes"]]}
            self.last = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            row = self.pending.pop(state.global_step, None)
            if row is None or not logs or "loss" not in logs:
                return
            row["trainer_loss"] = float(logs["loss"])
            row["loss"] = row["trainer_loss"] / loss_divisor
            row["lr"] = float(logs.get("learning_rate", float("nan")))
            row["grad_norm"] = float(logs.get("grad_norm", float("nan")))
            if rank == 0:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
            self.last = time.time()  # the Trainer's logging belongs to the next step's time, as ours does

    return StepLog()


def trainer_loss_scale(trainer: Any, model_type: str) -> float:
    """How many times the mean token loss the Trainer logs (and back-propagates) for this model.

    With `average_tokens_across_devices` (default) the Trainer passes `num_items_in_batch` (the target tokens of
    all ranks) to any model whose forward takes **kwargs and multiplies the returned loss by the number of
    processes, expecting a sum divided by that global count. T5's forward (transformers 5.23) takes **kwargs but
    ignores it and returns its own micro-batch mean (CrossEntropyLoss inline), so on N ranks the loss the Trainer
    logs, and the gradient before clipping, are N times the mean: 12.0 instead of 6.0 = ln V at step 1 on 2 ranks.
    GPT-2's loss function uses the count, so its logged loss is the true token-weighted mean.
    """
    scaled = (trainer.args.average_tokens_across_devices and trainer.model_accepts_loss_kwargs
              and model_type in ("t5", "mt5", "umt5"))
    return float(trainer.accelerator.num_processes) if scaled else 1.0


def export_final(model: torch.nn.Module, tokenizer: Any, folder: Path, rank: int) -> None:
    """Collective: gather the partitioned weights to rank 0, which writes a Hugging Face folder.

    The same steps as cotdistill's `Engine.consolidated_state_dict` + `export_from_engine`: one parameter at a
    time (the extra memory is one tensor), persistent buffers as they are, then `write_hf_folder`.
    """
    import deepspeed
    import torch.distributed as dist

    from cotdistill.export import write_hf_folder

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):  # no-op for unpartitioned ones
            if rank == 0:
                state[name] = param.detach().to("cpu", copy=True)
    if rank == 0:
        persistent = set(model.state_dict(keep_vars=True))
        for name, buffer in model.named_buffers():
            if name in persistent:
                state[name] = buffer.detach().to("cpu", copy=True)
        write_hf_folder(model, state, tokenizer, folder)
    if dist.is_initialized():
        dist.barrier()


def trainer_arguments(config: Any) -> dict[str, Any]:
    """The Trainer's arguments for a cotdistill run config: the same DeepSpeed template, batch sizes, schedule,
    optimizer settings, seed and precision; on a CPU machine the CPU-only settings the module docstring explains."""
    t = config.train
    on_cpu = not torch.cuda.is_available()
    return dict(
        output_dir=str(config.output_dir), deepspeed=config.deepspeed_config, use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu else "nccl", bf16=t.precision == "bf16", fp16=t.precision == "fp16",
        per_device_train_batch_size=t.micro_batch_size, gradient_accumulation_steps=t.gradient_accumulation,
        max_steps=t.max_steps, learning_rate=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.grad_clip,
        warmup_steps=t.warmup_steps, lr_scheduler_type=HF_SCHEDULES[t.schedule],
        lr_scheduler_kwargs={"min_lr_rate": t.min_lr_ratio} if t.schedule == "cosine" else None,
        seed=t.seed, save_strategy="no", report_to=[], logging_steps=1)


def train_and_export(trainer: Any, collator: CountingCollator, config: Any, tokenizer: Any, rank: int,
                     loss_scale: float = 1.0) -> tuple[Any, Path | None]:
    """Train with the step log, then (checkpoint.export_final) write <output_dir>/final outside the timed steps."""
    out = Path(config.output_dir)
    trainer.add_callback(step_logger(collator, out / "train_log.jsonl", rank, loss_scale))
    result = trainer.train()
    final = None
    if config.checkpoint.export_final:
        final = out / "final"
        export_final(getattr(trainer.model_wrapped, "module", trainer.model), tokenizer, final, rank)
    return result, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML recipe (recipes/*.yaml), as for launchers/train.py")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=20")
    parser.add_argument("--batch_order", choices=["trainer", "cotdistill"], default="trainer",
                        help="trainer: the Trainer's own random sampler; cotdistill: exactly the per-rank "
                             "micro-batches our trainer would train on, step by step (see CotdistillOrder)")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the launcher
    args = parser.parse_args()

    from cotdistill.engine import quiet_libraries, share_cpu_threads

    quiet_libraries()
    share_cpu_threads()
    import deepspeed.ops
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    from cotdistill.batching import tokenize_examples
    from cotdistill.config import load_config
    from cotdistill.errors import ConfigError
    from cotdistill.modeling import detect_kind, load_tokenizer
    from cotdistill.run_data import load_run_problems, run_examples

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    config = load_config(args.config, args.overrides)
    t = config.train
    if t.kd_weight > 0 or t.loss_weights or config.data.single_format_batches:
        raise ConfigError("the baseline trains plain NLL on mixed batches: no kd_weight, loss_weights or "
                          "single_format_batches")
    if t.schedule == "linear" and t.min_lr_ratio:
        raise ConfigError("the Trainer's linear schedule decays to 0: use train.min_lr_ratio=0 with it")
    if not t.max_steps:
        raise ConfigError("set train.max_steps (the benchmark compares a fixed number of optimizer steps)")
    model_path = config.model.name_or_path
    if not Path(model_path).exists():
        raise ConfigError(f"{model_path} does not exist: save the model first (the baseline never builds one)")

    problems, _ = load_run_problems(config.data)
    examples = run_examples(config, problems)
    kind = config.model.kind if config.model.kind != "auto" else detect_kind(model_path)
    causal = kind == "causal"
    tokenizer = load_tokenizer(model_path)
    tokenized, _ = tokenize_examples(examples, tokenizer, causal, config.data.max_source_tokens,
                                     config.data.max_target_tokens)
    dataset = Dataset.from_dict({"input_ids": [list(e.input_ids) for e in tokenized],
                                 "attention_mask": [[1] * len(e.input_ids) for e in tokenized],
                                 "labels": [list(e.labels) for e in tokenized]})

    out = Path(config.output_dir)
    training_args = Seq2SeqTrainingArguments(**trainer_arguments(config))
    backend = training_args.ddp_backend
    rank = training_args.process_index
    # accelerate's multi-CPU state has started torch.distributed (gloo); DeepSpeed's own comm layer must adopt
    # that group before ZeRO-3 builds the model, or zero.Init sees a world of 1 and rejects the batch sizes.
    deepspeed.init_distributed(dist_backend=backend)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_log.jsonl").unlink(missing_ok=True)
    # After TrainingArguments: its DeepSpeed config is alive, so ZeRO-3 partitions the weights as they load.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[t.precision]
    auto_class = AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM
    model = auto_class.from_pretrained(model_path, dtype=dtype)
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100), causal)
    trainer_class = Seq2SeqTrainer
    if args.batch_order == "cotdistill":
        trainer_class = with_sampler(Seq2SeqTrainer, cotdistill_order(config, tokenized, causal,
                                                                      training_args.world_size))
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                            processing_class=tokenizer)
    loss_scale = trainer_loss_scale(trainer, model.config.model_type)
    result, final = train_and_export(trainer, collator, config, tokenizer, rank, loss_scale)
    if rank == 0:
        engine = trainer.model_wrapped
        print(json.dumps({"steps": result.global_step, "train_loss": result.training_loss,
                          "final": str(final) if final else None,
                          "world_size": training_args.world_size, "threads": torch.get_num_threads(),
                          "logged_loss_scale": loss_scale,
                          "engine": type(engine).__name__,
                          "zero_stage": getattr(engine, "zero_optimization_stage", lambda: None)(),
                          "optimizer": type(getattr(engine, "optimizer", None)).__name__,
                          "basic_optimizer": type(getattr(engine, "basic_optimizer", None)).__name__}),
              flush=True)


if __name__ == "__main__":
    main()
