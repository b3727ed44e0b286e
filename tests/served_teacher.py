"""A real small model behind the fake OpenAI server's ``echo`` (for tests): the served teacher is a real model.

``model_echo_scorer`` answers ``completions`` with ``echo=true, max_tokens=0, logprobs=k`` as vLLM does: every
token of the text with its decoded text, its log-probability (None for the first token, which nothing predicts),
the top k as ``{text: log-prob}`` and ``text_offset`` as the running length of the token texts.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cotdistill.teacher.hf_local import alternative_text


def model_echo_scorer(model_dir: str | Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    lock = threading.Lock()  # the server is threaded; one forward at a time keeps CPU threads for the ranks

    def score(text: str, k: int) -> dict[str, Any]:
        ids = tokenizer(text)["input_ids"]
        with lock, torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        vocab = len(tokenizer)
        tokens, values, tops, offsets, at = [], [], [], [], 0
        for position, token in enumerate(ids):
            previous = ids[position - 1] if position else None
            piece = alternative_text(tokenizer, previous, token)
            tokens.append(piece)
            offsets.append(at)
            at += len(piece)
            if position == 0:
                values.append(None)
                tops.append(None)
                continue
            row = logp[position - 1]
            values.append(float(row[token]))
            best = row[:vocab].topk(min(k, vocab))
            tops.append({alternative_text(tokenizer, previous, int(i)): float(v)
                         for i, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)})
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    return score
