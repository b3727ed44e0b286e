"""One place knows a run folder's layout: training writes through it, and every reader finds a run's parts through
it from the run, a checkpoint or an export inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cotdistill import checkpoints as ckpt
from cotdistill.errors import ConfigError
from cotdistill.run_folder import RunFolder
from cotdistill.runs import resolve_strategy
from cotdistill.targets import resolve_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "cotdistill"


def make_run(root: Path, steps: tuple[int, ...] = (2, 4)) -> RunFolder:
    run = RunFolder(root)
    run.root.mkdir(parents=True)
    run.config_file.write_text("model: {name_or_path: m}\ndata: {formats: {answer_only: 1.0}}\n", encoding="utf-8")
    run.hf_meta.mkdir()
    for step in steps:
        run.checkpoint(step).mkdir(parents=True)
        ckpt.mark_complete(run.checkpoint(step), {"step": step})
    run.final.mkdir()
    return run


def test_the_run_is_found_from_itself_a_checkpoint_and_an_export_inside_it(tmp_path):
    run = make_run(tmp_path / "run")
    for inside in (run.root, run.checkpoint(4), run.final):
        assert RunFolder.containing(inside) == run, inside
    assert RunFolder.containing(tmp_path) is None
    assert RunFolder.of_checkpoint(run.checkpoint(2)) == run


def test_checkpoint_paths_come_from_the_run_folder(tmp_path):
    run = make_run(tmp_path / "run")
    assert ckpt.checkpoint_path(run.root, 4) == run.checkpoint(4) == run.root / "checkpoints" / "step-000004"
    assert [c.path for c in ckpt.complete_checkpoints(run.root)] == [run.checkpoint(2), run.checkpoint(4)]


def test_evaluation_of_a_checkpoint_reads_the_run_it_belongs_to(tmp_path):
    run = make_run(tmp_path / "run")
    found = resolve_checkpoint(run.checkpoint(2))
    assert found == (run.root.resolve(), ckpt.Checkpoint(run.checkpoint(2).resolve(), 2))
    assert resolve_checkpoint(run.root)[1].step == 4, "a run folder means its newest complete checkpoint"
    strategy, _, source = resolve_strategy(run.checkpoint(2))
    assert strategy == "answer_only" and str(run.config_file) in source


def test_a_run_without_complete_checkpoints_is_refused_with_its_path(tmp_path):
    run = make_run(tmp_path / "run", steps=())
    run.checkpoints.mkdir()
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        resolve_checkpoint(run.root)


def test_no_module_but_the_run_folder_spells_the_layout():
    """The layout's names appear in run_folder.py only: no other module of the package's core (the teacher
    package writes data set folders, not runs) joins them onto a path by hand."""
    spelled = ['"hf_meta"', '"run_config.yaml"', '"train_log.jsonl"', '"checkpoint_selection"', '/ "final"',
               '/ "checkpoints"', '/ "tensorboard"', '/ "eval"', "parent.parent"]
    offenders = [f"{path.name}: {name}" for path in SRC.glob("*.py") if path.name != "run_folder.py"
                 for name in spelled if name in path.read_text(encoding="utf-8")]
    assert not offenders, offenders
