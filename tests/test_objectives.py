"""Token-level NLL with -100 masking and the causal shift."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cotdistill.objectives import IGNORE_INDEX, mean_token_nll, shift_for_causal, token_nll

VOCAB = 7


def peaked_logits(targets: list[list[int]], high: float = 20.0) -> torch.Tensor:
    """Logits putting nearly all mass on targets[b][t] at each position."""
    logits = torch.zeros(len(targets), len(targets[0]), VOCAB)
    for b, row in enumerate(targets):
        for t, token in enumerate(row):
            logits[b, t, token] = high
    return logits


def test_token_nll_ignores_masked_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB)
    labels = torch.tensor([[1, IGNORE_INDEX, 3, IGNORE_INDEX, 0], [IGNORE_INDEX, 2, 2, 6, IGNORE_INDEX]])
    loss_sum, count = token_nll(logits, labels)
    assert int(count) == 6
    changed = logits.clone()
    changed[labels == IGNORE_INDEX] = torch.randn(int((labels == IGNORE_INDEX).sum()), VOCAB) * 50
    again, _ = token_nll(changed, labels)
    assert torch.allclose(loss_sum, again)


def test_token_nll_sums_per_token_losses():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, VOCAB)
    labels = torch.randint(0, VOCAB, (3, 4))
    labels[0, :2] = IGNORE_INDEX
    loss_sum, count = token_nll(logits, labels)
    log_probs = logits.log_softmax(-1)
    manual = sum(-log_probs[b, t, labels[b, t]] for b in range(3) for t in range(4) if labels[b, t] != IGNORE_INDEX)
    assert loss_sum.item() == pytest.approx(float(manual), rel=1e-5)
    assert int(count) == 10


def test_token_nll_all_masked_gives_zero_sum_and_count():
    loss_sum, count = token_nll(torch.randn(1, 3, VOCAB), torch.full((1, 3), IGNORE_INDEX))
    assert loss_sum.item() == 0.0
    assert int(count) == 0


def test_token_nll_upcasts_half_precision_logits():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, VOCAB)
    labels = torch.randint(0, VOCAB, (2, 3))
    loss_sum, _ = token_nll(logits.to(torch.bfloat16), labels)
    assert loss_sum.dtype == torch.float32
    reference, _ = token_nll(logits.to(torch.bfloat16).float(), labels)
    assert torch.equal(loss_sum, reference)


def test_uniform_logits_give_log_vocab():
    labels = torch.tensor([[0, 3, 5]])
    mean, n = mean_token_nll(torch.zeros(1, 3, VOCAB), labels, causal=False)
    assert n == 3
    assert mean.item() == pytest.approx(math.log(VOCAB))


def test_shift_for_causal_drops_last_logit_and_first_label():
    logits = torch.arange(2 * 4 * VOCAB, dtype=torch.float).reshape(2, 4, VOCAB)
    labels = torch.arange(8).reshape(2, 4)
    shifted_logits, shifted_labels = shift_for_causal(logits, labels)
    assert torch.equal(shifted_logits, logits[:, :3])
    assert shifted_labels.tolist() == [[1, 2, 3], [5, 6, 7]]


def test_causal_mean_nll_predicts_the_next_token():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 1, 6, 2]])
    next_tokens = [[0, 4, 1, 6, 2, 0]]  # logits at t predict the label at t+1
    logits = peaked_logits(next_tokens)
    shifted, n = mean_token_nll(logits, labels, causal=True)
    unshifted, m = mean_token_nll(logits, labels, causal=False)
    assert n == m == 4
    assert shifted.item() < 1e-6
    assert unshifted.item() > 5.0


def test_seq2seq_mean_nll_does_not_shift():
    labels = torch.tensor([[3, 1, 5, IGNORE_INDEX]])
    logits = peaked_logits([[3, 1, 5, 0]])
    aligned, n = mean_token_nll(logits, labels, causal=False)
    assert n == 3
    assert aligned.item() < 1e-6
    shifted, _ = mean_token_nll(logits, labels, causal=True)
    assert shifted.item() > 5.0


def test_causal_count_excludes_the_first_label():
    labels = torch.tensor([[2, 3, 4], [5, IGNORE_INDEX, 6]])
    _, n = mean_token_nll(torch.zeros(2, 3, VOCAB), labels, causal=True)
    assert n == 3


@pytest.mark.parametrize("causal", [False, True])
def test_mean_equals_torch_cross_entropy_over_unmasked_positions(causal):
    torch.manual_seed(3)
    logits = torch.randn(3, 6, VOCAB)
    labels = torch.randint(0, VOCAB, (3, 6))
    labels[0, :3] = IGNORE_INDEX
    labels[2, 4:] = IGNORE_INDEX
    mean, n = mean_token_nll(logits, labels, causal=causal)
    ref_logits, ref_labels = (logits[:, :-1], labels[:, 1:]) if causal else (logits, labels)
    keep = ref_labels != IGNORE_INDEX
    reference = F.cross_entropy(ref_logits[keep], ref_labels[keep])
    assert n == int(keep.sum())
    assert mean.item() == pytest.approx(reference.item(), rel=1e-6)


def test_mean_weights_tokens_not_sequences():
    logits = torch.zeros(2, 4, VOCAB)
    logits[0, 0, 1] = 20.0  # sequence 0: one confident, correct token
    labels = torch.tensor([[1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], [0, 1, 2, 3]])
    mean, n = mean_token_nll(logits, labels, causal=False)
    assert n == 5
    assert mean.item() == pytest.approx(4 * math.log(VOCAB) / 5, rel=1e-4)


def test_mean_of_fully_masked_batch_is_zero_not_nan():
    mean, n = mean_token_nll(torch.randn(2, 3, VOCAB), torch.full((2, 3), IGNORE_INDEX), causal=True)
    assert n == 0
    assert mean.item() == 0.0


def test_mean_nll_backpropagates_only_through_unmasked_positions():
    logits = torch.randn(1, 4, VOCAB, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, 5]])
    mean, _ = mean_token_nll(logits, labels, causal=False)
    mean.backward()
    grad = logits.grad[0]
    assert torch.count_nonzero(grad[0]) == 0
    assert torch.count_nonzero(grad[2]) == 0
    assert torch.count_nonzero(grad[1]) > 0
    assert torch.count_nonzero(grad[3]) > 0


def test_causal_loss_from_only_the_predicting_positions_equals_the_full_loss_and_gradient():
    from transformers import GPT2Config, GPT2LMHeadModel

    from cotdistill.objectives import predicting_positions

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 50, (3, 12))
    labels = ids.clone()
    labels[0, :7], labels[1, :5], labels[2, :9] = IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX  # prompts
    labels[1, 10:] = IGNORE_INDEX  # padding
    full, n_full = mean_token_nll(model(input_ids=ids).logits, labels, causal=True)
    full_grad = torch.autograd.grad(full, model.lm_head.weight)[0]
    start = predicting_positions(labels)
    assert start == 4
    kept = model(input_ids=ids, logits_to_keep=ids.size(1) - start).logits
    assert kept.size(1) == ids.size(1) - start
    part, n_part = mean_token_nll(kept, labels[:, start:], causal=True)
    torch.testing.assert_close(part, full)
    assert n_part == n_full
    torch.testing.assert_close(torch.autograd.grad(part, model.lm_head.weight)[0], full_grad)
    assert predicting_positions(torch.full((2, 4), IGNORE_INDEX)) == 0
