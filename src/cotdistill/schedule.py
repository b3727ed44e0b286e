"""Learning rate as a pure function of the optimizer step, so a resumed run continues the same curve."""

from __future__ import annotations

import math

from cotdistill.config import TrainConfig


def lr_at(step: int, total_steps: int, train: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine, linear or constant decay to ``min_lr_ratio``.

    ``step`` counts optimizer steps already taken (0 for the first update).
    """
    peak, floor = train.lr, train.lr * train.min_lr_ratio
    warmup = min(train.warmup_steps, total_steps)  # a short run (max_steps override) still reaches the peak
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if train.schedule == "constant":
        return peak
    # Decay reaches the floor at step == total_steps (one past the last update, as in transformers), so
    # a floor of 0 never makes the last update a no-op.
    span = max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    if train.schedule == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
