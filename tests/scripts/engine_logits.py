"""Logits of a student opened through cotdistill's inference path, saved by rank 0 (for tests).

deepspeed --num_gpus 2 tests/scripts/engine_logits.py [--precision=fp32] TARGET OUT.pt "text one" "text two" ...
    [:: TARGET2 OUT2.pt "text" ...]

Groups after ``::`` are opened one after another in the same job (one launch for several students).

--precision: the inference engine's precision (bf16 | fp16 | fp32; default bf16, as cotdistill eval). In fp32 a
checkpoint's fp32 master weights are loaded as they are, not rounded to 16 bits. Given first in a group
(``:: --precision=fp32 TARGET2 ...``) it sets that group's alone.
"""

import sys

import torch

from cotdistill.batching import padded_prompts
from cotdistill.engine import Engine
from cotdistill.entrypoints import exit_without_teardown
from cotdistill.student import open_student


def take_precision(group: list[str], default: str) -> str:
    """The precision a group starts with (``--precision=fp32``, removed from it), else ``default``."""
    return group.pop(0).split("=", 1)[1] if group and group[0].startswith("--precision=") else default


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    groups = [[]]
    for arg in args:
        if arg == "::":
            groups.append([])
        else:
            groups[-1].append(arg)
    default = take_precision(groups[0], "bf16")
    engine = Engine()
    for group in groups:
        precision = take_precision(group, default)
        target, out, *texts = group
        save_logits(engine, target, out, texts, precision)
        engine.release_model()
    engine.close()


def save_logits(engine: Engine, target: str, out: str, texts: list[str], precision: str) -> None:
    student = open_student(engine, target, precision=precision)
    tok = student.tokenizer
    ids = tok(texts, add_special_tokens=not student.causal)["input_ids"]
    batch = padded_prompts(ids, tok.pad_token_id, left=True)
    if not student.causal:
        batch["decoder_input_ids"] = torch.zeros_like(batch["input_ids"][:, :4]) + tok.pad_token_id
    with torch.no_grad():
        raw = engine.forward(**batch).logits
    logits = raw.float().cpu()
    if engine.is_main:
        torch.save({"logits": logits, "batch": batch, "dtype": str(raw.dtype)}, out)


if __name__ == "__main__":
    exit_without_teardown(main)
