"""Every random stream a run draws from (Python, NumPy, torch CPU and CUDA): capture, restore, seed, isolate.

Training draws dropout masks from these streams; a checkpoint carries them so a resumed run draws the same
masks. Evaluation in the middle of training must not draw from them: a sampled (self-consistency) dev eval
would otherwise shift every later dropout mask, so a run that resumed after the eval (which it does not
repeat) would train on different masks than the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """The state of every stream, as plain objects ``torch.save`` can write."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the block on streams seeded with ``seed``, then put every stream back as it was.

    The block's draws are reproducible (the same seed gives the same samples whenever it runs) and leave
    no trace on the caller's streams.
    """
    saved = capture_rng()
    try:
        seed_everything(seed)
        yield
    finally:
        restore_rng(saved)
