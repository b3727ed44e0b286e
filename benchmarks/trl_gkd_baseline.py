"""TRL's GKD trainer (trl.experimental.gkd, TRL 1.16) trained like a cotdistill on-policy run, for
benchmarks/on_policy_vs_trl.py (issue 18 item 7).

Launch it like our trainer, with the same recipe and overrides (train.objective=on_policy and its
train.on_policy.* keys):

    deepspeed --num_gpus 2 benchmarks/trl_gkd_baseline.py --config recipes/demo-gpt2-synthetic.yaml \
        model.name_or_path=runs/student output_dir=runs/trl-gkd train.max_steps=40 train.objective=on_policy \
        train.on_policy.teacher.model=runs/demo-gpt2/final

The same as `launchers/train.py` (as in benchmarks/hf_trainer_baseline.py, whose helpers this reuses): the
config, problems, formatted and tokenized examples (prompt, then target + EOS, the loss on the target), the
saved student folder, the DeepSpeed template (ZeRO-3, filled in by the Trainer), micro-batch, accumulation,
max_steps, lr, warmup, schedule, weight decay, clipping, seed, precision, and our trainer's exact per-rank
micro-batches (`cotdistill_order`). The on-policy settings map one to one: `lmbda` (TRL draws
`random.random() <= lmbda` per micro-batch with the Trainer's seed; ours draws per micro-step from
train.seed), `beta`, `temperature`, `max_new_tokens` (ancestral sampling, top_k 0, top_p 1, both).

What is TRL's own and differs from ours: the teacher is a second model in the same job under the same ZeRO-3
config (partitioned, `prepare_deepspeed`); generation gathers the student's whole weights for the call
(`unwrap_model_for_generation`); the divergence is over the full vocabulary (ours: the teacher's top-k plus a
tail bucket) and needs the teacher's vocabulary to be the student's (so the benchmark's pair shares one
tokenizer); the loss is divided by the data's completion tokens even on on-policy micro-batches. The examples
reach TRL's `DataCollatorForChatML` already tokenized (`input_ids`, `completion_mask`), so no chat template is
involved and the prompts are byte-for-byte ours. CPU notes of hf_trainer_baseline.py apply (use_cpu, gloo,
deepspeed.init_distributed before from_pretrained); gradient checkpointing stays off.

Written per optimizer step to `<output_dir>/train_log.jsonl` (rank 0) like the HF baseline (`samples`,
`samples_per_s`, `step_time_s`, `loss` = TRL's logged divergence, ...), and the final weights to
`<output_dir>/final` (gathered to rank 0 after training, outside the timed steps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_trainer_baseline import (  # noqa: E402
    CountingCollator,
    cotdistill_order,
    train_and_export,
    trainer_arguments,
    with_sampler,
)


def gkd_rows(tokenized: list, prompts: list[str]) -> dict[str, list]:
    """TRL's pre-tokenized GKD examples: the ids, an attention mask, and a completion mask that is 1 exactly
    where our causal example is labelled (target and EOS)."""
    rows: dict[str, list] = {"prompt": [], "input_ids": [], "attention_mask": [], "completion_mask": []}
    for example, prompt in zip(tokenized, prompts, strict=True):
        labels = list(example.labels)
        if len(labels) != len(example.input_ids) or all(label == -100 for label in labels):
            raise ValueError("a causal example with labels aligned to its ids and a target is needed")
        rows["prompt"].append(prompt)
        rows["input_ids"].append(list(example.input_ids))
        rows["attention_mask"].append([1] * len(example.input_ids))
        rows["completion_mask"].append([0 if label == -100 else 1 for label in labels])
    return rows


def fill_positions_from_mask(model: torch.nn.Module) -> None:
    """Make ``model`` count positions from each row's first real token on a full forward that passes a mask and
    no positions, as TRL's ``compute_loss`` does (``--positions_from_mask``). TRL's collator pads on the left and
    GPT-2 then scores every token of a padded row at a shifted position (benchmarks/trl_padding_positions.py).
    Generation passes its own positions and cached steps are left alone, so only those forwards change."""
    from cotdistill.batching import positions_from_mask

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if (not args and kwargs.get("position_ids") is None and kwargs.get("past_key_values") is None
                and ids is not None and mask is not None and ids.shape == mask.shape):
            kwargs = {**kwargs, "position_ids": positions_from_mask(mask)}
        return args, kwargs

    model.register_forward_pre_hook(hook, with_kwargs=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML recipe (recipes/*.yaml), as for launchers/train.py")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=20")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the launcher
    parser.add_argument("--positions_from_mask", action="store_true",
                        help="student and teacher count positions from each row's first real token in TRL's loss "
                             "forwards (TRL 1.16 does not: its rows are left-padded); off: TRL as it ships")
    args = parser.parse_args()

    from cotdistill.engine import quiet_libraries, share_cpu_threads

    quiet_libraries()
    share_cpu_threads()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import deepspeed.ops
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.experimental.utils import DataCollatorForChatML

    from cotdistill.batching import tokenize_examples
    from cotdistill.config import load_config
    from cotdistill.errors import ConfigError
    from cotdistill.modeling import detect_kind, load_tokenizer
    from cotdistill.run_data import load_run_problems, run_examples

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    config = load_config(args.config, args.overrides)
    t, op = config.train, config.train.on_policy
    if t.objective != "on_policy" or op.teacher.backend != "hf":
        raise ConfigError("the TRL baseline mirrors train.objective=on_policy with a local (hf) teacher")
    if not t.max_steps:
        raise ConfigError("set train.max_steps (the benchmark compares a fixed number of optimizer steps)")
    model_path = config.model.name_or_path
    if detect_kind(model_path) != "causal" or detect_kind(op.teacher.model) != "causal":
        raise ConfigError("TRL's GKD trains causal students from causal teachers")

    problems, _ = load_run_problems(config.data)
    examples = run_examples(config, problems)
    tokenizer = load_tokenizer(model_path)
    tokenized, _ = tokenize_examples(examples, tokenizer, True, config.data.max_source_tokens,
                                     config.data.max_target_tokens)
    dataset = Dataset.from_dict(gkd_rows(tokenized, [e.source for e in examples]))

    out = Path(config.output_dir)
    training_args = GKDConfig(
        **trainer_arguments(config), gradient_checkpointing=False, lmbda=op.lmbda, beta=op.beta,
        temperature=op.temperature, max_new_tokens=op.max_new_tokens,
        max_length=config.data.max_source_tokens + config.data.max_target_tokens + 2)
    backend = training_args.ddp_backend
    rank = training_args.process_index
    deepspeed.init_distributed(dist_backend=backend)  # see hf_trainer_baseline.py: before ZeRO-3 builds models
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_log.jsonl").unlink(missing_ok=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[t.precision]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    teacher = AutoModelForCausalLM.from_pretrained(op.teacher.model, dtype=dtype)
    if args.positions_from_mask:
        fill_positions_from_mask(model)
        fill_positions_from_mask(teacher)
    # the HF baseline's counting wrapper reads TRL's batches too (input_ids, attention_mask, labels)
    collator = CountingCollator(DataCollatorForChatML(tokenizer=tokenizer, max_length=training_args.max_length),
                                causal=True)
    order = cotdistill_order(config, tokenized, True, training_args.world_size)
    trainer = with_sampler(GKDTrainer, order)(model=model, teacher_model=teacher, args=training_args,
                                              train_dataset=dataset, data_collator=collator,
                                              processing_class=tokenizer)
    result, final = train_and_export(trainer, collator, config, tokenizer, rank)
    if rank == 0:
        engine = trainer.model_wrapped
        print(json.dumps({"steps": result.global_step, "train_loss": result.training_loss,
                          "final": str(final) if final else None, "world_size": training_args.world_size,
                          "threads": torch.get_num_threads(), "positions_from_mask": args.positions_from_mask,
                          "engine": type(engine).__name__,
                          "zero_stage": getattr(engine, "zero_optimization_stage", lambda: None)(),
                          "teacher_engine": type(trainer.teacher_model).__name__}), flush=True)


if __name__ == "__main__":
    main()
