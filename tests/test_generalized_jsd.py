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
