"""Training losses. Labels use -100 for positions that carry no loss (prompt and padding)."""

from __future__ import annotations

import math

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
    teacher reveals, and a one-hot teacher gives the token's cross-entropy at ``beta`` 0.

    In log space, in fp32: the student's tail is the log-sum-exp of its unlisted logits, not ``1 - sum(q)``,
    which rounds to 0 once the student is confident (below ~1e-7) and left forward KL with a wrong value and no
    gradient; a listed token the student gives less than ~1e-38 keeps its gradient. The teacher's tail is
    ``1 - sum(p)`` in float64 (as precise as the probabilities given); a teacher whose listed mass is all of it
    at that precision has no tail, which only the reverse KL must divide by: it is floored at the smallest fp32.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be between 0 and 1, got {beta}")
    used = teacher_probs > 0
    log_q = logits.float().log_softmax(-1)
    log_q_tail, has_tail = _unlisted_log_mass(log_q, teacher_ids, used)
    log_q_all = torch.cat([log_q.gather(-1, teacher_ids), log_q_tail], dim=-1)
    q_present = torch.cat([used, has_tail], dim=-1)

    p_top = torch.where(used, teacher_probs.double(), torch.zeros_like(teacher_probs, dtype=torch.float64))
    p_all = torch.cat([p_top, (1.0 - p_top.sum(-1, keepdim=True)).clamp(min=0.0)], dim=-1)
    p_present = p_all > 0
    log_p_all = p_all.clamp(min=torch.finfo(torch.float64).tiny).log().float().to(log_q.device)
    p_present = p_present.to(log_q.device)
    log_p_all, log_q_all = _absent_as_floor(log_p_all, p_present), _absent_as_floor(log_q_all, q_present)
    if beta == 0.0:
        return _log_kl(log_p_all, p_present, log_q_all)
    if beta == 1.0:
        return _log_kl(log_q_all, q_present, log_p_all)
    log_m = torch.stack([math.log(beta) + log_p_all, math.log(1.0 - beta) + log_q_all]).logsumexp(0)
    return beta * _log_kl(log_p_all, p_present, log_m) + (1.0 - beta) * _log_kl(log_q_all, q_present, log_m)


def _unlisted_log_mass(log_q: torch.Tensor, ids: torch.Tensor, used: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """log of the student's mass outside the used ``ids`` ([B, T, 1]) and whether there is any. One vocabulary-sized
    copy of ``log_q`` (the listed ids set to -inf); an unused slot points at the position's first id instead of
    masking the token its placeholder id names."""
    if ids.size(-1) >= log_q.size(-1):  # a top-k as wide as the vocabulary may cover it: a tail can be empty
        listed = torch.zeros_like(log_q).scatter_add_(-1, ids, used.to(log_q.dtype)) > 0
        has_tail = ~listed.all(-1, keepdim=True)
        unlisted = torch.where(has_tail, log_q.masked_fill(listed, float("-inf")), torch.zeros_like(log_q))
        return unlisted.logsumexp(-1, keepdim=True), has_tail
    unlisted = log_q.scatter(-1, torch.where(used, ids, ids[..., :1]), float("-inf"))
    return unlisted.logsumexp(-1, keepdim=True), torch.ones_like(used[..., :1])


_LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)  # about -87.3: log of the smallest normal fp32


def _absent_as_floor(log_x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``log_x`` with its absent entries (unused slots, a missing tail) at the smallest fp32's log: finite, so a
    present entry over an absent one stays finite and no -inf - -inf reaches a gradient. Present entries are
    kept as they are, however small (clamping them would cut their gradient)."""
    return torch.where(present, log_x, torch.full_like(log_x, _LOG_FLOOR))


def _log_kl(log_a: torch.Tensor, a_present: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last dimension from finite log-probabilities, summed over the entries ``a`` has
    (0 log 0 = 0, also in the gradient)."""
    safe_a = torch.where(a_present, log_a, torch.zeros_like(log_a))
    safe_b = torch.where(a_present, log_b, torch.zeros_like(log_b))
    terms = safe_a.exp() * (safe_a - safe_b)
    return torch.where(a_present, terms, torch.zeros_like(terms)).sum(-1)
