"""Build a tiny student from config settings, atomically: the folder appears only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from cotdistill.config import TinyModelConfig
from cotdistill.errors import ConfigError
from cotdistill.modeling import make_tiny

ARCHITECTURES = {"t5": "seq2seq", "gpt2": "causal"}


def build_tiny_model(architecture: str, out_dir: str | Path, texts: Iterable[str], tiny: TinyModelConfig,
                     seed: int = 0) -> Path:
    """Train a tokenizer on ``texts`` and save a random T5 or GPT-2 of size ``tiny`` at ``out_dir``."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"tiny architecture {architecture!r} is not one of: {', '.join(ARCHITECTURES)}")
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another folder or delete it first")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny(ARCHITECTURES[architecture], tmp, texts, vocab_size=tiny.vocab_size, d_model=tiny.d_model,
              num_layers=tiny.num_layers, num_heads=tiny.num_heads, d_ff=tiny.d_ff,
              n_positions=tiny.n_positions, dropout=tiny.dropout, seed=seed)
    os.replace(tmp, out)
    return out
