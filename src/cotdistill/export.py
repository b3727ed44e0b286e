"""Hugging Face weights out of a run: from the live engine at the end, or from any saved checkpoint.

Exports land in a temporary sibling folder and are renamed into place when complete, so a folder named
``final`` (or whatever was asked) is either a whole loadable model or absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from cotdistill.engine import Engine, state_dict_from_checkpoint
from cotdistill.errors import ConfigError
from cotdistill.modeling import build_from_config
from cotdistill.run_folder import RunFolder

META_DIR = RunFolder.META


def _publish(tmp: Path, out_dir: Path) -> Path:
    """Swap a finished temporary folder into place, keeping the old export until the swap succeeds."""
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def write_hf_folder(model: torch.nn.Module, state: dict[str, torch.Tensor], tokenizer, out_dir: Path) -> Path:
    """save_pretrained with an explicit state dict (the module's own tensors are ZeRO-3 placeholders)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    return _publish(tmp, out_dir)


def export_from_engine(engine: Engine, tokenizer, out_dir: Path) -> Path:
    """Collective: gather the partitioned weights to rank 0, which writes the folder."""
    state = engine.consolidated_state_dict()
    if engine.is_main:
        write_hf_folder(engine.module, state, tokenizer, out_dir)
    engine.barrier()
    return Path(out_dir)


def save_run_meta(model_path: str, tokenizer, run_dir: Path) -> Path:
    """Keep the model config and tokenizer beside the checkpoints, so any checkpoint can be exported."""
    from transformers import AutoConfig

    meta = RunFolder(run_dir).hf_meta
    tmp = meta.with_name(META_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoConfig.from_pretrained(model_path).save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    return _publish(tmp, meta)


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, dtype: str = "bf16") -> Path:
    """Consolidate a ZeRO checkpoint folder (written by any number of ranks) into a Hugging Face folder.

    Runs on CPU in one process, no DeepSpeed launch: reads the partitioned fp32 master weights.
    """
    from transformers import AutoConfig, AutoTokenizer

    from cotdistill.checkpoints import MARKER, TAG

    folder = Path(checkpoint_dir).resolve()
    if not (folder / MARKER).is_file():
        raise ConfigError(f"{folder} is not a complete cotdistill checkpoint (no {MARKER} marker)")
    meta = RunFolder.of_checkpoint(folder).hf_meta
    if not meta.is_dir():
        raise ConfigError(f"{meta} is missing: the run folder should hold the model config and tokenizer")
    config = AutoConfig.from_pretrained(str(meta))
    model = build_from_config(config, "seq2seq" if config.is_encoder_decoder else "causal")
    state = state_dict_from_checkpoint(folder, TAG)  # fp32 master weights, consolidated on CPU
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not any(m.endswith(t) for t in tied)]
    if missing or unexpected:
        raise ConfigError(f"checkpoint {folder} does not match its config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    model.tie_weights(recompute_mapping=False)  # the ties the model was built with (FlanT5 keeps its head)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model = model.to(torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(meta))
    return write_hf_folder(model, model.state_dict(), tokenizer, Path(out_dir))
