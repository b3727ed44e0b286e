"""Tokenization, a resumable length-grouped distributed batch order, and padding collators.

Seq2seq examples become (source ids, target ids); causal examples become one sequence whose labels are
-100 over the prompt, so the loss falls on the target only. Truncation is explicit and counted.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cotdistill.formats import Example
from cotdistill.objectives import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    causal: bool

    @property
    def length(self) -> int:
        """Tokens the model processes for this example (drives grouping and padding cost)."""
        return len(self.input_ids) if self.causal else len(self.input_ids) + len(self.labels)


@dataclass
class TruncationStats:
    examples: int = 0
    sources_truncated: int = 0
    targets_truncated: int = 0

    def summary(self) -> str:
        return (f"{self.examples} examples; {self.sources_truncated} prompts lost their start, "
                f"{self.targets_truncated} targets were cut at the end")


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer,
    causal: bool,
    max_source_tokens: int,
    max_target_tokens: int,
) -> tuple[list[TokenizedExample], TruncationStats]:
    """Tokenize every example; prompts keep their end (the question), targets keep their start."""
    stats = TruncationStats(examples=len(examples))
    eos = tokenizer.eos_token_id
    sources = tokenizer([e.source for e in examples], add_special_tokens=not causal)["input_ids"]
    targets = tokenizer([e.target for e in examples], add_special_tokens=not causal)["input_ids"]
    out = []
    for src, tgt in zip(sources, targets, strict=True):
        if causal:
            tgt = list(tgt) + [eos]
        if len(src) > max_source_tokens:
            src = src[len(src) - max_source_tokens:]
            stats.sources_truncated += 1
        if len(tgt) > max_target_tokens:
            tgt = tgt[:max_target_tokens]
            stats.targets_truncated += 1
        if causal:
            out.append(TokenizedExample(tuple(src) + tuple(tgt), (IGNORE_INDEX,) * len(src) + tuple(tgt), True))
        else:
            out.append(TokenizedExample(tuple(src), tuple(tgt), False))
    return out, stats


class LengthGroupedBatches:
    """Deterministic order of micro-batches for every rank, resumable at any micro-step.

    Each epoch shuffles with ``seed + epoch``; with grouping, shuffled chunks of ``mega`` global batches
    are sorted by length so the ranks of one step see similar lengths (little padding, balanced ZeRO
    collectives). An epoch is padded by wrapping around so every rank gets the same number of batches.
    """

    def __init__(self, lengths: Sequence[int], micro_batch_size: int, world_size: int, seed: int,
                 group_by_length: bool = True, mega: int = 32) -> None:
        if not lengths:
            raise ValueError("no training examples to batch")
        self.lengths = list(lengths)
        self.micro = micro_batch_size
        self.world = world_size
        self.seed = seed
        self.group = group_by_length
        self.mega = mega

    @property
    def global_batch(self) -> int:
        return self.micro * self.world

    @property
    def steps_per_epoch(self) -> int:
        """Global micro-steps (one micro-batch per rank) in one epoch."""
        return -(-len(self.lengths) // self.global_batch)

    def epoch(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's global micro-steps; each is a list of one index list per rank."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        need = self.steps_per_epoch * self.global_batch
        order = (order * -(-need // len(order)))[:need]  # wrap around (repeatedly, for tiny sets)
        if self.group:
            chunk = self.global_batch * self.mega
            grouped = []
            for start in range(0, len(order), chunk):
                part = sorted(order[start:start + chunk], key=lambda i: -self.lengths[i])
                grouped.append(part)
            order = [i for part in grouped for i in part]
        steps = [order[s:s + self.global_batch] for s in range(0, need, self.global_batch)]
        if self.group:
            rng.shuffle(steps)
        return [[step[r * self.micro:(r + 1) * self.micro] for r in range(self.world)] for step in steps]

    def iterate(self, rank: int, start_micro_step: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches forever (epoch after epoch), from a global micro-step index."""
        epoch, offset = divmod(start_micro_step, self.steps_per_epoch)
        while True:
            for step in self.epoch(epoch)[offset:]:
                yield step[rank]
            epoch, offset = epoch + 1, 0


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + list(r)) if left else (list(r) + [value] * (width - len(r)))
              for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def collate(batch: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the micro-batch (dynamic padding)."""
    input_ids = _pad([e.input_ids for e in batch], pad_id)
    attention_mask = _pad([[1] * len(e.input_ids) for e in batch], 0)
    labels = _pad([e.labels for e in batch], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def padded_prompts(prompts: Sequence[Sequence[int]], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Prompts for generation; decoder-only models need left padding so generation continues the text."""
    return {"input_ids": _pad(prompts, pad_id, left=left),
            "attention_mask": _pad([[1] * len(p) for p in prompts], 0, left=left)}



def padding_stats(batch: dict[str, torch.Tensor], causal: bool) -> tuple[int, int]:
    """(real tokens, token slots) the model processes for a collated micro-batch.

    Seq2seq counts encoder and decoder positions; a causal sequence already holds its target.
    """
    real = int(batch["attention_mask"].sum())
    slots = batch["attention_mask"].numel()
    if not causal:
        real += int((batch["labels"] != IGNORE_INDEX).sum())
        slots += batch["labels"].numel()
    return real, slots
