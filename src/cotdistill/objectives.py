"""Training losses. Labels use -100 for positions that carry no loss (prompt and padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_for_causal(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's logits at position t with the label at t+1."""
    return logits[:, :-1, :], labels[:, 1:]


def predicting_positions(labels: torch.Tensor) -> int:
    """Where a causal LM's useful logits start: one before the batch's earliest labelled token.

    Logits at prompt positions before it predict nothing the loss uses; passing ``logits_to_keep =
    seq_len - start`` to the model skips their LM-head matmul and log-softmax (over the whole vocabulary,
    the largest single cost per position for GPT-2), and ``labels[:, start:]`` stays aligned with them.
    """
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    return max(int(labelled[0]) - 1, 0) if len(labelled) else 0


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood over labelled tokens, and how many there were.

    Returning the sum and the count (not the mean) lets the caller average over exactly the target
    tokens of a batch; logits are upcast to fp32 because bf16 log-softmax loses the small differences
    that matter late in training.
    """
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_labels = labels.reshape(-1)
    loss_sum = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (flat_labels != IGNORE_INDEX).sum()
    return loss_sum, count


def mean_token_nll(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, int]:
    """Mean NLL over target tokens of one micro-batch (shifting for causal LMs), and the token count."""
    if causal:
        logits, labels = shift_for_causal(logits, labels)
    loss_sum, count = token_nll(logits, labels)
    n = int(count.item())
    return loss_sum / max(n, 1), n


def kd_token_loss(logits: torch.Tensor, target_ids: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p || q) between a sparse teacher distribution p and the student's softmax q, shape [B, T].

    p is given as K (id, probability) pairs per position (`target_ids`, `target_probs`: [B, T, K]); entries
    with probability 0 contribute nothing (0 log 0 = 0), so padding slots and ignored positions (all zero)
    give 0. With a one-hot p this is exactly the token's NLL. Computed in fp32, like `token_nll`.
    """
    log_q = logits.float().log_softmax(-1).gather(-1, target_ids)
    p = target_probs.float()
    return _sparse_kl(p, log_q)


def _sparse_kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k) with the p_k = 0 terms dropped (also from the gradient)."""
    cross = torch.where(p > 0, p * log_q, torch.zeros_like(log_q))
    return (torch.xlogy(p, p) - cross).sum(-1)


def one_hot_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-hot target of every labelled position as ([B, T, 1] ids, [B, T, 1] probs).

    Ignored positions get id 0 with probability 0, so they stay valid gather indices yet add no loss.
    """
    labelled = labels != IGNORE_INDEX
    ids = torch.where(labelled, labels, torch.zeros_like(labels)).unsqueeze(-1)
    return ids, labelled.float().unsqueeze(-1)


def distill_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target_ids: torch.Tensor | None,
    target_probs: torch.Tensor | None,
    token_weights: torch.Tensor | None,
    kd_weight: float,
    causal: bool,
) -> tuple[torch.Tensor, int]:
    """Mean of ``weight * ((1 - kd_weight) * NLL + kd_weight * KL(teacher || student))`` over labelled tokens.

    The sum is divided by the number of labelled tokens, not by the weights, so a loss weight of 2 for a
    task really doubles its pull on the gradient. Positions without a teacher distribution must carry the
    one-hot target (the collator does that; `target_ids`/`target_probs` None means one-hot everywhere), so
    answer-only examples reduce to plain NLL. Causal models are shifted exactly like `shift_for_causal`
    (logits at t predict labels, targets and weights at t + 1). Returns (loss, token count) like
    `mean_token_nll`.
    """
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be between 0 and 1, got {kd_weight}")
    if target_ids is None or target_probs is None:
        target_ids, target_probs = one_hot_targets(labels)
    if causal:
        logits, labels = shift_for_causal(logits, labels)
        target_ids, target_probs = target_ids[:, 1:], target_probs[:, 1:]
        token_weights = None if token_weights is None else token_weights[:, 1:]
    labelled = labels != IGNORE_INDEX
    log_q = logits.float().log_softmax(-1)
    per_token = torch.zeros(labels.shape, dtype=log_q.dtype, device=log_q.device)
    if kd_weight < 1.0:
        nll = -log_q.gather(-1, torch.where(labelled, labels, torch.zeros_like(labels)).unsqueeze(-1)).squeeze(-1)
        per_token = per_token + (1.0 - kd_weight) * nll
    if kd_weight > 0.0:
        kl = _sparse_kl(target_probs.to(log_q.device).float(), log_q.gather(-1, target_ids.to(log_q.device)))
        per_token = per_token + kd_weight * kl
    if token_weights is not None:
        per_token = per_token * token_weights.to(per_token.device).float()
    per_token = torch.where(labelled, per_token, torch.zeros_like(per_token))
    count = int(labelled.sum().item())
    return per_token.sum() / max(count, 1), count


def generalized_jsd(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_probs: torch.Tensor,
                    beta: float) -> torch.Tensor:
    """Per-position generalized Jensen-Shannon divergence between a sparse teacher and the student, shape [B, T].

    GKD's divergence (Agarwal et al. 2024), with TRL's convention for ``beta``: 0 is the forward KL(teacher ||
    student), 1 the reverse KL(student || teacher), and in between ``beta KL(P || M) + (1 - beta) KL(Q || M)``
    with the mixture ``M = beta P + (1 - beta) Q``. The teacher is known only on its top-k tokens
    (``teacher_ids``/``teacher_probs``: [B, T, K], slots with probability 0 unused), so both distributions are
    compared on those K tokens plus one tail bucket holding the rest of each one's mass: exact for what the
    teacher reveals, and a one-hot teacher gives the token's cross-entropy at ``beta`` 0. In fp32.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be between 0 and 1, got {beta}")
    used = teacher_probs > 0
    p_top = torch.where(used, teacher_probs.float(), torch.zeros_like(teacher_probs, dtype=torch.float32))
    log_q_top = logits.float().log_softmax(-1).gather(-1, teacher_ids)
    q_top = torch.where(used, log_q_top.exp(), torch.zeros_like(log_q_top))
    p = torch.cat([p_top, (1.0 - p_top.sum(-1, keepdim=True)).clamp(min=0.0)], dim=-1)
    q = torch.cat([q_top, (1.0 - q_top.sum(-1, keepdim=True)).clamp(min=0.0)], dim=-1)
    if beta == 0.0:
        return _bucket_kl(p, q)
    if beta == 1.0:
        return _bucket_kl(q, p)
    m = beta * p + (1.0 - beta) * q
    return beta * _bucket_kl(p, m) + (1.0 - beta) * _bucket_kl(q, m)


def _bucket_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last dimension, with 0 log 0 = 0 (also in the gradient: a student bucket of exactly 0,
    the tail when its top-k hold all its mass, must not give 0/0) and b floored at the smallest fp32 (a > 0 where
    b underflowed to 0 would be infinite)."""
    tiny = torch.finfo(torch.float32).tiny
    terms = a * (a.clamp(min=tiny).log() - b.clamp(min=tiny).log())
    return torch.where(a > 0, terms, torch.zeros_like(terms)).sum(-1)
