"""Logits of a student opened through cotdistill's inference path, saved by rank 0 (for tests).

deepspeed --num_gpus 2 tests/scripts/engine_logits.py TARGET OUT.pt "text one" "text two" ...
"""

import sys

import torch

from cotdistill.batching import padded_prompts
from cotdistill.engine import Engine
from cotdistill.student import open_student


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    target, out, texts = args[0], args[1], args[2:]
    engine = Engine()
    student = open_student(engine, target)
    tok = student.tokenizer
    ids = tok(texts, add_special_tokens=not student.causal)["input_ids"]
    batch = padded_prompts(ids, tok.pad_token_id, left=True)
    if not student.causal:
        batch["decoder_input_ids"] = torch.zeros_like(batch["input_ids"][:, :4]) + tok.pad_token_id
    with torch.no_grad():
        logits = engine.forward(**batch).logits.float().cpu()
    if engine.is_main:
        torch.save({"logits": logits, "batch": batch}, out)
    engine.close()


if __name__ == "__main__":
    main()
