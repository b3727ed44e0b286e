"""Distribution-matching loss: KL to sparse teacher targets, mixed with NLL, weighted, shifted for causal LMs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cotdistill.batching import tokenize_examples
from cotdistill.formats import Example
from cotdistill.objectives import (
    IGNORE_INDEX,
    distill_loss,
    kd_token_loss,
    mean_token_nll,
    one_hot_targets,
    shift_for_causal,
)

VOCAB = 11


def random_labels(generator: torch.Generator, batch: int = 3, length: int = 6) -> torch.Tensor:
    labels = torch.randint(0, VOCAB, (batch, length), generator=generator)
    labels[0, :2] = IGNORE_INDEX  # a prompt
    labels[-1, -1] = IGNORE_INDEX  # padding
    return labels


def random_teacher(generator: torch.Generator, labels: torch.Tensor, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse teacher targets: K distinct ids per position (the label first), probabilities summing to 1."""
    ids = torch.stack([torch.randperm(VOCAB, generator=generator)[:k] for _ in range(labels.numel())])
    ids = ids.view(*labels.shape, k)
    probs = torch.rand(*labels.shape, k, generator=generator).softmax(-1)
    labelled = labels != IGNORE_INDEX
    return torch.where(labelled[..., None], ids, 0), probs * labelled[..., None]


def test_kd_loss_on_one_hot_targets_is_the_token_nll():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, VOCAB, generator=generator) * 3
    labels = random_labels(generator)
    ids, probs = one_hot_targets(labels)
    per_token = kd_token_loss(logits, ids, probs)
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    assert per_token.shape == labels.shape
    assert torch.allclose(per_token.reshape(-1), nll, atol=1e-5)
    assert (per_token[labels == IGNORE_INDEX] == 0).all()


def test_one_hot_targets_put_all_mass_on_the_label_and_none_on_ignored_positions():
    labels = torch.tensor([[IGNORE_INDEX, 4, 7], [2, 0, IGNORE_INDEX]])
    ids, probs = one_hot_targets(labels)
    assert ids.shape == probs.shape == (2, 3, 1)
    assert ids.squeeze(-1).tolist() == [[0, 4, 7], [2, 0, 0]]
    assert probs.squeeze(-1).tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


@pytest.mark.parametrize("causal", [False, True])
def test_full_distillation_on_one_hot_targets_equals_plain_nll(causal):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, VOCAB, generator=generator) * 2
    labels = random_labels(generator)
    ids, probs = one_hot_targets(labels)
    expected, count = mean_token_nll(logits, labels, causal)
    for kd_weight in (0.0, 0.3, 1.0):
        loss, n = distill_loss(logits, labels, ids, probs, None, kd_weight, causal)
        assert n == count
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert count == int((labels[:, 1:] if causal else labels).ne(IGNORE_INDEX).sum())


def test_kl_is_zero_when_the_teacher_is_the_students_own_softmax():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, VOCAB, generator=generator)
    ids = torch.arange(VOCAB).expand(2, 5, VOCAB)
    probs = logits.softmax(-1)
    assert kd_token_loss(logits, ids, probs).abs().max().item() < 1e-5
    shuffled = torch.randperm(VOCAB, generator=generator)
    assert kd_token_loss(logits, ids[..., shuffled], probs[..., shuffled]).abs().max().item() < 1e-5


def test_kl_is_never_negative_and_matches_a_dense_computation():
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        logits = torch.randn(2, 4, VOCAB, generator=generator) * 4
        labels = torch.randint(0, VOCAB, (2, 4), generator=generator)
        ids, probs = random_teacher(generator, labels)
        per_token = kd_token_loss(logits, ids, probs)
        assert (per_token >= -1e-6).all()
        dense = torch.zeros(2, 4, VOCAB).scatter_add(-1, ids, probs)
        expected = F.kl_div(logits.log_softmax(-1), dense, reduction="none").sum(-1)
        assert torch.allclose(per_token, expected, atol=1e-5)


def test_zero_probability_slots_and_padded_positions_add_nothing():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, VOCAB, generator=generator)
    ids = torch.tensor([[[3, 5, 0], [1, 0, 0], [0, 0, 0]]])
    probs = torch.tensor([[[0.7, 0.3, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    per_token = kd_token_loss(logits, ids, probs)
    log_q = logits.log_softmax(-1)[0]
    first = 0.7 * (torch.tensor(0.7).log() - log_q[0, 3]) + 0.3 * (torch.tensor(0.3).log() - log_q[0, 5])
    assert per_token[0, 0].item() == pytest.approx(first.item(), rel=1e-5)
    assert per_token[0, 1].item() == pytest.approx(-log_q[1, 1].item(), rel=1e-5)
    assert per_token[0, 2].item() == 0.0
    assert torch.isfinite(per_token).all()


def test_kd_loss_is_computed_in_fp32_for_half_precision_logits():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, VOCAB, generator=generator)
    labels = torch.randint(0, VOCAB, (2, 3), generator=generator)
    ids, probs = random_teacher(generator, labels)
    half = kd_token_loss(logits.bfloat16(), ids, probs)
    assert half.dtype == torch.float32
    assert torch.allclose(half, kd_token_loss(logits.bfloat16().float(), ids, probs))


@pytest.mark.parametrize("causal", [False, True])
def test_gradient_reaches_the_logits_and_pulls_towards_the_teacher(causal):
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, VOCAB, generator=generator, requires_grad=True)
    labels = random_labels(generator, batch=2, length=5)
    ids, probs = random_teacher(generator, labels)
    loss, _ = distill_loss(logits, labels, ids, probs, None, 1.0, causal)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    used = (labels[:, 1:] if causal else labels) != IGNORE_INDEX
    grad = logits.grad[:, :-1] if causal else logits.grad
    assert grad[used].abs().sum() > 0
    assert grad[~used].abs().sum() == 0  # ignored positions get no gradient
    if causal:
        assert logits.grad[:, -1].abs().sum() == 0  # the last position predicts nothing
    # d KL / d logits = softmax - teacher: the teacher's top token gets a negative gradient (pulled up)
    target_ids = ids[:, 1:] if causal else ids
    target_probs = probs[:, 1:] if causal else probs
    b, t = used.nonzero()[0].tolist()
    top = target_ids[b, t, target_probs[b, t].argmax()]
    assert grad[b, t, top] < 0


@pytest.mark.parametrize("causal", [False, True])
def test_token_weights_scale_each_tokens_pull_but_not_the_denominator(causal):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 6, VOCAB, generator=generator)
    labels = random_labels(generator)
    ids, probs = random_teacher(generator, labels)
    plain, count = distill_loss(logits, labels, ids, probs, None, 0.5, causal)
    doubled, same_count = distill_loss(logits, labels, ids, probs, torch.full((3, 6), 2.0), 0.5, causal)
    assert same_count == count
    assert doubled.item() == pytest.approx(2 * plain.item(), rel=1e-6)
    # weighting one example only: the per-example sums, reweighted, over the unchanged token count
    weights = torch.ones(3, 6)
    weights[1] = 3.0
    weighted, _ = distill_loss(logits, labels, ids, probs, weights, 0.5, causal)
    rows = []
    for row in range(3):
        only = labels.clone()
        only[torch.arange(3) != row] = IGNORE_INDEX
        loss, n = distill_loss(logits, only, ids, probs, None, 0.5, causal)
        rows.append(loss.item() * n)
    assert weighted.item() == pytest.approx((rows[0] + 3 * rows[1] + rows[2]) / count, rel=1e-5)


def test_causal_targets_and_weights_shift_with_the_labels():
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 5, VOCAB, generator=generator)
    labels = random_labels(generator, batch=2, length=5)
    ids, probs = random_teacher(generator, labels)
    weights = torch.rand(2, 5, generator=generator) + 0.5
    causal, n = distill_loss(logits, labels, ids, probs, weights, 0.6, causal=True)
    shifted_logits, shifted_labels = shift_for_causal(logits, labels)
    seq2seq, m = distill_loss(shifted_logits, shifted_labels, ids[:, 1:], probs[:, 1:], weights[:, 1:], 0.6,
                              causal=False)
    assert n == m
    assert causal.item() == pytest.approx(seq2seq.item(), rel=1e-6)


def test_the_mix_is_a_weighted_sum_of_nll_and_kl():
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 4, VOCAB, generator=generator)
    labels = random_labels(generator, batch=2, length=4)
    ids, probs = random_teacher(generator, labels)
    nll, count = distill_loss(logits, labels, ids, probs, None, 0.0, False)
    kl, _ = distill_loss(logits, labels, ids, probs, None, 1.0, False)
    mixed, _ = distill_loss(logits, labels, ids, probs, None, 0.25, False)
    assert mixed.item() == pytest.approx(0.75 * nll.item() + 0.25 * kl.item(), rel=1e-6)
    assert kl.item() == pytest.approx(kd_token_loss(logits, ids, probs).sum().item() / count, rel=1e-6)
    assert kl.item() != pytest.approx(nll.item(), rel=1e-3)  # soft targets really change the loss


def test_ignored_positions_contribute_nothing_whatever_their_logits_and_targets():
    generator = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 5, VOCAB, generator=generator)
    labels = random_labels(generator, batch=2, length=5)
    ids, probs = random_teacher(generator, labels)
    loss, _ = distill_loss(logits, labels, ids, probs, None, 0.5, False)
    ignored = labels == IGNORE_INDEX
    noisy_logits, noisy_probs = logits.clone(), probs.clone()
    noisy_logits[ignored] = torch.randn(int(ignored.sum()), VOCAB, generator=generator) * 50
    noisy_probs[ignored] = 0.25  # even a stray distribution on an ignored position is not counted
    weighted_again, _ = distill_loss(logits, labels, ids, probs, torch.where(ignored, 9.0, 1.0), 0.5, False)
    same, _ = distill_loss(noisy_logits, labels, ids, noisy_probs, None, 0.5, False)
    assert same.item() == pytest.approx(loss.item(), rel=1e-6)
    assert weighted_again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_missing_targets_mean_one_hot_and_a_bad_kd_weight_is_refused():
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 4, VOCAB, generator=generator)
    labels = random_labels(generator, batch=2, length=4)
    loss, _ = distill_loss(logits, labels, None, None, None, 0.7, True)
    assert loss.item() == pytest.approx(mean_token_nll(logits, labels, True)[0].item(), rel=1e-5)
    with pytest.raises(ValueError, match="kd_weight"):
        distill_loss(logits, labels, None, None, None, 1.5, False)


def test_an_all_ignored_batch_gives_zero_loss_and_count():
    logits = torch.randn(1, 3, VOCAB)
    labels = torch.full((1, 3), IGNORE_INDEX)
    ids, probs = one_hot_targets(labels)
    loss, count = distill_loss(logits, labels, ids, probs, None, 0.5, False)
    assert count == 0 and loss.item() == 0.0


# --- counting the target tokens that carry the teacher's distribution (the trainer's "tokens:" line) ----------


class WordTokenizer:
    """One id per word (its length + 10), eos 1: enough for tokenize_examples."""

    eos_token_id = 1

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[len(word) + 10 for word in text.split()] for text in texts]}


TRACED = (("five", -0.1, [["five", -0.1]]),)  # any teacher tokens: the stub teacher_fn below ignores them


def kd_examples() -> list[Example]:
    return [Example("p0", "cot", "Q: one two", "a bb ccc dddd", TRACED),  # 4 target words + eos
            Example("p1", "cot", "Q: three", "ee ff", TRACED),  # 2 + eos
            Example("p2", "cot", "Q: four", "g hh iii", None)]  # no teacher tokens: not counted


def even_ids_aligned(teacher_tokens, target_ids):
    """A teacher distribution on every even target id, one-hot (None) elsewhere."""
    return [((i,), (1.0,)) if i % 2 == 0 else None for i in target_ids]


def test_tokenizing_counts_the_target_tokens_that_carry_a_teacher_distribution():
    tokenized, stats = tokenize_examples(kd_examples(), WordTokenizer(), True, 64, 64, teacher_fn=even_ids_aligned)
    # Targets with eos: [11, 12, 13, 14, 1] and [12, 12, 1]; even ids 12, 14 and 12, 12 carry the teacher's.
    assert (stats.teacher_tokens, stats.target_tokens_with_teacher) == (4, 8)
    assert [sum(t is not None for t in e.teacher) if e.teacher else 0 for e in tokenized] == [2, 2, 0]
    assert "4 of 8 target tokens of traced examples carry the teacher's distribution" in stats.summary()


def test_a_teacher_that_aligns_nothing_reports_zero_tokens_with_its_distribution():
    """What the end-to-end KD tests guard against: traced examples, yet every target token learns one-hot."""
    _, stats = tokenize_examples(kd_examples(), WordTokenizer(), True, 64, 64,
                                 teacher_fn=lambda tokens, ids: [None] * len(ids))
    assert (stats.teacher_tokens, stats.target_tokens_with_teacher) == (0, 8)
    assert "0 of 8 target tokens" in stats.summary()
