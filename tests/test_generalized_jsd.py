"""GKD's generalized Jensen-Shannon divergence on the teacher's top-k plus a tail bucket (issue 18, item 2):
the invariants the issue names, against a dense reference computed independently."""

from __future__ import annotations

import pytest
import torch

from cotdistill.objectives import generalized_jsd


def sparse_teacher(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of a dense teacher distribution, as a served teacher reveals it."""
    top = probs.topk(k, dim=-1)
    return top.indices, top.values


def reference(p: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """Dense generalized JSD over full (bucketed) distributions, written straight from the definition."""
    def kl(a, b):
        return (a * (a / b).log()).nan_to_num(0.0).sum(-1)
    if beta == 0.0:
        return kl(p, q)
    if beta == 1.0:
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def bucketed(dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    top = dense.gather(-1, ids)
    return torch.cat([top, 1 - top.sum(-1, keepdim=True)], dim=-1)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_divergence_is_non_negative_and_equals_the_dense_reference_on_the_buckets(beta):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.float64) * 2
    teacher = (torch.randn(2, 5, 11, dtype=torch.float64) * 2).softmax(-1)
    ids, probs = sparse_teacher(teacher, 3)
    found = generalized_jsd(logits, ids, probs, beta)
    expected = reference(bucketed(teacher, ids), bucketed(logits.softmax(-1), ids), beta)
    assert found.shape == (2, 5)
    assert (found >= 0).all()
    torch.testing.assert_close(found.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_divergence_is_zero_when_the_student_matches_the_teacher(beta):
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 17)
    ids, probs = sparse_teacher(logits.softmax(-1), 5)
    assert generalized_jsd(logits, ids, probs, beta).abs().max() < 1e-5


def test_a_one_hot_teacher_at_beta_zero_is_the_cross_entropy_of_its_token():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 13)
    tokens = torch.randint(0, 13, (2, 6))
    ids = torch.stack([tokens, torch.zeros_like(tokens)], dim=-1)  # a second, unused slot (probability 0)
    probs = torch.stack([torch.ones(2, 6), torch.zeros(2, 6)], dim=-1)
    cross_entropy = -logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(generalized_jsd(logits, ids, probs, 0.0), cross_entropy, rtol=1e-5, atol=1e-6)


def test_gradients_flow_to_the_student_only_and_are_finite_when_the_top_k_hold_all_the_mass():
    logits = torch.tensor([[[4.0, 1.0, -2.0]]], requires_grad=True)
    ids = torch.tensor([[[0, 1, 2]]])
    probs = torch.tensor([[[0.5, 0.3, 0.2]]])  # the whole vocabulary: both tails are empty
    for beta in (0.0, 0.5, 1.0):
        logits.grad = None
        generalized_jsd(logits, ids, probs, beta).sum().backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_beta_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="beta must be between 0 and 1"):
        generalized_jsd(torch.zeros(1, 1, 2), torch.zeros(1, 1, 1, dtype=torch.long), torch.ones(1, 1, 1), 1.5)


def dense_reference_with_gradient(logits: torch.Tensor, ids: torch.Tensor, p: torch.Tensor,
                                  beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The divergence and its gradient in float64, the student's tail as the sum of its unlisted probabilities."""
    x = logits.detach().double().requires_grad_(True)
    log_q = x.log_softmax(-1)
    listed = torch.zeros_like(log_q, dtype=torch.bool).scatter(-1, ids, True)
    q = torch.cat([log_q.gather(-1, ids).exp(), log_q.masked_fill(listed, float("-inf")).logsumexp(-1, True).exp()],
                  dim=-1)
    value = reference(p.double(), q, beta).sum()
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("confidence", [16.0, 30.0])
def test_a_confident_student_keeps_the_exact_value_and_gradient_of_its_tail(beta, confidence):
    """The student's tail under 1e-7 (1 - sum(q) rounds to 0 in fp32) while the teacher keeps 5% outside its top-2:
    forward KL read 4.77 instead of 1.51 at logit 16, and the tail's logits got no gradient (-0.05 exact)."""
    logits = torch.full((1, 1, 50), -10.0)
    logits[0, 0, 0], logits[0, 0, 1] = confidence, 0.0
    ids, probs = torch.tensor([[[0, 1]]]), torch.tensor([[[0.9, 0.05]]])
    student = logits.clone().requires_grad_(True)
    found = generalized_jsd(student, ids, probs, beta)
    found.sum().backward()
    value, gradient = dense_reference_with_gradient(logits, ids, torch.tensor([[[0.9, 0.05, 0.05]]]), beta)
    torch.testing.assert_close(found.sum().double(), value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.grad.double(), gradient, rtol=1e-3, atol=1e-7)


def test_a_teacher_token_the_student_rules_out_still_pulls_at_beta_zero():
    """log q = -110 for a listed token (exp underflows in fp32): its gradient is still q - p = -0.3."""
    logits = torch.zeros(1, 1, 8)
    logits[0, 0, 1] = -110.0
    student = logits.clone().requires_grad_(True)
    generalized_jsd(student, torch.tensor([[[0, 1]]]), torch.tensor([[[0.6, 0.3]]]), 0.0).sum().backward()
    assert student.grad[0, 0, 1].item() == pytest.approx(-0.3, abs=1e-6)


def test_a_float64_teacher_tail_below_fp32_resolution_is_kept_in_the_reverse_kl():
    """The teacher's listed token at 1 - 3e-9 (1.0 in fp32): given in float64, its tail of 3e-9 is what the
    reverse KL divides by, not the floor."""
    logits = torch.zeros(1, 1, 50)
    logits[0, 0, 0] = 6.0
    ids = torch.tensor([[[0]]])
    p = torch.tensor([[[1 - 3e-9]]], dtype=torch.float64)
    value, _ = dense_reference_with_gradient(logits, ids, torch.cat([p, 1 - p], dim=-1), 1.0)
    assert generalized_jsd(logits, ids, p, 1.0).item() == pytest.approx(value.item(), rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_an_unused_slot_leaves_the_token_its_placeholder_names_in_the_tail(beta):
    """Unused slots hold id 0 with probability 0; token 0's mass still belongs to the student's tail."""
    torch.manual_seed(3)
    logits = torch.randn(1, 1, 9, dtype=torch.float64)
    logits[0, 0, 0] = 3.0  # most of the student's mass on token 0, which the teacher does not list
    ids, probs = torch.tensor([[[3, 5, 0]]]), torch.tensor([[[0.5, 0.2, 0.0]]], dtype=torch.float64)
    listed = torch.tensor([[[3, 5]]])
    expected = reference(torch.tensor([[[0.5, 0.2, 0.3]]], dtype=torch.float64), bucketed(logits.softmax(-1), listed),
                         beta)
    torch.testing.assert_close(generalized_jsd(logits, ids, probs, beta).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_with_the_whole_vocabulary_listed_the_divergence_is_trls_gkd_loss(beta, monkeypatch):
    """The same number as TRL's GKD trainer (`generalized_jsd_loss`, per token, summed over the vocabulary) when the
    teacher lists every token: our beta convention and mixture are TRL's."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental import gkd  # the gkd-peer extra, installed by `make install`

    torch.manual_seed(0)
    vocab = 12
    student, teacher = torch.randn(2, 3, vocab) * 3, torch.randn(2, 3, vocab) * 3
    ids = torch.arange(vocab).expand(2, 3, vocab).contiguous()
    ours = generalized_jsd(student, ids, teacher.softmax(-1), beta)
    trl = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, temperature=1.0, reduction="none").sum(-1)
    torch.testing.assert_close(ours, trl, atol=2e-5, rtol=1e-5)
