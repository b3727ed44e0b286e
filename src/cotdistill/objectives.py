"""Training losses. Labels use -100 for positions that carry no loss (prompt and padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_for_causal(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's logits at position t with the label at t+1."""
    return logits[:, :-1, :], labels[:, 1:]


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
