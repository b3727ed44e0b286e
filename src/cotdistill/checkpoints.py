"""Checkpoint folders that are complete or invisible, rotation, and resume discovery.

Layout: ``<output_dir>/checkpoints/step-000050/`` holds DeepSpeed's files (tag ``state``), one
``rng-rank<r>.pt`` per rank, ``data_state.json`` (the epoch and its unconsumed samples) and ``COMPLETE``
(JSON), written last by rank 0 after every rank finished.
A folder without ``COMPLETE`` was interrupted mid-write and is never resumed from. Resuming on another
number of ranks adds ``universal/`` (the same state, unpartitioned; see ``Engine.load_checkpoint``).

A checkpoint that does not fit on its disk is refused before writing where the space it needs is known
(``expected_size``), and otherwise removed once a write fails for lack of space (``is_full_disk``); either
way ``DiskFullError`` says where, how much and what was kept.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.errors import CotDistillError
from cotdistill.run_folder import RunFolder

MARKER = "COMPLETE"
TAG = "state"
DATA_STATE = "data_state.json"
_NAME = re.compile(r"^step-(\d+)$")
_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(CotDistillError):
    """A checkpoint does not fit on its disk; the message names the folder, the space needed and free."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / MARKER).read_text(encoding="utf-8"))


def checkpoint_root(output_dir: str | Path) -> Path:
    return RunFolder(output_dir).checkpoints


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return RunFolder(output_dir).checkpoint(step)


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


def save_rng(folder: Path, rank: int) -> None:
    import torch  # here: finding and reading checkpoints (cotdistill eval's checks) must not import torch

    from cotdistill.rng import capture_rng

    torch.save(capture_rng(), folder / f"rng-rank{rank}.pt")


def missing_rng_ranks(folder: Path, world_size: int) -> list[int]:
    """Ranks of a ``world_size`` job that have no saved RNG state in ``folder``."""
    return [rank for rank in range(world_size) if not (folder / f"rng-rank{rank}.pt").is_file()]


def load_rng(folder: Path, rank: int) -> bool:
    """Restore this rank's RNG streams; False when the checkpoint came from fewer ranks."""
    path = folder / f"rng-rank{rank}.pt"
    if not path.is_file():
        return False
    import torch

    from cotdistill.rng import restore_rng

    restore_rng(torch.load(path, weights_only=False))
    return True


def disk_free(path: str | Path) -> int:
    """Bytes free to this user on the filesystem that holds (or will hold) ``path``."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def folder_size(path: str | Path) -> int:
    """Bytes ``path`` occupies on disk (allocated blocks, not apparent sizes); 0 when it is gone."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we walked
                continue
            total += stat.st_blocks * 512
    return total


def expected_size(output_dir: str | Path, fallback: int) -> int:
    """Bytes the next checkpoint will take: the newest complete one's size on disk, else ``fallback``.

    Every checkpoint of a run holds the same tensors, so the previous one is the best estimate; its
    ``universal/`` conversion is left out (a new save does not write one).
    """
    latest = latest_checkpoint(output_dir)
    if latest is None:
        return fallback
    size = folder_size(latest.path) - folder_size(latest.path / "universal")
    return size if size > 0 else fallback


def prepare_folder(folder: Path) -> None:
    """Create a checkpoint folder to write into; drop a marker left from an older save of the same step,
    so a folder being overwritten never looks complete."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)


def is_full_disk(err: BaseException, free: int, need: int) -> bool:
    """Whether a failed write ran out of space.

    An ``OSError`` carries ENOSPC/EDQUOT; ``torch.save`` only says ``basic_ios::clear: iostream error``,
    so then the disk must be (all but) full right after the failure: less free than 1% of the checkpoint's
    size, and at most 64 MiB.
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _FULL_DISK_ERRNOS:
            return True
        cause = cause.__cause__ or cause.__context__
    return free < min(max(need // 100, 1 << 20), 64 << 20)


def human_size(size: int) -> str:
    """1.64 MB, 12.3 GB: decimal units as ``df -H`` prints them, three digits so close sizes differ."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def full_disk_message(folder: Path, need: int, free: int, kept: Checkpoint | None, keep_last: int,
                      ran_out: bool = False) -> str:
    """One line: which folder, how much the checkpoint needs and how much was free, what was kept.

    ``ran_out``: the write itself failed (the estimate ``need`` was too small), so only ``free`` is certain.
    """
    if ran_out:
        amount = f"more than the {human_size(free)} that was free on that disk (about {human_size(need)} expected)"
    else:
        amount = f"about {human_size(need)} and {human_size(free)} is free on that disk"
    if kept is not None:
        kept_text = (f"the previous complete checkpoint {kept.path} is kept (free space there or lower "
                     f"checkpoint.keep_last={keep_last}, then rerun the same command to resume from it)")
    else:
        kept_text = "there is no earlier complete checkpoint (free space there, then rerun the same command)"
    return f"no space for checkpoint {folder}: it needs {amount}; nothing of it was kept and {kept_text}"
