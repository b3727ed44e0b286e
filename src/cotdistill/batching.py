"""Tokenization, a resumable length-grouped distributed batch order, padding and packing collators.

Seq2seq examples become (source ids, target ids); causal examples become one sequence whose labels are
-100 over the prompt, so the loss falls on the target only. Truncation is explicit and counted.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cotdistill.chat import check_chat_student, render_chats
from cotdistill.formats import Example
from cotdistill.objectives import IGNORE_INDEX, predicting_positions
from cotdistill.packed_attention import packed_forward, packed_kwargs

if TYPE_CHECKING:
    from cotdistill.config import TrainConfig

# Per target token: (student token ids, probabilities) of the teacher's distribution, or None for one-hot.
SparseTargets = tuple[tuple[tuple[int, ...], tuple[float, ...]] | None, ...]
TeacherFn = Callable[[Sequence, Sequence[int]], list]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    causal: bool
    format: str = ""
    teacher: SparseTargets | None = None  # one entry per target token (the last len(teacher) labels)

    @property
    def length(self) -> int:
        """Tokens the model processes for this example (drives grouping and padding cost)."""
        return len(self.input_ids) if self.causal else len(self.input_ids) + len(self.labels)


@dataclass
class TruncationStats:
    examples: int = 0
    sources_truncated: int = 0
    targets_truncated: int = 0
    target_tokens_with_teacher: int = 0  # target tokens of examples that carry teacher tokens
    teacher_tokens: int = 0  # of those, the ones aligned to a teacher distribution

    def summary(self) -> str:
        text = (f"{self.examples} examples; {self.sources_truncated} prompts lost their start, "
                f"{self.targets_truncated} targets were cut at the end")
        if self.target_tokens_with_teacher:
            text += (f"; {self.teacher_tokens} of {self.target_tokens_with_teacher} target tokens of traced examples "
                     "carry the teacher's distribution (the rest learn one-hot)")
        return text


def prompt_prefix_ids(tokenizer) -> tuple[int, ...]:
    """The special ids a tokenizer puts before a text (Llama 3: its BOS; GPT-2, Qwen: none), which a causal
    sequence starts with, as in the checkpoint's pretraining; a seq2seq source keeps the tokenizer's own ends.

    Read from the tokenizer itself (text encoded with and without special tokens) rather than from the model
    family: SmolLM2, model_type llama, adds no BOS and was trained without one.
    """
    plain = tokenizer("0", add_special_tokens=False)["input_ids"]
    full = tokenizer("0", add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return tuple(full[:start])


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer,
    causal: bool,
    max_source_tokens: int,
    max_target_tokens: int,
    teacher_fn: TeacherFn | None = None,
    chat: bool = False,
) -> tuple[list[TokenizedExample], TruncationStats]:
    """Tokenize every example; prompts keep their end (the question), targets keep their start.

    A causal sequence is `prompt_prefix_ids` (BOS where the tokenizer puts one), prompt, target, EOS, with the
    loss on target and EOS only; a truncated prompt keeps its prefix. Seq2seq sources and targets get the
    tokenizer's own special tokens (T5: a closing ``</s>``). With `teacher_fn`, an example carrying teacher
    tokens gets its per-target-token teacher distribution (`teacher_fn(teacher_tokens, target_ids)`, see
    `cotdistill.alignment.teacher_targets`).

    With `chat` (data.chat_template, causal students only) each example is the user/assistant conversation of
    the tokenizer's chat template (`cotdistill.chat.render_chats`): the loss falls on the assistant's text and
    the template's end-of-turn token, a truncated prompt keeps the template's tokens before the user's text.
    """
    stats = TruncationStats(examples=len(examples))
    eos = tokenizer.eos_token_id
    if chat:
        check_chat_student(tokenizer, causal)
        head, rendered = render_chats(tokenizer, [(e.source, e.target) for e in examples])
        prefix = tuple(head)
        sources = [src for src, _ in rendered]
        targets = [tgt for _, tgt in rendered]
    else:
        prefix = prompt_prefix_ids(tokenizer) if causal else ()
        sources = tokenizer([e.source for e in examples], add_special_tokens=not causal)["input_ids"]
        targets = tokenizer([e.target for e in examples], add_special_tokens=not causal)["input_ids"]
    out = []
    for example, src, tgt in zip(examples, sources, targets, strict=True):
        if causal and not chat:  # a chat target already ends with the template's end-of-turn token
            tgt = list(tgt) + [eos]
        if len(prefix) + len(src) > max_source_tokens:
            src = src[len(prefix) + len(src) - max_source_tokens:]
            stats.sources_truncated += 1
        src = prefix + tuple(src)
        if len(tgt) > max_target_tokens:
            tgt = tgt[:max_target_tokens]
            stats.targets_truncated += 1
        teacher = None
        if teacher_fn is not None and example.teacher_tokens:
            teacher = tuple(teacher_fn(example.teacher_tokens, tgt))
            stats.teacher_tokens += sum(t is not None for t in teacher)
            stats.target_tokens_with_teacher += len(teacher)
        if causal:
            out.append(TokenizedExample(src + tuple(tgt), (IGNORE_INDEX,) * len(src) + tuple(tgt), True,
                                        example.format, teacher))
        else:
            out.append(TokenizedExample(src, tuple(tgt), False, example.format, teacher))
    return out, stats


# Seq2seq: a source-sorted chunk of mega global batches is re-sorted by target length in windows of
# mega // 8 global batches (at least one), which spreads the targets across the ranks' micro-batches.
TARGET_WINDOW_DIVISOR = 8


class LengthGroupedBatches:
    """Deterministic order of micro-batches for every rank, resumable at any micro-step.

    Each epoch shuffles with ``seed + epoch``; with grouping, shuffled chunks of ``mega`` global batches
    are sorted by length so the ranks of one step see similar lengths (little padding, balanced ZeRO
    collectives). An epoch is padded by wrapping around so every rank gets the same number of batches.
    """

    def __init__(self, lengths: Sequence[int], micro_batch_size: int, world_size: int, seed: int,
                 group_by_length: bool = True, mega: int = 4, formats: Sequence[str] | None = None,
                 target_lengths: Sequence[int] | None = None) -> None:
        if not lengths:
            raise ValueError("no training examples to batch")
        if formats is not None and len(formats) != len(lengths):
            raise ValueError(f"{len(formats)} formats for {len(lengths)} examples")
        if target_lengths is not None and len(target_lengths) != len(lengths):
            raise ValueError(f"{len(target_lengths)} target lengths for {len(lengths)} examples")
        # Seq2seq pads encoder and decoder separately: group by source length, then by target length
        # within windows of global batches, so both sides of a micro-batch have similar lengths.
        self.target_lengths = None if target_lengths is None else list(target_lengths)
        # With formats, every global step draws from one format only (data.single_format_batches).
        self.formats = None if formats is None else list(formats)
        self.by_format = None if formats is None else {
            name: [i for i, f in enumerate(formats) if f == name] for name in sorted(set(formats))}
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
        if self.by_format is not None:
            return sum(-(-len(part) // self.global_batch) for part in self.by_format.values())
        return -(-len(self.lengths) // self.global_batch)

    def epoch(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's global micro-steps; each is a list of one index list per rank."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.by_format is None:
            steps = self._steps(list(range(len(self.lengths))), rng)
        else:
            steps = [step for part in self.by_format.values() for step in self._steps(list(part), rng)]
            rng.shuffle(steps)
        return [[step[r * self.micro:(r + 1) * self.micro] for r in range(self.world)] for step in steps]

    def _steps(self, order: list[int], rng: random.Random) -> list[list[int]]:
        """Global steps over `order` (shuffled, wrapped to whole steps, grouped by length)."""
        rng.shuffle(order)
        need = -(-len(order) // self.global_batch) * self.global_batch
        order = (order * -(-need // len(order)))[:need]  # wrap around (repeatedly, for tiny sets)
        if self.group:
            chunk = self.global_batch * self.mega
            grouped = []
            for start in range(0, len(order), chunk):
                part = sorted(order[start:start + chunk], key=lambda i: -self.lengths[i])
                if self.target_lengths is not None:
                    window = self.global_batch * max(1, self.mega // TARGET_WINDOW_DIVISOR)
                    part = [i for w in range(0, len(part), window)
                            for i in sorted(part[w:w + window], key=lambda i: -self.target_lengths[i])]
                grouped.append(part)
            order = [i for part in grouped for i in part]
        steps = [order[s:s + self.global_batch] for s in range(0, need, self.global_batch)]
        if self.group:
            rng.shuffle(steps)
        return steps

    def iterate(self, rank: int, start_micro_step: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches forever (epoch after epoch), from a global micro-step index."""
        stream = self.stream(self.position(start_micro_step))
        while True:
            yield stream.next_step()[rank]

    def relaid(self, world_size: int, micro_batch_size: int) -> LengthGroupedBatches:
        """The same examples and settings batched for another number of ranks or micro-batch."""
        return LengthGroupedBatches(self.lengths, micro_batch_size, world_size, self.seed, self.group, self.mega,
                                    self.formats, self.target_lengths)

    def position(self, micro_step: int) -> DataState:
        """The data state after ``micro_step`` global micro-steps of this order (no resharding since)."""
        epoch, offset = divmod(micro_step, self.steps_per_epoch)
        return DataState(epoch, flatten(self.epoch(epoch)[offset:]))

    def stream(self, state: DataState) -> BatchStream:
        return BatchStream(self, state)

    def chunk(self, flat: Sequence[int]) -> list[list[list[int]]]:
        """Re-cut a flat sample sequence into this order's global micro-steps, keeping the sequence.

        Used for the rest of an epoch laid out by another world size or micro batch: a step that was one
        rank's micro-batch stays one micro-batch when only the number of ranks changed, so padding and the
        samples of each optimizer step carry over. With single-format batches a step never crosses a change
        of format. The last step of a run is filled by wrapping around within that run.
        """
        runs: list[list[int]] = []
        for i in flat:
            if runs and (self.formats is None or self.formats[i] == self.formats[runs[-1][0]]):
                runs[-1].append(i)
            else:
                runs.append([i])
        steps = []
        for run in runs:
            need = -(-len(run) // self.global_batch) * self.global_batch
            run = (run * -(-need // len(run)))[:need]
            steps += [run[s:s + self.global_batch] for s in range(0, need, self.global_batch)]
        return [[step[r * self.micro:(r + 1) * self.micro] for r in range(self.world)] for step in steps]


def run_batch_order(tokenized: Sequence[TokenizedExample], causal: bool, world_size: int, train: TrainConfig,
                    single_format_batches: bool, packed: bool) -> LengthGroupedBatches:
    """The batch order of a run: a padded causal sequence is grouped by its length, a seq2seq example by its
    source and then its target length (encoder and decoder are padded separately). Packed micro-batches have
    no padding to cut, so their examples stay in random order."""
    return LengthGroupedBatches(
        [e.length if causal else len(e.input_ids) for e in tokenized], train.micro_batch_size, world_size,
        train.seed, group_by_length=train.group_by_length and not packed, mega=train.length_group_batches,
        formats=[e.format for e in tokenized] if single_format_batches else None,
        target_lengths=None if causal else [len(e.labels) for e in tokenized])


@dataclass(frozen=True)
class DataState:
    """Where training is in the data, independent of the world size: the epoch and its unconsumed samples.

    Saved with every checkpoint, so a run that resumes on another number of ranks (even twice within one
    epoch) finishes exactly the samples the epoch had left, in the same sequence, before a new epoch starts.
    """

    epoch: int
    remaining: tuple[int, ...]

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "remaining": list(self.remaining)}

    @classmethod
    def from_json(cls, data: Mapping) -> DataState:
        return cls(int(data["epoch"]), tuple(int(i) for i in data["remaining"]))


class BatchStream:
    """Global micro-steps from a data state onwards: the rest of its epoch, then whole epochs."""

    def __init__(self, order: LengthGroupedBatches, state: DataState) -> None:
        self.order = order
        self.epoch = state.epoch
        self.steps = order.chunk(state.remaining) if state.remaining else []
        self.offset = 0

    def next_step(self) -> list[list[int]]:
        """The next global micro-step: one index list per rank."""
        while self.offset >= len(self.steps):
            self.epoch, self.steps, self.offset = self.epoch + 1, self.order.epoch(self.epoch + 1), 0
        self.offset += 1
        return self.steps[self.offset - 1]

    def state(self) -> DataState:
        """The position after the steps taken so far (what a checkpoint saves)."""
        return DataState(self.epoch, flatten(self.steps[self.offset:]))

    def mark(self) -> tuple[int, list, int]:
        """The position now, without copying the epoch's order (taken every step); ``state_at`` makes it a
        DataState, for a checkpoint of the step before a failed one."""
        return self.epoch, self.steps, self.offset

    @staticmethod
    def state_at(mark: tuple[int, list, int]) -> DataState:
        epoch, steps, offset = mark
        return DataState(epoch, flatten(steps[offset:]))


def flatten(steps: Sequence[Sequence[Sequence[int]]]) -> tuple[int, ...]:
    """Global micro-steps as one sample sequence: step by step, rank by rank."""
    return tuple(i for step in steps for rank_batch in step for i in rank_batch)


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + list(r)) if left else (list(r) + [value] * (width - len(r)))
              for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def collate(batch: Sequence[TokenizedExample], pad_id: int, loss_weights: Mapping[str, float] | None = None,
            teacher: bool = False, pack: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the micro-batch (dynamic padding), or pack causal examples into one row.

    `loss_weights` (format -> weight) adds "token_weights" [B, T]; `teacher` adds "kd_ids"/"kd_probs"
    [B, T, K]: the teacher's distribution per target token where the example has one, else one-hot on the
    label, so a distillation loss over them reduces to NLL wherever no teacher distribution exists.
    `pack` lays the examples end to end in one row (`pack_causal`, `pack_seq2seq`).
    """
    input_ids = _pad([e.input_ids for e in batch], pad_id)
    attention_mask = _pad([[1] * len(e.input_ids) for e in batch], 0)
    labels = _pad([e.labels for e in batch], IGNORE_INDEX)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if loss_weights is not None:
        weights = torch.tensor([float(loss_weights.get(e.format, 1.0)) for e in batch])
        out["token_weights"] = weights[:, None].expand_as(labels).clone()
    if teacher:
        out["kd_ids"], out["kd_probs"] = _teacher_tensors(batch, labels)
    if pack:
        if all(e.causal for e in batch):
            out = pack_causal(out, [len(e.input_ids) for e in batch])
        elif not any(e.causal for e in batch):
            out = pack_seq2seq(out, [len(e.input_ids) for e in batch], [len(e.labels) for e in batch])
        else:
            raise ValueError("a packed micro-batch needs all causal or all seq2seq examples, not a mix")
    return out


def pack_causal(batch: Mapping[str, torch.Tensor], lengths: Sequence[int]) -> dict[str, torch.Tensor]:
    """Lay a padded causal micro-batch's examples end to end in one row, with no padding left.

    Every per-token tensor ([B, T] or [B, T, K]) becomes [1, sum(lengths), ...]; "position_ids" restart at 0
    for each example and "cu_seq_lens" (int32, [B + 1]) marks where each starts, for
    `cotdistill.packed_attention`, which keeps attention inside each example. Each example's first label is
    ignored, as a causal shift ignores it unpacked; otherwise the last token of the example before it would be
    trained to predict it. "attention_mask" (all ones) only feeds the padding count: the trainer drops it.
    """
    out = {key: _rows_end_to_end(value, lengths) for key, value in batch.items()}
    out["position_ids"] = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    starts = _starts(lengths)
    out["labels"][0, starts[:-1].long()] = IGNORE_INDEX
    out["cu_seq_lens"] = starts
    return out


_SOURCE_KEYS = ("input_ids", "attention_mask")  # per source token in a seq2seq batch; the rest are per target token


def _rows_end_to_end(value: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    return torch.cat([value[i, :n] for i, n in enumerate(lengths)]).unsqueeze(0)


def _starts(lengths: Sequence[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)


def pack_seq2seq(batch: Mapping[str, torch.Tensor], source_lengths: Sequence[int],
                 target_lengths: Sequence[int]) -> dict[str, torch.Tensor]:
    """Lay a padded seq2seq micro-batch's sources end to end in one encoder row, its targets in one decoder row.

    "input_ids" and "attention_mask" become [1, sum(source_lengths)]; every per-target-token tensor ("labels",
    loss weights, teacher targets) [1, sum(target_lengths), ...]. "cu_seq_lens" (int32) marks where each
    target starts in the decoder row and "cu_seq_lens_source" where each source starts in the encoder row, for
    `cotdistill.packed_attention`: each example's decoder attends to its own target (causally) and its own
    source, and its encoder to its own source. T5's relative positions restart with each example there too.
    """
    out = {key: _rows_end_to_end(value, source_lengths if key in _SOURCE_KEYS else target_lengths)
           for key, value in batch.items()}
    out["cu_seq_lens"] = _starts(target_lengths)
    out["cu_seq_lens_source"] = _starts(source_lengths)
    return out


@dataclass
class ForwardBatch:
    """A collated micro-batch split into the model's kwargs and what the loss compares its logits with.

    `aligned`: `labels` and `targets` already line up with the logits position by position (seq2seq, and
    packed rows, whose logits are kept only where the next token is a label); otherwise the loss applies the
    causal shift. Run the forward inside `forward_context()`.
    """

    inputs: dict[str, Any]
    labels: torch.Tensor
    targets: dict[str, torch.Tensor]
    aligned: bool
    packed: bool

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Wrap the model's forward in this: a packed row needs `packed_forward()`, other batches nothing."""
        return packed_forward() if self.packed else contextlib.nullcontext()

    def decoder_input_ids(self, shift_right: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A seq2seq model's decoder inputs: its own `shift_right` of the labels (teacher forcing).

        In a packed decoder row every target restarts with the decoder's start token, where the row-wide shift
        put the previous example's last label.
        """
        shifted = shift_right(self.labels)
        if self.packed:
            starts = self.inputs["cu_seq_lens_q"][1:-1].long()
            shifted[:, starts] = shifted[:, :1].clone()
        return shifted


def forward_batch(batch: Mapping[str, torch.Tensor], causal: bool) -> ForwardBatch:
    """The model inputs and loss targets of a collated micro-batch; the LM head runs only where the loss looks.

    Causal padded batches keep logits from one before the earliest labelled token (`predicting_positions`);
    packed causal rows keep exactly the positions followed by a label, passed as an index tensor to
    ``logits_to_keep``. Packed rows carry their `packed_kwargs` (seq2seq: the decoder row as the queries'
    boundaries, the encoder row as the keys'); their decoder inputs come from `ForwardBatch.decoder_input_ids`.
    """
    inputs: dict[str, Any] = dict(batch)
    labels = inputs.pop("labels")
    targets = {k: inputs.pop(k) for k in ("token_weights", "kd_ids", "kd_probs") if k in inputs}
    cu_seq_lens = inputs.pop("cu_seq_lens", None)
    cu_seq_lens_source = inputs.pop("cu_seq_lens_source", None)
    if cu_seq_lens is not None:
        del inputs["attention_mask"]  # attention stays inside each example through cu_seq_lens
        if cu_seq_lens_source is not None:  # packed seq2seq: every decoder position is a target position
            inputs.update(packed_kwargs(cu_seq_lens, cu_seq_lens_source))
            return ForwardBatch(inputs, labels, targets, aligned=True, packed=True)
        keep = (labels[0, 1:] != IGNORE_INDEX).nonzero()[:, 0]
        inputs.update(packed_kwargs(cu_seq_lens), logits_to_keep=keep)
        return ForwardBatch(inputs, labels[:, keep + 1], {k: v[:, keep + 1] for k, v in targets.items()},
                            aligned=True, packed=True)
    if not causal:
        return ForwardBatch(inputs, labels, targets, aligned=True, packed=False)
    start = predicting_positions(labels)
    inputs["logits_to_keep"] = labels.size(1) - start
    return ForwardBatch(inputs, labels[:, start:], {k: v[:, start:] for k, v in targets.items()}, aligned=False,
                        packed=False)


def _teacher_tensors(batch: Sequence[TokenizedExample], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [B, T, K] targets: one-hot on every label, replaced by the teacher's where it has one."""
    width = max([1] + [len(d[0]) for e in batch if e.teacher for d in e.teacher if d is not None])
    ids = torch.zeros((*labels.shape, width), dtype=torch.long)
    probs = torch.zeros((*labels.shape, width), dtype=torch.float32)
    labelled = labels != IGNORE_INDEX
    ids[..., 0] = torch.where(labelled, labels, torch.zeros_like(labels))
    probs[..., 0] = labelled.float()
    for row, example in enumerate(batch):
        if not example.teacher:
            continue
        start = len(example.labels) - len(example.teacher)  # the target is the end of the labels
        for offset, dist in enumerate(example.teacher):
            if dist is None:
                continue
            position = start + offset
            token_ids, token_probs = dist
            ids[row, position, :] = 0
            probs[row, position, :] = 0.0
            ids[row, position, :len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
            probs[row, position, :len(token_probs)] = torch.tensor(token_probs, dtype=torch.float32)
    return ids, probs


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token (0 on the pads before it): what a left-padded row
    needs to be scored as if unpadded. Models called with a mask but no positions count from the first column."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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
