"""Held-out loss of saved models on examples no training run saw, for benchmarks/train_throughput.py.

One plain CPU process, no DeepSpeed: every model given with --model NAME=FOLDER (a Hugging Face folder) is
scored on the same held-out examples, and the token-weighted mean NLL over all their target tokens is reported.

    python benchmarks/heldout_loss.py --size 256 --model initial=runs/bench-train/tiny-t5/model \
        --model ours=runs/bench-train/tiny-t5/ours/final --model hf=runs/bench-train/tiny-t5/hf/final \
        --out heldout.json --config recipes/demo-t5-synthetic.yaml <the training run's overrides>

The held-out problems (`heldout_problems`) come from the run's own config:
- synthetic data: the recipe's held-out problems (`load_run_problems`' second list: a disjoint generator seed,
  no question equal to a training question); the first --size of them (data.synthetic.eval_size must be at
  least --size; the benchmark sets it, and data.synthetic.eval_steps=0 so that they follow the training
  distribution of steps, neither of which changes the training problems).
- a named data set (GSM8K teacher traces): training uses the first data.limit problems of the file, the held-out
  set is the --size problems right after them (data.limit must leave that many); no held-out question may equal
  a training question.
They become examples and tokens exactly as training builds them (`build_examples` with the run's mixture, seed and
k-shot, demos from the training problems; `tokenize_examples` with the run's tokenizer and truncation limits).

Held-out loss: sum over the held-out batches of `cotdistill.objectives.mean_token_nll` x its target-token count,
divided by the total count: the mean NLL per target token (a causal model's prompt positions excluded, as in
training), the definition our trainer's logged loss uses. Batches of --batch_size examples sorted by length,
padded with `cotdistill.batching.collate` (T5: decoder inputs from the labels), models in eval mode (no dropout).
Precision: every model's weights are loaded in the training precision (train.precision: bf16 for the
benchmark's workloads), which is what both trainers hold and export (the initial model rounded as both trainers
load it), then upcast exactly to fp32; the forward pass and the log-softmax run in fp32.

The JSON (--out) holds, per model: loss, target tokens, seconds, and how many weight tensors differ from the
first model's (so a trained model that equals the initial one shows up).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cotdistill.entrypoints import run_or_exit
from cotdistill.outputs import check_output_file


def heldout_problems(config, size: int) -> tuple[list, list]:
    """(training problems, the first `size` held-out problems) of a run config; see the module docstring."""
    from cotdistill.errors import DataError
    from cotdistill.run_data import load_run_problems

    data = config.data
    if data.dataset == "synthetic":
        train, held_out = load_run_problems(data)
        if len(held_out) < size:
            raise DataError(f"data.synthetic.eval_size={data.synthetic.eval_size} < held-out size {size}")
        held_out = held_out[:size]
    else:
        if not data.limit:
            raise DataError(f"data.dataset={data.dataset}: set data.limit so that training leaves problems out")
        everything, _ = load_run_problems(replace(data, limit=0))
        train, held_out = everything[: data.limit], everything[data.limit: data.limit + size]
        if len(held_out) < size:
            raise DataError(f"only {len(held_out)} problems after data.limit={data.limit} (of {len(everything)}); "
                            f"need {size}")
    seen = {p.question.strip() for p in train}
    overlap = sum(p.question.strip() in seen for p in held_out)
    if overlap:
        raise DataError(f"{overlap} held-out questions are also training questions")
    return train, held_out


def heldout_examples(config, size: int, tokenizer, causal: bool) -> list:
    """The held-out problems as tokenized examples, built exactly like the training examples."""
    from cotdistill.batching import tokenize_examples
    from cotdistill.run_data import run_examples

    train, held_out = heldout_problems(config, size)
    examples = run_examples(config, held_out, demo_pool=train)
    tokenized, _ = tokenize_examples(examples, tokenizer, causal, config.data.max_source_tokens,
                                     config.data.max_target_tokens)
    return tokenized


def load_for_eval(folder: str | Path, kind: str, precision: str) -> torch.nn.Module:
    """A saved model with its weights in the training precision, upcast to fp32, in eval mode."""
    from cotdistill.modeling import load_model

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    return load_model(folder, kind, dtype=dtype).float().eval()


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, tokenized: list, causal: bool, pad_id: int,
                 batch_size: int) -> tuple[float, int]:
    """(mean NLL per target token over all of `tokenized`, target tokens)."""
    from cotdistill.batching import collate
    from cotdistill.objectives import mean_token_nll

    ordered = sorted(tokenized, key=lambda e: (len(e.input_ids), len(e.labels)))
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(ordered), batch_size):
        batch = collate(ordered[start: start + batch_size], pad_id)
        labels = batch.pop("labels")
        if not causal:
            batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = model(**batch, use_cache=False).logits
        loss, n = mean_token_nll(logits, labels, causal)
        loss_sum += float(loss) * n
        tokens += n
    return loss_sum / max(tokens, 1), tokens


def weights_changed(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> tuple[int, int, float]:
    """(tensors that differ from `reference`, tensors compared, largest absolute difference)."""
    changed = compared = 0
    largest = 0.0
    for name, tensor in model.state_dict().items():
        if name not in reference:
            continue
        compared += 1
        diff = float((tensor - reference[name]).abs().max()) if tensor.numel() else 0.0
        changed += diff > 0
        largest = max(largest, diff)
    return changed, compared, largest


def score(config, size: int, models: dict[str, str], batch_size: int) -> dict[str, Any]:
    """Held-out loss of every model (the first one is the weight-change reference)."""
    from cotdistill.modeling import detect_kind, load_tokenizer

    first = next(iter(models.values()))
    kind = config.model.kind if config.model.kind != "auto" else detect_kind(first)
    causal = kind == "causal"
    tokenizer = load_tokenizer(config.model.name_or_path)
    tokenized = heldout_examples(config, size, tokenizer, causal)
    result: dict[str, Any] = {"problems": size, "examples": len(tokenized), "weights": config.train.precision,
                              "compute": "fp32", "batch_size": batch_size, "models": {}}
    reference = None
    for name, folder in models.items():
        started = time.monotonic()
        model = load_for_eval(folder, kind, config.train.precision)
        loss, tokens = heldout_loss(model, tokenized, causal, tokenizer.pad_token_id, batch_size)
        entry = {"path": str(folder), "loss": loss, "target_tokens": tokens}
        if reference is None:
            reference = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            changed, compared, largest = weights_changed(model, reference)
            entry.update(tensors_changed=changed, tensors_compared=compared, largest_weight_change=largest)
        entry["seconds"] = time.monotonic() - started
        result["models"][name] = entry
        del model
    result["target_tokens"] = result["models"][next(iter(models))]["target_tokens"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the training runs' recipe")
    parser.add_argument("--size", type=int, default=256, help="held-out problems")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                        help="a Hugging Face folder to score (repeat; the first is the weight-change reference)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", help="write the result as JSON here (else print it)")
    parser.add_argument("overrides", nargs="*", help="the training runs' key=value overrides")
    args = parser.parse_args()
    if args.out:  # checked now: a missing folder must not cost the whole run
        run_or_exit(lambda: check_output_file(args.out))

    from cotdistill.config import load_config
    from cotdistill.engine import quiet_libraries

    quiet_libraries()
    models = dict(item.split("=", 1) for item in args.model)
    result = score(load_config(args.config, args.overrides), args.size, models, args.batch_size)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


if __name__ == "__main__":
    main()
