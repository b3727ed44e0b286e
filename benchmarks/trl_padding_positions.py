"""How much TRL's GKD loss forward changes a causal teacher's predictions by ignoring left padding (issue 18 item 7).

TRL's `DataCollatorForChatML` pads every row on the left, and `GKDTrainer.compute_loss` runs the student and the
teacher on `input_ids` and `attention_mask` alone. A model with absolute position embeddings (GPT-2) then takes
positions 0..T-1 from the padded row's first column, so each row's tokens sit `pads` positions later than in
generation (where transformers derives positions from the mask) or in training on unpadded text. This script
measures what that does to a model's predictions on the examples the benchmark trains on: the mean NLL per
completion token and the top-1 agreement with the data, once as TRL's forward sees them (left-padded, positions
from 0) and once with positions from the attention mask (each row as if alone), in two layouts: the collator's
(off-policy micro-batches: whole rows padded on the left) and the on-policy one (prompts padded on the left to the
longest prompt, completions on the right). One CPU process, no DeepSpeed.

    python benchmarks/trl_padding_positions.py --config recipes/demo-gpt2-synthetic.yaml \
        --model runs/experiments/distillation-objectives/prepare/teacher/final [--batches 20] [--batch_size 16]

The model's own tokenizer is used (TRL's pair shares it); the examples are the recipe's training examples
(`run_examples`, `tokenize_examples` as training builds them), in order, `--batch_size` per micro-batch, through
TRL's own collator (pre-tokenized rows, as `benchmarks/trl_gkd_baseline.py` feeds it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_gkd_baseline import gkd_rows  # noqa: E402


def completion_scores(model, batch: dict[str, torch.Tensor], positions: torch.Tensor | None) -> tuple[float, int, int]:
    """(summed NLL, tokens, top-1 hits) over the labelled (completion) tokens of one collated batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=positions).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logp = logits.log_softmax(-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    hits = (logits.argmax(-1) == labels) & mask
    return float(-(picked * mask).sum()), int(mask.sum()), int(hits.sum())


def on_policy_layout(batch_rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """The layout of TRL's on-policy micro-batches (`generate_on_policy_outputs`): prompts padded on the left to
    the batch's longest prompt, then each completion, padded on the right; labels on the completion only."""
    prompts = [[t for t, c in zip(r["input_ids"], r["completion_mask"], strict=True) if not c] for r in batch_rows]
    completions = [[t for t, c in zip(r["input_ids"], r["completion_mask"], strict=True) if c] for r in batch_rows]
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    ids, mask, labels = [], [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        left, right = width_p - len(prompt), width_c - len(completion)
        ids.append([pad_id] * left + prompt + completion + [pad_id] * right)
        mask.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
        labels.append([-100] * (width_p) + completion + [-100] * right)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the recipe whose training examples are scored")
    parser.add_argument("--model", required=True, help="a causal Hugging Face folder (the teacher, say)")
    parser.add_argument("--batches", type=int, default=20, help="micro-batches scored")
    parser.add_argument("--batch_size", type=int, default=16, help="rows per micro-batch (the bench's: 16)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of the recipe")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM
    from trl.experimental.utils import DataCollatorForChatML

    from cotdistill.batching import positions_from_mask, tokenize_examples
    from cotdistill.config import load_config
    from cotdistill.modeling import load_tokenizer
    from cotdistill.run_data import load_run_problems, run_examples

    config = load_config(args.config, [*args.overrides, f"model.name_or_path={args.model}"])
    problems, _ = load_run_problems(config.data)
    examples = run_examples(config, problems)[:args.batches * args.batch_size]
    tokenizer = load_tokenizer(args.model)
    tokenized, _ = tokenize_examples(examples, tokenizer, True, config.data.max_source_tokens,
                                     config.data.max_target_tokens)
    rows = gkd_rows(tokenized, [e.source for e in examples])
    collator = DataCollatorForChatML(tokenizer=tokenizer,
                                     max_length=config.data.max_source_tokens + config.data.max_target_tokens + 2)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    report: dict[str, object] = {}
    with torch.inference_mode():
        for layout in ("data_batches", "on_policy_batches"):
            totals = {"trl": [0.0, 0, 0], "mask_positions": [0.0, 0, 0]}
            pads: list[int] = []
            for start in range(0, len(examples), args.batch_size):
                chunk = [{key: rows[key][i] for key in rows}
                         for i in range(start, min(start + args.batch_size, len(examples)))]
                batch = collator(chunk) if layout == "data_batches" else \
                    on_policy_layout(chunk, tokenizer.pad_token_id)
                mask = batch["attention_mask"]
                pads += (mask.cumsum(-1) == 0).sum(1).tolist()  # left pads: before the row's first real token
                from_mask = positions_from_mask(mask)
                for name, positions in (("trl", None), ("mask_positions", from_mask)):
                    nll, tokens, hits = completion_scores(model, batch, positions)
                    totals[name] = [totals[name][0] + nll, totals[name][1] + tokens, totals[name][2] + hits]
            report[layout] = {
                **{name: {"nll_per_token": round(nll / tokens, 4), "top1": round(hits / tokens, 4), "tokens": tokens}
                   for name, (nll, tokens, hits) in totals.items()},
                "rows": len(pads), "left_pads_mean": round(sum(pads) / len(pads), 2),
                "rows_padded": sum(1 for p in pads if p)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
