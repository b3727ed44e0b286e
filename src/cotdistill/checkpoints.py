"""Checkpoint folders that are complete or invisible, rotation, and resume discovery.

Layout: ``<output_dir>/checkpoints/step-000050/`` holds DeepSpeed's files (tag ``state``), one
``rng-rank<r>.pt`` per rank, ``data_state.json`` (the epoch and its unconsumed samples) and ``COMPLETE``
(JSON), written last by rank 0 after every rank finished.
A folder without ``COMPLETE`` was interrupted mid-write and is never resumed from. Resuming on another
number of ranks adds ``universal/`` (the same state, unpartitioned; see ``Engine.load_checkpoint``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE"
TAG = "state"
DATA_STATE = "data_state.json"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / MARKER).read_text(encoding="utf-8"))


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step:06d}"


def _scan(output_dir: str | Path) -> list[tuple[Path, int, bool]]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir():
            found.append((child, int(match.group(1)), (child / MARKER).is_file()))
    return sorted(found, key=lambda item: item[1])


def complete_checkpoints(output_dir: str | Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first."""
    return [Checkpoint(path, step) for path, step, done in _scan(output_dir) if done]


def incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    return [path for path, _, done in _scan(output_dir) if not done]


def latest_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def mark_complete(folder: Path, meta: dict[str, Any]) -> None:
    """Write the marker atomically (temp file + rename), so a reader never sees half a marker."""
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def rotate(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; return what was deleted."""
    done = complete_checkpoints(output_dir)
    doomed = [c.path for c in done[:-keep_last]] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Drop folders an interrupted save left behind (they hold nothing resumable)."""
    stale = incomplete_checkpoints(output_dir)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_data_state(folder: Path, state: dict[str, Any]) -> None:
    """The data position (rank 0 writes it; it is the same on every rank), before the COMPLETE marker."""
    tmp = folder / (DATA_STATE + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, folder / DATA_STATE)


def load_data_state(folder: Path) -> dict[str, Any] | None:
    """The saved data position, or None for a checkpoint written before it was saved."""
    path = folder / DATA_STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def capture_rng() -> dict[str, Any]:
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


def save_rng(folder: Path, rank: int) -> None:
    torch.save(capture_rng(), folder / f"rng-rank{rank}.pt")


def missing_rng_ranks(folder: Path, world_size: int) -> list[int]:
    """Ranks of a ``world_size`` job that have no saved RNG state in ``folder``."""
    return [rank for rank in range(world_size) if not (folder / f"rng-rank{rank}.pt").is_file()]


def load_rng(folder: Path, rank: int) -> bool:
    """Restore this rank's RNG streams; False when the checkpoint came from fewer ranks."""
    path = folder / f"rng-rank{rank}.pt"
    if not path.is_file():
        return False
    restore_rng(torch.load(path, weights_only=False))
    return True
