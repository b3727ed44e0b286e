"""Finding what to load for inference (run folder, checkpoint folder or plain model) and the inference config."""

from __future__ import annotations

import json

import pytest

from cotdistill import checkpoints as ckpt
from cotdistill.errors import ConfigError
from cotdistill.student import inference_ds_config
from cotdistill.targets import resolve_checkpoint


def make_checkpoint(run_dir, step: int, complete: bool = True):
    folder = ckpt.checkpoint_path(run_dir, step)
    folder.mkdir(parents=True)
    (folder / "state").mkdir()
    if complete:
        ckpt.mark_complete(folder, {"step": step})
    return folder


# --- resolve_checkpoint ----------------------------------------------------------------------------------


def test_run_folder_resolves_to_its_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    make_checkpoint(run, 2)
    newest = make_checkpoint(run, 10)
    make_checkpoint(run, 4)
    make_checkpoint(run, 12, complete=False)  # interrupted save: newer, but never loaded
    found = resolve_checkpoint(run)
    assert found == (run, ckpt.Checkpoint(newest, 10))


def test_run_folder_given_as_string_resolves_too(tmp_path):
    run = tmp_path / "run"
    folder = make_checkpoint(run, 3)
    assert resolve_checkpoint(str(run)) == (run, ckpt.Checkpoint(folder, 3))


def test_complete_checkpoint_folder_resolves_to_itself_and_its_run(tmp_path):
    run = tmp_path / "run"
    older = make_checkpoint(run, 2)
    make_checkpoint(run, 4)
    run_dir, checkpoint = resolve_checkpoint(older)
    assert run_dir == run
    assert checkpoint == ckpt.Checkpoint(older, 2)
    assert checkpoint.meta == {"step": 2}


def test_run_folder_with_only_incomplete_checkpoints_is_refused(tmp_path):
    run = tmp_path / "run"
    make_checkpoint(run, 5, complete=False)
    make_checkpoint(run, 9, complete=False)
    with pytest.raises(ConfigError, match="no complete checkpoint") as err:
        resolve_checkpoint(run)
    assert str(run) in str(err.value)


def test_run_folder_with_an_empty_checkpoints_folder_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_incomplete_step_folder_is_refused_by_name(tmp_path):
    folder = make_checkpoint(tmp_path / "run", 7, complete=False)
    with pytest.raises(ConfigError, match="incomplete checkpoint") as err:
        resolve_checkpoint(folder)
    assert str(folder) in str(err.value)
    assert ckpt.MARKER in str(err.value)


def test_plain_hugging_face_folder_is_not_a_checkpoint(tmp_path):
    model = tmp_path / "exported"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    assert resolve_checkpoint(model) is None


def test_hub_id_that_is_no_local_folder_is_not_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("google/flan-t5-small") is None


# --- inference_ds_config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_inference_config_has_no_optimizer_and_the_requested_stage(stage):
    ds = inference_ds_config("fp32", zero_stage=stage)
    assert "optimizer" not in ds and "scheduler" not in ds
    assert ds["zero_optimization"]["stage"] == stage
    assert "offload_param" not in ds["zero_optimization"]
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["gradient_accumulation_steps"] == 1


@pytest.mark.parametrize(("precision", "bf16", "fp16"),
                         [("bf16", True, False), ("fp16", False, True), ("fp32", False, False)])
def test_inference_config_enables_only_the_requested_half_precision(precision, bf16, fp16):
    ds = inference_ds_config(precision)
    assert ds["bf16"] == {"enabled": bf16}
    assert ds["fp16"] == {"enabled": fp16}


def test_inference_config_defaults_to_bf16_zero3():
    ds = inference_ds_config()
    assert ds["bf16"]["enabled"] is True and ds["zero_optimization"]["stage"] == 3


def test_offload_puts_parameters_on_cpu():
    zero = inference_ds_config("bf16", 3, offload=True)["zero_optimization"]
    assert zero["offload_param"]["device"] == "cpu"
    assert "offload_optimizer" not in zero


def test_relative_checkpoint_path_resolves_to_the_right_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    make_checkpoint(run, 3)
    monkeypatch.chdir(run / "checkpoints")
    run_dir, checkpoint = resolve_checkpoint("step-000003")
    assert run_dir == run.resolve()
    assert checkpoint.step == 3


def test_complete_checkpoint_copied_under_another_name_reads_its_step_from_the_marker(tmp_path):
    folder = make_checkpoint(tmp_path / "run", 7)
    best = folder.rename(tmp_path / "run" / "checkpoints" / "best")
    assert resolve_checkpoint(best)[1].step == 7
