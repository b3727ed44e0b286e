"""Checkpoint discovery, completeness markers, rotation, cleanup, and RNG state capture."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from cotdistill import checkpoints as ckpt
from cotdistill.rng import capture_rng, restore_rng


def make(output_dir, step: int, complete: bool = True, meta: dict | None = None):
    folder = ckpt.checkpoint_path(output_dir, step)
    folder.mkdir(parents=True)
    (folder / "payload.bin").write_bytes(b"x" * 8)
    if complete:
        ckpt.mark_complete(folder, meta or {"step": step})
    return folder


def test_checkpoint_path_uses_zero_padded_step_under_checkpoints(tmp_path):
    assert ckpt.checkpoint_path(tmp_path, 50) == tmp_path / "checkpoints" / "step-000050"


def test_no_checkpoint_folder_means_nothing_to_resume(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.complete_checkpoints(tmp_path) == []
    assert ckpt.incomplete_checkpoints(tmp_path) == []
    assert ckpt.rotate(tmp_path, 2) == []
    assert ckpt.remove_incomplete(tmp_path) == []


def test_latest_checkpoint_ignores_folders_without_marker(tmp_path):
    make(tmp_path, 100)
    make(tmp_path, 200, complete=False)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.step == 100
    assert latest.path == ckpt.checkpoint_path(tmp_path, 100)


def test_latest_checkpoint_is_none_when_only_incomplete_ones_exist(tmp_path):
    make(tmp_path, 10, complete=False)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_latest_checkpoint_ignores_non_matching_names(tmp_path):
    make(tmp_path, 30)
    root = ckpt.checkpoint_root(tmp_path)
    for name in ("step-000900.tmp", "old-step-000800", "step-", "step-abc", "global_step700", "latest"):
        folder = root / name
        folder.mkdir()
        ckpt.mark_complete(folder, {"step": 999})
    (root / "step-000950").write_text("a file, not a folder", encoding="utf-8")
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.step == 30
    assert [c.step for c in ckpt.complete_checkpoints(tmp_path)] == [30]
    assert ckpt.incomplete_checkpoints(tmp_path) == []


def test_complete_checkpoints_sorted_by_step_not_by_name(tmp_path):
    for step in (300, 20, 1_000_000, 5):
        make(tmp_path, step)
    make(tmp_path, 50, complete=False)
    steps = [c.step for c in ckpt.complete_checkpoints(tmp_path)]
    assert steps == [5, 20, 300, 1_000_000]
    assert ckpt.latest_checkpoint(tmp_path).step == 1_000_000


def test_checkpoint_meta_reads_the_marker(tmp_path):
    make(tmp_path, 7, meta={"step": 7, "micro_step": 28, "loss": 1.5})
    assert ckpt.latest_checkpoint(tmp_path).meta == {"step": 7, "micro_step": 28, "loss": 1.5}


def test_mark_complete_leaves_only_the_marker(tmp_path):
    folder = tmp_path / "step-000001"
    folder.mkdir()
    ckpt.mark_complete(folder, {"b": 2, "a": 1})
    assert sorted(p.name for p in folder.iterdir()) == [ckpt.MARKER]
    assert json.loads((folder / ckpt.MARKER).read_text(encoding="utf-8")) == {"a": 1, "b": 2}


def test_mark_complete_overwrites_an_existing_marker(tmp_path):
    folder = tmp_path / "step-000001"
    folder.mkdir()
    ckpt.mark_complete(folder, {"v": 1})
    ckpt.mark_complete(folder, {"v": 2})
    assert json.loads((folder / ckpt.MARKER).read_text(encoding="utf-8")) == {"v": 2}
    assert [p.name for p in folder.iterdir()] == [ckpt.MARKER]


def test_rotate_keeps_the_newest_k_complete(tmp_path):
    for step in (10, 20, 30, 40, 50):
        make(tmp_path, step)
    deleted = ckpt.rotate(tmp_path, 2)
    assert deleted == [ckpt.checkpoint_path(tmp_path, s) for s in (10, 20, 30)]
    assert [c.step for c in ckpt.complete_checkpoints(tmp_path)] == [40, 50]
    assert not ckpt.checkpoint_path(tmp_path, 10).exists()


def test_rotate_leaves_incomplete_folders_alone(tmp_path):
    for step in (10, 20, 30):
        make(tmp_path, step)
    make(tmp_path, 40, complete=False)
    make(tmp_path, 5, complete=False)
    ckpt.rotate(tmp_path, 1)
    assert [c.step for c in ckpt.complete_checkpoints(tmp_path)] == [30]
    assert sorted(p.name for p in ckpt.incomplete_checkpoints(tmp_path)) == ["step-000005", "step-000040"]


def test_rotate_with_fewer_than_k_deletes_nothing(tmp_path):
    make(tmp_path, 10)
    make(tmp_path, 20)
    assert ckpt.rotate(tmp_path, 5) == []
    assert [c.step for c in ckpt.complete_checkpoints(tmp_path)] == [10, 20]


def test_rotate_keep_one(tmp_path):
    for step in (1, 2, 3):
        make(tmp_path, step)
    ckpt.rotate(tmp_path, 1)
    assert [c.step for c in ckpt.complete_checkpoints(tmp_path)] == [3]


def test_remove_incomplete_deletes_only_unmarked(tmp_path):
    make(tmp_path, 10)
    make(tmp_path, 20, complete=False)
    make(tmp_path, 30)
    make(tmp_path, 40, complete=False)
    removed = ckpt.remove_incomplete(tmp_path)
    assert removed == [ckpt.checkpoint_path(tmp_path, 20), ckpt.checkpoint_path(tmp_path, 40)]
    assert not ckpt.checkpoint_path(tmp_path, 20).exists()
    assert not ckpt.checkpoint_path(tmp_path, 40).exists()
    assert (ckpt.checkpoint_path(tmp_path, 10) / "payload.bin").is_file()
    assert (ckpt.checkpoint_path(tmp_path, 30) / "payload.bin").is_file()
    assert ckpt.incomplete_checkpoints(tmp_path) == []


def test_remove_incomplete_spares_non_checkpoint_folders(tmp_path):
    make(tmp_path, 10, complete=False)
    other = ckpt.checkpoint_root(tmp_path) / "notes"
    other.mkdir()
    ckpt.remove_incomplete(tmp_path)
    assert other.is_dir()


def draw() -> tuple[list[float], list[float], list[float]]:
    return ([random.random() for _ in range(5)], np.random.rand(5).tolist(), torch.rand(5).tolist())


def test_rng_capture_and_restore_reproduce_all_streams():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draw()
    state = capture_rng()
    expected = draw()
    draw()
    restore_rng(state)
    assert draw() == expected


def test_rng_save_and_load_round_trip_per_rank(tmp_path):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    ckpt.save_rng(tmp_path, 1)
    expected = draw()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draw() != expected
    assert ckpt.load_rng(tmp_path, 1) is True
    assert draw() == expected
    assert (tmp_path / "rng-rank1.pt").is_file()


def test_load_rng_returns_false_for_missing_rank_file(tmp_path):
    ckpt.save_rng(tmp_path, 0)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert ckpt.load_rng(tmp_path, 3) is False
    assert torch.equal(torch.get_rng_state(), before)
