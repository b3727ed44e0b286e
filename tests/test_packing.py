"""Packed causal micro-batches: one row, no padding, and exactly the loss and gradients of the padded batch."""

from __future__ import annotations

import random

import pytest
import torch

from cotdistill.batching import TokenizedExample, collate, forward_batch, padding_stats
from cotdistill.objectives import IGNORE_INDEX, distill_loss
from cotdistill.packed_attention import packed_forward, use_packed_attention


def causal_example(prompt: list[int], target: list[int], fmt: str = "zero_shot_cot") -> TokenizedExample:
    return TokenizedExample(tuple(prompt + target), (IGNORE_INDEX,) * len(prompt) + tuple(target), True, fmt)


def random_examples(rng: random.Random, n: int, vocab: int = 50) -> list[TokenizedExample]:
    return [causal_example([rng.randrange(1, vocab) for _ in range(rng.randint(1, 12))],
                           [rng.randrange(1, vocab) for _ in range(rng.randint(1, 20))]) for _ in range(n)]


def test_packed_batch_is_one_row_with_restarting_positions_and_each_examples_first_label_ignored():
    batch = [causal_example([1, 2], [3, 4]), causal_example([5], [6]), causal_example([], [7, 8])]
    out = collate(batch, pad_id=0, pack=True)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1]]
    assert out["labels"].tolist() == [[-100, -100, 3, 4, -100, 6, -100, 8]]
    assert out["cu_seq_lens"].tolist() == [0, 4, 6, 8]
    assert out["cu_seq_lens"].dtype == torch.int32
    assert padding_stats(out, causal=True) == (8, 8)


def test_packing_moves_loss_weights_and_teacher_targets_with_their_tokens():
    heavy = causal_example([1], [2, 3], fmt="solver")
    light = TokenizedExample((4, 5), (IGNORE_INDEX, 5), True, "decomposer", teacher=(((5, 6), (0.75, 0.25)),))
    out = collate([heavy, light], pad_id=0, loss_weights={"solver": 2.0, "decomposer": 0.5}, teacher=True, pack=True)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert out["token_weights"].tolist() == [[2.0, 2.0, 2.0, 0.5, 0.5]]
    assert out["kd_ids"][0, 4].tolist() == [5, 6]
    assert out["kd_probs"][0, 4].tolist() == [0.75, 0.25]
    assert out["kd_probs"][0, 3].tolist() == [0.0, 0.0]


def test_seq2seq_examples_cannot_be_packed():
    with pytest.raises(ValueError, match="causal"):
        collate([TokenizedExample((1, 2), (3,), False)], pad_id=0, pack=True)


def test_a_packed_forward_keeps_logits_only_where_the_next_token_is_a_label():
    batch = collate([causal_example([1, 2], [3, 4]), causal_example([5], [6])], pad_id=0, teacher=True, pack=True)
    fb = forward_batch(batch, causal=True)
    assert fb.packed and fb.aligned
    assert fb.inputs["logits_to_keep"].tolist() == [1, 2, 4]  # position t predicts the label at t + 1
    assert fb.labels.tolist() == [[3, 4, 6]]
    assert fb.targets["kd_ids"][0, :, 0].tolist() == [3, 4, 6]
    assert fb.inputs["cu_seq_lens_q"].tolist() == [0, 4, 6] and fb.inputs["max_length_q"] == 4
    assert "attention_mask" not in fb.inputs and "labels" not in fb.inputs


def _tiny_gpt2(packed: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=512, n_embd=32, n_layer=2, n_head=4, attn_implementation="sdpa")
    model = GPT2LMHeadModel(config).eval()
    if packed:
        use_packed_attention(model)
    return model


def _loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The trainer's loss of one micro-batch (the same calls as train.py)."""
    fb = forward_batch(batch, causal=True)
    with fb.forward_context():
        logits = model(**fb.inputs, use_cache=False).logits
    return distill_loss(logits, fb.labels, None, None, None, 0.0, causal=not fb.aligned)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_a_packed_micro_batch_has_the_padded_batchs_loss_and_gradients_on_gpt2():
    padded_model, packed_model = _tiny_gpt2(packed=False), _tiny_gpt2(packed=True)
    rng = random.Random(1)
    for _ in range(4):
        examples = random_examples(rng, 12)
        padded, packed = collate(examples, pad_id=0), collate(examples, pad_id=0, pack=True)
        assert packed["input_ids"].numel() < padded["input_ids"].numel()
        for model in (padded_model, packed_model):
            model.zero_grad()
        loss_padded, n_padded = _loss(padded_model, padded)
        loss_packed, n_packed = _loss(packed_model, packed)
        loss_padded.backward()
        loss_packed.backward()
        assert n_packed == n_padded
        assert loss_packed.item() == pytest.approx(loss_padded.item(), abs=1e-5)
        torch.testing.assert_close(_grads(packed_model), _grads(padded_model), atol=1e-5, rtol=1e-4)


def test_without_the_packed_attention_the_examples_would_see_each_other():
    """The check above can fail: the same row attended as one causal sequence changes the loss."""
    examples = random_examples(random.Random(2), 12)
    packed = collate(examples, pad_id=0, pack=True)
    plain_model = _tiny_gpt2(packed=False)
    leaky = forward_batch(packed, causal=True)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
        del leaky.inputs[key]
    leaky.inputs["position_ids"] = torch.arange(packed["input_ids"].size(1))[None]  # one long causal sequence
    with torch.no_grad():
        logits = plain_model(**leaky.inputs, use_cache=False).logits
    leaky_loss, _ = distill_loss(logits, leaky.labels, None, None, None, 0.0, causal=False)
    packed_loss, _ = _loss(_tiny_gpt2(packed=True), packed)
    assert abs(leaky_loss.item() - packed_loss.item()) > 1e-3


def test_a_model_switched_to_packed_attention_computes_padded_batches_and_generation_as_before():
    examples = random_examples(random.Random(3), 6)
    padded = collate(examples, pad_id=0)
    with torch.no_grad():
        before = _tiny_gpt2(packed=False)(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        after = _tiny_gpt2(packed=True)(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    real = padded["attention_mask"].bool()
    torch.testing.assert_close(after[real], before[real])
    prompt = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    generated = [_tiny_gpt2(packed=p).generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
                 for p in (False, True)]
    assert torch.equal(generated[0], generated[1])


def test_a_packed_forward_without_sequence_boundaries_is_refused():
    packed = collate(random_examples(random.Random(4), 3), pad_id=0, pack=True)
    model = _tiny_gpt2(packed=True)
    with packed_forward(), pytest.raises(ValueError, match="cu_seq_lens_q"):
        model(input_ids=packed["input_ids"], position_ids=packed["position_ids"])
