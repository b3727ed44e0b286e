"""Teachers that score given text token by token, for on-policy distillation (``train.objective=on_policy``).

The student writes a completion of a prompt; the teacher reports, for each token of that completion in its own
tokenizer, the token's text, its log-probability and the top-k alternatives there (``TokenLogprob``, the builder's
format). ``cotdistill.alignment.scored_targets`` then maps them onto the student's tokens, whatever its tokenizer.

Backends: ``HFTokenScorer``, a local causal Hugging Face model in the training process (replicated on every rank:
loaded outside ZeRO-3, see ``Engine.outside_zero3``). A served teacher (``openai``: legacy completions with
``echo=True``, ``max_tokens=0``, ``logprobs=k``) is the next backend of this protocol.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from cotdistill.alignment import END_OF_TEXT, TeacherTarget
from cotdistill.cpu_precision import slow_precision_note
from cotdistill.errors import ConfigError
from cotdistill.teacher.hf_local import PRECISIONS, alternative_text, resolve_device
from cotdistill.teacher.types import TeacherError, TokenLogprob

log = logging.getLogger(__name__)


class TokenScorer(Protocol):
    """Scores (prompt, completion) pairs: per pair, the completion's tokens in the teacher's tokenizer.

    ``ended`` says which completions stopped with the student's EOS: a scorer that can, scores its own EOS after
    those and reports it (and its EOS among the alternatives anywhere) with the text `END_OF_TEXT`, so the
    student learns where the teacher would stop."""

    def score(self, pairs: Sequence[tuple[str, str]], top_k: int,
              ended: Sequence[bool] | None = None) -> list[tuple[TokenLogprob, ...]]: ...

    def describe(self) -> dict[str, object]: ...

    def close(self) -> None: ...


def completion_start(prompt_ids: Sequence[int], full_ids: Sequence[int]) -> int:
    """Where the completion's tokens start in the tokenized prompt + completion: after the longest common prefix
    with the prompt's own tokens. A token that merges the prompt's end with the completion's start (a BPE merge
    across the boundary) counts as the completion's, so no completion character goes unscored."""
    common = 0
    for a, b in zip(prompt_ids, full_ids, strict=False):
        if a != b:
            break
        common += 1
    return max(common, 1)  # the first token has no prediction to score


class HFTokenScorer:
    """A local causal checkpoint scoring completions with one teacher-forced forward per batch of pairs."""

    def __init__(self, model: str, device: str = "auto", precision: str = "fp32", batch_size: int = 8,
                 partition_over: Any = None) -> None:
        """``partition_over``: the training `Engine` whose ranks share the teacher's weights with ZeRO-3 (each
        rank holds a slice; every forward gathers them), or None to hold the whole teacher on every rank."""
        from cotdistill.modeling import detect_kind, load_model, load_tokenizer

        if precision not in PRECISIONS:
            raise ConfigError(f"unknown teacher precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if batch_size < 1:
            raise ConfigError(f"the teacher's batch size must be at least 1, got {batch_size}")
        if not Path(model).expanduser().exists() and Path(model).is_absolute():
            raise ConfigError(f"teacher model {model!r} does not exist: no such folder")
        self.model_name, self.batch_size, self.precision = model, batch_size, precision
        self.engine = partition_over
        self.device = partition_over.device if partition_over is not None else resolve_device(device)
        slow = slow_precision_note(self.device.type, precision, "train.on_policy.teacher.precision")
        if slow and os.environ.get("RANK", "0") == "0":  # every rank builds a scorer; one line is enough
            log.warning("%s", slow)
        try:
            kind = detect_kind(model)
            if kind != "causal":
                raise ConfigError(f"teacher {model!r} is a {kind} model: on-policy scoring needs a causal teacher")
            self.tokenizer = load_tokenizer(model, kind)
            if partition_over is None:
                self.model = load_model(model, kind, PRECISIONS[precision])
                self.model.to(self.device)
            else:
                from cotdistill.student import inference_ds_config

                self.model = partition_over.partitioned_inference_model(
                    inference_ds_config(precision, zero_stage=3),
                    lambda: load_model(model, kind, PRECISIONS[precision]))
        except (OSError, TeacherError) as exc:
            raise ConfigError(f"cannot load teacher model {model!r}: {exc}") from exc
        self.model.eval()  # a DeepSpeed engine's eval() returns None: not chained
        self.model.requires_grad_(False)
        self.tokenizer.padding_side = "right"

    def describe(self) -> dict[str, object]:
        facts: dict[str, object] = {"backend": "hf", "model": self.model_name, "device": str(self.device),
                                    "precision": self.precision, "partitioned": self.engine is not None}
        if self.engine is not None:  # what this rank holds of the teacher's weights under ZeRO-3
            params = list(self.model.parameters())
            facts["parameters"] = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
            facts["parameters_held"] = sum(int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else p.numel()
                                           for p in params)
        return facts

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]

    def score(self, pairs: Sequence[tuple[str, str]], top_k: int,
              ended: Sequence[bool] | None = None) -> list[tuple[TokenLogprob, ...]]:
        """Each pair's completion tokens with their log-probs and top-k, in the teacher's tokenizer; the teacher's
        EOS is scored after each completion that ``ended`` (see `TokenScorer`)."""
        flags = list(ended) if ended is not None else [False] * len(pairs)
        return self._in_batches(list(zip(pairs, flags, strict=True)), lambda chunk: self._score_batch(chunk, top_k))

    def shares_vocabulary(self, tokenizer: Any) -> bool:
        """Whether ``tokenizer`` (the student's) is the teacher's: the same tokens at the same ids, the same
        special ids. Then completions are scored as token ids (`score_ids`), with no text round trip."""
        cache = self.__dict__.setdefault("_shares", {})
        if id(tokenizer) not in cache:  # asked every micro-step: compared once per tokenizer
            mine = self.tokenizer
            cache[id(tokenizer)] = (mine.get_vocab() == tokenizer.get_vocab()
                                    and mine.all_special_ids == tokenizer.all_special_ids
                                    and mine.bos_token_id == tokenizer.bos_token_id
                                    and mine.eos_token_id == tokenizer.eos_token_id)
        return cache[id(tokenizer)]

    def score_ids(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                  top_k: int) -> list[list[TeacherTarget | None]]:
        """The teacher's distribution at each completion token, for a student with the teacher's vocabulary: the
        teacher reads the student's very ids (prompt + completion), and each target lists the student's own token
        first with the teacher's probability of it, then the teacher's top-k others. As on the text path
        (`cotdistill.alignment.scored_targets`), special tokens get no target and are no alternative."""
        pairs = list(zip(prompts, completions, strict=True))
        return self._in_batches(pairs, lambda chunk: self._score_ids_batch(chunk, top_k))

    def _in_batches(self, items: Sequence[Any], score: Any) -> list[Any]:
        """``score`` over batches of ``batch_size`` items. A partitioned teacher is collective: every rank runs as
        many forwards as the rank with the most batches, idle ones on a one-token input."""
        batches = -(-len(items) // self.batch_size)
        if self.engine is not None:
            batches = max(self.engine.all_gather_objects(batches))
        out: list[Any] = []
        for start in range(0, batches * self.batch_size, self.batch_size):
            chunk = items[start:start + self.batch_size]
            if chunk:
                out += score(chunk)
            else:
                self._idle_forward()
        return out

    def _score_ids_batch(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                         top_k: int) -> list[list[TeacherTarget | None]]:
        logits = self._logits([list(prompt) + list(completion) for prompt, completion in pairs])
        vocab, special = len(self.tokenizer), self._unscored_ids()
        out: list[list[TeacherTarget | None]] = []
        for row, (prompt, completion) in enumerate(pairs):
            if not completion:
                out.append([])
                continue
            first = len(prompt)
            probs = logits[row, first - 1:first + len(completion) - 1, :vocab].float().softmax(-1)
            best = probs.topk(min(top_k + len(special), vocab), dim=-1)  # room for special ids to drop out
            chosen = probs.gather(-1, torch.tensor(completion, device=probs.device).unsqueeze(-1)).squeeze(-1)
            targets: list[TeacherTarget | None] = []
            for token, own, top_ids, top_probs in zip(completion, chosen.tolist(), best.indices.tolist(),
                                                      best.values.tolist(), strict=True):
                if token in special:
                    targets.append(None)
                    continue
                top = [(i, p) for i, p in zip(top_ids, top_probs, strict=True) if i not in special][:top_k]
                listed = ([(token, own)] if own > 0 else []) + [(i, p) for i, p in top if i != token and p > 0]
                targets.append((tuple(i for i, _ in listed), tuple(p for _, p in listed)) if listed else None)
            out.append(targets)
        return out

    def _unscored_ids(self) -> set[int]:
        """Special ids that get no target and are no alternative: all but EOS (a student must learn to stop)."""
        return set(self.tokenizer.all_special_ids) - {self.tokenizer.eos_token_id}

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """The teacher's logits for token-id rows, right-padded into one batch (padding masked out)."""
        width, pad = max(len(ids) for ids in rows), self._pad_id()
        input_ids = torch.tensor([list(ids) + [pad] * (width - len(ids)) for ids in rows], device=self.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows], device=self.device)
        with torch.no_grad():
            return self.model(input_ids=input_ids, attention_mask=mask).logits

    def _idle_forward(self) -> None:
        """A forward that only takes part in the partitioned teacher's weight gathers."""
        with torch.no_grad():
            self.model(input_ids=torch.tensor([[self._pad_id()]], device=self.device))

    def _score_batch(self, items: Sequence[tuple[tuple[str, str], bool]], top_k: int) -> list[tuple[TokenLogprob, ...]]:
        tok = self.tokenizer
        eos = tok.eos_token_id
        pairs = [pair for pair, _ in items]
        full = [tok(prompt + completion)["input_ids"] + ([eos] if ended and eos is not None else [])
                for (prompt, completion), ended in items]
        starts = [completion_start(tok(prompt)["input_ids"], ids) for (prompt, _), ids in zip(pairs, full,
                                                                                           strict=True)]
        logits = self._logits(full)
        vocab = len(tok)

        def text(previous: int, token: int) -> str:
            return END_OF_TEXT if token == eos else alternative_text(tok, previous, token)

        out = []
        for row, (ids, first) in enumerate(zip(full, starts, strict=True)):
            if first >= len(ids):
                out.append(())
                continue
            logp = logits[row, first - 1:len(ids) - 1].float().log_softmax(-1)  # predicts ids[first:]
            chosen = logp.gather(-1, torch.tensor(ids[first:], device=logp.device).unsqueeze(-1)).squeeze(-1)
            best = logp[:, :vocab].topk(min(top_k, vocab), dim=-1)
            tokens = []
            for offset, position in enumerate(range(first, len(ids))):
                previous = ids[position - 1]
                top = tuple((text(previous, int(i)), float(v))
                            for i, v in zip(best.indices[offset].tolist(), best.values[offset].tolist(), strict=True))
                tokens.append(TokenLogprob(text(previous, ids[position]), float(chosen[offset]), top))
            out.append(tuple(tokens))
        return out
