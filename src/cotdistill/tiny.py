"""Build a tiny student from config settings, atomically: the folder appears only when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cotdistill.config import TinyModelConfig
from cotdistill.errors import ConfigError
from cotdistill.families import family_named, find_family
from cotdistill.modeling import make_tiny


def build_tiny_model(architecture: str, out_dir: str | Path, texts: Iterable[str], tiny: TinyModelConfig,
                     seed: int = 0) -> Path:
    """Train a tokenizer on ``texts`` and save a random model of a registered family (t5, gpt2, llama, qwen2,
    qwen3, ...; `cotdistill.families`) of size ``tiny`` at ``out_dir``."""
    family_named(architecture)  # refused before any folder is made
    with _new_folder(out_dir) as tmp:
        make_tiny(architecture, tmp, texts, vocab_size=tiny.vocab_size, d_model=tiny.d_model,
                  num_layers=tiny.num_layers, num_heads=tiny.num_heads, d_ff=tiny.d_ff,
                  n_positions=tiny.n_positions, dropout=tiny.dropout, seed=seed)
    return Path(out_dir)


@contextmanager
def _new_folder(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling to write into, renamed to ``out_dir`` only when the block finishes."""
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another folder or delete it first")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, out)


def build_random_model(model: str, out_dir: str | Path, texts: Iterable[str], vocab_size: int = 2000,
                       seed: int = 0) -> Path:
    """Save a full-size architecture (a shipped config such as ``gpt2-large``, a hub id or a config file) with
    random weights and a tokenizer trained on ``texts``, atomically.

    For measuring speed and memory of real model sizes without downloading weights. The model keeps its
    published vocabulary size (embedding and LM head as large as the real model's); the tokenizer uses the
    first ``len(tokenizer)`` ids; its family (`cotdistill.families`, which must know the model_type) trains it and
    sets the config's special ids. Built outside DeepSpeed, so its initialisation is transformers' own (a
    random model built inside ``zero.Init`` started at a far too high loss here).
    """
    import torch

    from cotdistill.memory_plan import resolve_model_config
    from cotdistill.modeling import build_from_config

    config = resolve_model_config(model)
    # A model_type outside the registry gets the tokenizer its kind always had (T5's or GPT-2's).
    family = find_family(config) or family_named("t5" if config.is_encoder_decoder else "gpt2")
    if Path(out_dir).exists():  # before the tokenizer is trained
        raise ConfigError(f"{out_dir} already exists; choose another folder or delete it first")
    positions = int(getattr(config, "n_positions", 0) or getattr(config, "max_position_embeddings", 0) or 512)
    tokenizer = family.train_tokenizer(list(texts), vocab_size, positions)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"the trained tokenizer has {len(tokenizer)} tokens, more than {model}'s vocabulary "
                          f"of {config.vocab_size}; lower vocab_size")
    for key, value in family.special_ids(tokenizer).items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = build_from_config(config, family.kind)
        head, embedding = built.get_output_embeddings(), built.get_input_embeddings()
        if head is not None and head.weight is not embedding.weight:
            # transformers draws a separate T5 head like the embedding (std 1): logits of std sqrt(d_model)
            # and a first loss in the hundreds. Std d_model^-0.5 starts near ln V, as a trained run expects.
            with torch.no_grad():
                head.weight.normal_(0.0, head.weight.shape[1] ** -0.5)
    with _new_folder(out_dir) as tmp:
        built.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
