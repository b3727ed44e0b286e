"""Packed causal micro-batches: fewer rows, the same examples, and exactly the loss of the padded batch."""

from __future__ import annotations

import random

import pytest
import torch

from cotdistill.batching import TokenizedExample, collate, pack_rows, padding_stats
from cotdistill.objectives import IGNORE_INDEX, distill_loss, predicting_positions


def causal_example(prompt: list[int], target: list[int], fmt: str = "zero_shot_cot") -> TokenizedExample:
    return TokenizedExample(tuple(prompt + target), (IGNORE_INDEX,) * len(prompt) + tuple(target), True, fmt)


def random_examples(rng: random.Random, n: int, vocab: int = 50) -> list[TokenizedExample]:
    return [causal_example([rng.randrange(1, vocab) for _ in range(rng.randint(1, 12))],
                           [rng.randrange(1, vocab) for _ in range(rng.randint(1, 20))]) for _ in range(n)]


def test_pack_rows_places_every_example_once_within_capacity():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 24))]
        rows = pack_rows(lengths, max(lengths))
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= max(lengths) for row in rows)
        assert len(rows) <= len(lengths)


def test_pack_rows_fills_gaps_with_short_examples():
    assert pack_rows([10, 3, 7, 6, 4], 10) == [[0], [2, 1], [3, 4]]


def test_pack_rows_refuses_an_example_wider_than_a_row():
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([5, 11], 10)


def test_packed_batch_restarts_positions_and_ignores_each_examples_first_label():
    batch = [causal_example([1, 2], [3, 4]), causal_example([5], [6]), causal_example([], [7, 8])]
    out = collate(batch, pad_id=0, pack=True)
    # widths 4, 2, 2: the 4-token example fills row 0, the other two share row 1
    assert out["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    assert out["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, 8]]
    assert padding_stats(out, causal=True) == (8, 8)


def test_packed_rows_pad_at_the_end_as_a_segment_of_their_own():
    out = collate([causal_example([1, 2, 3], [4, 5]), causal_example([6], [7])], pad_id=9, pack=True)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 9, 9, 9]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert out["labels"][1, 2:].tolist() == [IGNORE_INDEX] * 3


def test_packing_moves_loss_weights_and_teacher_targets_with_their_tokens():
    heavy = causal_example([1], [2, 3], fmt="solver")
    light = TokenizedExample((4, 5), (IGNORE_INDEX, 5), True, "decomposer", teacher=(((5, 6), (0.75, 0.25)),))
    out = collate([heavy, light], pad_id=0, loss_weights={"solver": 2.0, "decomposer": 0.5}, teacher=True, pack=True)
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert out["token_weights"].tolist() == [[2.0, 2.0, 2.0], [0.5, 0.5, 0.0]]
    assert out["kd_ids"][1, 1].tolist() == [5, 6]
    assert out["kd_probs"][1, 1].tolist() == [0.75, 0.25]
    assert out["kd_probs"][1, 2].tolist() == [0.0, 0.0]


def test_seq2seq_examples_cannot_be_packed():
    with pytest.raises(ValueError, match="causal"):
        collate([TokenizedExample((1, 2), (3,), False)], pad_id=0, pack=True)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4, attn_implementation="sdpa")
    return GPT2LMHeadModel(config).eval()


def _loss(model, batch: dict[str, torch.Tensor], packed: bool) -> tuple[float, int]:
    """The trainer's causal loss of one micro-batch (the same calls as train.py)."""
    batch = dict(batch)
    labels = batch.pop("labels")
    if packed:
        del batch["attention_mask"]
    start = predicting_positions(labels)
    with torch.no_grad():
        logits = model(**batch, logits_to_keep=labels.size(1) - start, use_cache=False).logits
    loss, n = distill_loss(logits, labels[:, start:], None, None, None, 0.0, causal=True)
    return float(loss), n


def test_a_packed_micro_batch_has_the_padded_batchs_loss_on_gpt2():
    model = _tiny_gpt2()
    rng = random.Random(1)
    for _ in range(5):
        examples = random_examples(rng, 12)
        padded = collate(examples, pad_id=0)
        packed = collate(examples, pad_id=0, pack=True)
        assert packed["input_ids"].size(0) < padded["input_ids"].size(0)
        loss_padded, n_padded = _loss(model, padded, packed=False)
        loss_packed, n_packed = _loss(model, packed, packed=True)
        assert n_packed == n_padded
        assert loss_packed == pytest.approx(loss_padded, abs=1e-5)


def test_without_position_restarts_the_examples_would_see_each_other():
    """The check above can fail: packing the same rows with running positions changes the loss."""
    model = _tiny_gpt2()
    examples = random_examples(random.Random(2), 12)
    packed = collate(examples, pad_id=0, pack=True)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].size(1)).expand_as(packed["input_ids"]))
    assert abs(_loss(model, leaky, packed=True)[0] - _loss(model, packed, packed=True)[0]) > 1e-3

