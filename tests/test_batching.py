"""Tokenization with label masking and truncation, the resumable length-grouped batch order, collators."""

from __future__ import annotations

import random
from collections import Counter
from itertools import islice

import pytest
import torch

from cotdistill.batching import (
    DataState,
    LengthGroupedBatches,
    TokenizedExample,
    collate,
    padded_prompts,
    padding_stats,
    tokenize_examples,
)
from cotdistill.formats import Example, build_examples
from cotdistill.objectives import IGNORE_INDEX
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems

BIG = 10_000


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    problems = generate_problems(SyntheticSpec(n=200, seed=0))
    return build_examples(problems, {"zero_shot_cot": 0.5, "answer_only": 0.5}, seed=0)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, examples):
    from transformers import AutoTokenizer

    from cotdistill.modeling import make_tiny

    texts = [e.source + e.target for e in examples]
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for kind in ("causal", "seq2seq"):
        folder = make_tiny(kind, root / kind, texts, vocab_size=256, d_model=32, num_layers=1, num_heads=2,
                           d_ff=64)
        out[kind] = AutoTokenizer.from_pretrained(str(folder))
    return out


def ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


# ---------------------------------------------------------------------------------------------------------
# tokenize_examples


def test_causal_labels_mask_exactly_the_prompt(tokenizers, examples):
    tok = tokenizers["causal"]
    sample = examples[:40]
    out, stats = tokenize_examples(sample, tok, causal=True, max_source_tokens=BIG, max_target_tokens=BIG)
    assert len(out) == len(sample)
    assert stats.sources_truncated == stats.targets_truncated == 0
    for example, tokenized in zip(sample, out, strict=True):
        src = ids(tok, example.source, special=False)
        tgt = ids(tok, example.target, special=False) + [tok.eos_token_id]
        assert list(tokenized.input_ids) == src + tgt
        assert list(tokenized.labels) == [IGNORE_INDEX] * len(src) + tgt
        assert len(tokenized.labels) == len(tokenized.input_ids)
        assert tokenized.length == len(src) + len(tgt)


def test_causal_sequence_ends_with_eos_label(tokenizers, examples):
    tok = tokenizers["causal"]
    out, _ = tokenize_examples(examples[:10], tok, causal=True, max_source_tokens=BIG, max_target_tokens=BIG)
    for tokenized in out:
        assert tokenized.input_ids[-1] == tok.eos_token_id
        assert tokenized.labels[-1] == tok.eos_token_id
        assert tokenized.labels[0] == IGNORE_INDEX


def test_seq2seq_keeps_source_and_target_separate(tokenizers, examples):
    tok = tokenizers["seq2seq"]
    sample = examples[:40]
    out, stats = tokenize_examples(sample, tok, causal=False, max_source_tokens=BIG, max_target_tokens=BIG)
    assert stats.examples == len(sample)
    for example, tokenized in zip(sample, out, strict=True):
        assert list(tokenized.input_ids) == ids(tok, example.source, special=True)
        assert list(tokenized.labels) == ids(tok, example.target, special=True)
        assert tokenized.labels[-1] == tok.eos_token_id
        assert IGNORE_INDEX not in tokenized.labels
    assert any(len(t.input_ids) != len(t.labels) for t in out)


def test_causal_truncation_keeps_end_of_prompt_and_start_of_target(tokenizers, examples):
    tok = tokenizers["causal"]
    sample = examples[:30]
    max_src, max_tgt = 12, 7
    out, stats = tokenize_examples(sample, tok, causal=True, max_source_tokens=max_src, max_target_tokens=max_tgt)
    long_src = long_tgt = 0
    for example, tokenized in zip(sample, out, strict=True):
        src = ids(tok, example.source, special=False)
        tgt = ids(tok, example.target, special=False) + [tok.eos_token_id]
        long_src += len(src) > max_src
        long_tgt += len(tgt) > max_tgt
        kept_src, kept_tgt = src[-max_src:], tgt[:max_tgt]
        assert list(tokenized.input_ids) == kept_src + kept_tgt
        assert list(tokenized.labels) == [IGNORE_INDEX] * len(kept_src) + kept_tgt
    assert long_src > 0 and long_tgt > 0
    assert stats.sources_truncated == long_src
    assert stats.targets_truncated == long_tgt
    assert stats.examples == len(sample)


def test_seq2seq_truncation_keeps_end_of_prompt_and_start_of_target(tokenizers, examples):
    tok = tokenizers["seq2seq"]
    sample = examples[:30]
    max_src, max_tgt = 9, 5
    out, stats = tokenize_examples(sample, tok, causal=False, max_source_tokens=max_src, max_target_tokens=max_tgt)
    for example, tokenized in zip(sample, out, strict=True):
        src = ids(tok, example.source, special=True)
        tgt = ids(tok, example.target, special=True)
        assert list(tokenized.input_ids) == src[-max_src:]
        assert list(tokenized.labels) == tgt[:max_tgt]
        assert tokenized.input_ids[-1] == tok.eos_token_id  # the question's end survives
    assert stats.sources_truncated == sum(len(ids(tok, e.source, True)) > max_src for e in sample) > 0
    assert stats.targets_truncated == sum(len(ids(tok, e.target, True)) > max_tgt for e in sample) > 0


def test_sequence_exactly_at_the_limit_is_not_counted_as_truncated(tokenizers, examples):
    tok = tokenizers["causal"]
    example = examples[0]
    n_src = len(ids(tok, example.source, special=False))
    n_tgt = len(ids(tok, example.target, special=False)) + 1
    out, stats = tokenize_examples([example], tok, causal=True, max_source_tokens=n_src, max_target_tokens=n_tgt)
    assert stats.sources_truncated == stats.targets_truncated == 0
    assert len(out[0].input_ids) == n_src + n_tgt
    _, stats = tokenize_examples([example], tok, causal=True, max_source_tokens=n_src - 1,
                                 max_target_tokens=n_tgt - 1)
    assert stats.sources_truncated == stats.targets_truncated == 1


def test_truncation_summary_reports_the_counts(tokenizers, examples):
    _, stats = tokenize_examples(examples[:20], tokenizers["causal"], causal=True, max_source_tokens=5,
                                 max_target_tokens=BIG)
    summary = stats.summary()
    assert summary.startswith("20 examples")
    assert "20 prompts lost their start" in summary
    assert "0 targets were cut" in summary


def test_collated_causal_batch_counts_every_real_token(tokenizers, examples):
    tok = tokenizers["causal"]
    out, _ = tokenize_examples(examples[:8], tok, causal=True, max_source_tokens=BIG, max_target_tokens=BIG)
    batch = collate(out, tok.pad_token_id)
    real, slots = padding_stats(batch, causal=True)
    assert real == sum(len(t.input_ids) for t in out)
    assert slots == len(out) * max(len(t.input_ids) for t in out)
    target_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
    assert target_tokens == sum(sum(1 for x in t.labels if x != IGNORE_INDEX) for t in out)


def test_collated_seq2seq_batch_counts_encoder_and_decoder_tokens(tokenizers, examples):
    tok = tokenizers["seq2seq"]
    out, _ = tokenize_examples(examples[:8], tok, causal=False, max_source_tokens=BIG, max_target_tokens=BIG)
    batch = collate(out, tok.pad_token_id)
    real, slots = padding_stats(batch, causal=False)
    assert real == sum(len(t.input_ids) + len(t.labels) for t in out)
    width_src = max(len(t.input_ids) for t in out)
    width_tgt = max(len(t.labels) for t in out)
    assert slots == len(out) * (width_src + width_tgt)


# ---------------------------------------------------------------------------------------------------------
# LengthGroupedBatches


def mixed_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([rng.randint(5, 20), rng.randint(60, 90), rng.randint(150, 300)]) for _ in range(n)]


SHAPES = [(103, 4, 2), (64, 8, 1), (10, 3, 4), (7, 2, 3), (50, 5, 2), (200, 4, 3)]


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("n, micro, world", SHAPES)
def test_every_rank_gets_the_same_number_of_full_micro_batches(n, micro, world, group):
    order = LengthGroupedBatches(mixed_lengths(n), micro, world, seed=3, group_by_length=group, mega=2)
    steps = order.epoch(0)
    assert len(steps) == order.steps_per_epoch == -(-n // (micro * world))
    for step in steps:
        assert len(step) == world
        assert all(len(micro_batch) == micro for micro_batch in step)
    per_rank = [list(islice(order.iterate(rank), len(steps))) for rank in range(world)]
    assert [len(batches) for batches in per_rank] == [len(steps)] * world


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("n, micro, world", SHAPES)
def test_epoch_covers_every_example_and_pads_less_than_one_global_batch(n, micro, world, group):
    order = LengthGroupedBatches(mixed_lengths(n), micro, world, seed=5, group_by_length=group, mega=2)
    for epoch in (0, 1):
        flat = [i for step in order.epoch(epoch) for batch in step for i in batch]
        counts = Counter(flat)
        assert set(counts) == set(range(n))
        extra = len(flat) - n
        assert 0 <= extra < order.global_batch
        assert max(counts.values()) <= 2
        assert sum(c - 1 for c in counts.values()) == extra


def test_ungrouped_padding_wraps_only_into_the_last_global_batch():
    n, micro, world = 29, 4, 2
    order = LengthGroupedBatches([10] * n, micro, world, seed=1, group_by_length=False)
    steps = order.epoch(0)
    body = [i for step in steps[:-1] for batch in step for i in batch]
    last = [i for batch in steps[-1] for i in batch]
    assert len(body) == len(set(body))
    assert set(body) | set(last) == set(range(n))
    assert len(set(last) - set(body)) == n - len(body)
    assert len(last) == micro * world


def test_no_padding_when_examples_fill_whole_global_batches():
    order = LengthGroupedBatches(mixed_lengths(48), 4, 3, seed=0)
    flat = [i for step in order.epoch(0) for batch in step for i in batch]
    assert sorted(flat) == list(range(48))


def test_ranks_of_one_step_receive_disjoint_examples():
    order = LengthGroupedBatches(mixed_lengths(96), 4, 3, seed=2)
    for step in order.epoch(0):
        merged = [i for batch in step for i in batch]
        assert len(merged) == len(set(merged))


@pytest.mark.parametrize("group", [True, False])
def test_order_is_deterministic_for_a_seed(group):
    lengths = mixed_lengths(150)
    a = LengthGroupedBatches(lengths, 4, 2, seed=11, group_by_length=group, mega=4)
    b = LengthGroupedBatches(lengths, 4, 2, seed=11, group_by_length=group, mega=4)
    assert a.epoch(0) == b.epoch(0)
    assert a.epoch(3) == b.epoch(3)


@pytest.mark.parametrize("group", [True, False])
def test_order_differs_for_another_seed_and_another_epoch(group):
    lengths = mixed_lengths(150)
    a = LengthGroupedBatches(lengths, 4, 2, seed=11, group_by_length=group, mega=4)
    b = LengthGroupedBatches(lengths, 4, 2, seed=12, group_by_length=group, mega=4)
    assert a.epoch(0) != b.epoch(0)
    assert a.epoch(0) != a.epoch(1)


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("rank", [0, 1, 2])
def test_resume_yields_exactly_the_tail_of_the_uninterrupted_stream(group, rank):
    order = LengthGroupedBatches(mixed_lengths(70), 4, 3, seed=9, group_by_length=group, mega=2)
    spe = order.steps_per_epoch
    assert spe == 6
    stream = list(islice(order.iterate(rank), 4 * spe))
    for k in (0, 1, spe - 1, spe, spe + 2, 2 * spe + 5, 3 * spe):
        resumed = list(islice(order.iterate(rank, start_micro_step=k), len(stream) - k))
        assert resumed == stream[k:], f"resume at micro-step {k}"


def test_stream_moves_through_epochs_in_order():
    order = LengthGroupedBatches(mixed_lengths(40), 4, 2, seed=4)
    spe = order.steps_per_epoch
    stream = list(islice(order.iterate(1), 3 * spe))
    for epoch in range(3):
        assert stream[epoch * spe:(epoch + 1) * spe] == [step[1] for step in order.epoch(epoch)]


def total_padding(order: LengthGroupedBatches, lengths: list[int], epochs: int = 2) -> int:
    pad = 0
    for epoch in range(epochs):
        for step in order.epoch(epoch):
            for batch in step:
                longest = max(lengths[i] for i in batch)
                pad += sum(longest - lengths[i] for i in batch)
    return pad


def test_grouping_by_length_cuts_padding_on_mixed_lengths():
    lengths = mixed_lengths(512, seed=1)
    grouped = LengthGroupedBatches(lengths, 8, 2, seed=0, group_by_length=True, mega=8)
    plain = LengthGroupedBatches(lengths, 8, 2, seed=0, group_by_length=False)
    assert total_padding(grouped, lengths) < 0.5 * total_padding(plain, lengths)


def test_grouping_still_shuffles_step_order():
    lengths = mixed_lengths(512, seed=1)
    order = LengthGroupedBatches(lengths, 8, 2, seed=0, group_by_length=True, mega=64)
    firsts = [max(lengths[i] for i in step[0]) for step in order.epoch(0)]
    assert firsts != sorted(firsts, reverse=True)


def test_empty_lengths_are_refused():
    with pytest.raises(ValueError):
        LengthGroupedBatches([], 4, 2, seed=0)


# ---------------------------------------------------------------------------------------------------------
# Collators


def test_collate_pads_right_with_pad_id_mask_zero_and_label_ignore():
    batch = [
        TokenizedExample((5, 6, 7, 8), (IGNORE_INDEX, IGNORE_INDEX, 7, 8), True),
        TokenizedExample((9, 10), (IGNORE_INDEX, 10), True),
    ]
    out = collate(batch, pad_id=3)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 3, 3]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert all(t.dtype == torch.long for t in out.values())


def test_collate_seq2seq_pads_source_and_labels_to_their_own_widths():
    batch = [TokenizedExample((1, 2, 3), (4,), False), TokenizedExample((5,), (6, 7, 8, 9), False)]
    out = collate(batch, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3], [5, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[4, -100, -100, -100], [6, 7, 8, 9]]


def test_padding_stats_counts_decoder_tokens_for_seq2seq():
    batch = collate([TokenizedExample((1, 2, 3), (4,), False), TokenizedExample((5,), (6, 7, 8, 9), False)], pad_id=0)
    assert padding_stats(batch, causal=False) == (3 + 1 + 1 + 4, 2 * 3 + 2 * 4)


def test_padding_stats_causal_counts_only_the_joint_sequence():
    batch = collate([TokenizedExample((1, 2, 3), (-100, 2, 3), True), TokenizedExample((4,), (4,), True)], pad_id=0)
    assert padding_stats(batch, causal=True) == (4, 6)


def test_generation_prompts_can_pad_on_the_left():
    out = padded_prompts([[1, 2, 3], [4], [5, 6]], pad_id=0, left=True)
    assert out["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4], [0, 5, 6]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert out["input_ids"][:, -1].tolist() == [3, 4, 6]


# -- the data state: resuming on another world size -------------------------------------------------------------


def take(stream, steps: int) -> list[list[list[int]]]:
    return [stream.next_step() for _ in range(steps)]


@pytest.mark.parametrize("group", [True, False])
def test_state_resumes_the_uninterrupted_stream_on_the_same_world_size(group):
    order = LengthGroupedBatches(mixed_lengths(70), 4, 3, seed=9, group_by_length=group, mega=2)
    uninterrupted = take(order.stream(order.position(0)), 3 * order.steps_per_epoch)
    for k in (0, 1, 5, 6, 7, 13):
        stream = order.stream(order.position(0))
        take(stream, k)
        state = DataState.from_json(stream.state().to_json())  # through the checkpoint's JSON
        assert take(order.stream(state), len(uninterrupted) - k) == uninterrupted[k:], f"resume at {k}"


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("worlds", [(2, 1), (1, 3), (3, 2, 4), (2, 5, 1)])
def test_an_epoch_resharded_mid_way_trains_each_of_its_samples_exactly_as_often_as_planned(worlds, group):
    """However often the world size changes inside an epoch, the epoch's planned samples are each consumed
    once (only the last step of the epoch may wrap around to fill whole micro-steps)."""
    lengths = mixed_lengths(103)
    orders = [LengthGroupedBatches(lengths, 4, w, seed=2, group_by_length=group, mega=2) for w in worlds]
    planned = [i for step in orders[0].epoch(0) for rank in step for i in rank]
    state, consumed = orders[0].position(0), []
    for order in orders:
        stream = order.stream(state)
        for step in take(stream, 2):
            consumed += [i for rank in step for i in rank]
        state = stream.state()
    assert state.epoch == 0
    consumed += state.remaining
    assert consumed[:len(planned)] == planned
    assert len(consumed) - len(planned) < 4 * max(worlds)  # at most one wrapped-up last step


def test_fewer_ranks_with_the_same_micro_batch_get_the_very_same_micro_batches():
    lengths = mixed_lengths(96)
    two, one = LengthGroupedBatches(lengths, 4, 2, seed=1), LengthGroupedBatches(lengths, 4, 1, seed=1)
    state = two.position(5)
    assert [s[0] for s in one.chunk(state.remaining)] == [b for step in two.epoch(0)[5:] for b in step]


def test_recut_steps_never_mix_formats():
    formats = ["decomposer"] * 37 + ["solver"] * 70 + ["zero_shot_cot"] * 9
    lengths = [(i * 7) % 50 + 1 for i in range(len(formats))]
    two = LengthGroupedBatches(lengths, 4, 2, seed=5, formats=formats)
    three = LengthGroupedBatches(lengths, 4, 3, seed=5, formats=formats)
    steps = three.chunk(two.position(4).remaining)
    assert steps and all(len({formats[i] for rank in step for i in rank}) == 1 for step in steps)
    assert all(len(rank) == 4 for step in steps for rank in step)


def test_a_state_at_the_end_of_an_epoch_starts_the_next_epoch():
    order = LengthGroupedBatches(mixed_lengths(40), 4, 2, seed=4)
    state = order.position(order.steps_per_epoch)
    assert state == DataState(1, tuple(i for step in order.epoch(1) for rank in step for i in rank))
    assert order.stream(DataState(0, ())).next_step() == order.epoch(1)[0]


def seq2seq_padding(order: LengthGroupedBatches, sources: list[int], targets: list[int]) -> tuple[int, int]:
    """Padding slots of an epoch: encoder and decoder sides, each padded to its micro-batch's longest."""
    enc = dec = 0
    for step in order.epoch(0):
        for batch in step:
            enc += sum(max(sources[i] for i in batch) - sources[i] for i in batch)
            dec += sum(max(targets[i] for i in batch) - targets[i] for i in batch)
    return enc, dec


def test_seq2seq_grouping_pads_source_and_target_less_than_grouping_by_their_sum():
    rng = random.Random(7)
    sources = [rng.randint(20, 400) for _ in range(2048)]
    targets = [rng.randint(5, 200) for _ in range(2048)]  # independent of the source length
    by_sum = LengthGroupedBatches([s + t for s, t in zip(sources, targets, strict=True)], 8, 2, seed=1)
    by_both = LengthGroupedBatches(sources, 8, 2, seed=1, target_lengths=targets)
    enc_sum, dec_sum = seq2seq_padding(by_sum, sources, targets)
    enc_both, dec_both = seq2seq_padding(by_both, sources, targets)
    assert enc_both + dec_both < 0.7 * (enc_sum + dec_sum), (enc_both, dec_both, enc_sum, dec_sum)
    assert dec_both < dec_sum
    flat = sorted(i for step in by_both.epoch(0) for batch in step for i in batch)
    assert flat == list(range(2048))  # still every example once
