"""Every bad input stops with one `error:` line naming what and where, exit code 2, and loses nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from cotdistill.errors import DataError
from cotdistill.run_data import RUN_DATASETS, load_run_problems


def train_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launchers/train.py", "--config", "recipes/demo-t5-synthetic.yaml", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = [row for row in proc.stderr.splitlines() if row.startswith("error: ")]
    assert line, proc.stderr[-3000:]
    for needle in needles:
        assert needle in line[-1], line[-1]


def test_unknown_config_key_lists_valid_keys():
    assert_clean_error(train_cli("train.max_stepz=3"), "train.max_stepz", "max_steps", "micro_batch_size")


def test_unknown_dataset_lists_known_ones(tmp_path):
    proc = train_cli("data.dataset=gsm9k", f"output_dir={tmp_path / 'run'}")
    assert_clean_error(proc, "gsm9k", "synthetic", "gsm8k", "strategyqa")


def test_unknown_dataset_error_from_the_library_lists_every_run_dataset():
    from cotdistill.config import DataConfig

    with pytest.raises(DataError) as err:
        load_run_problems(DataConfig(dataset="nope"))
    assert all(name in str(err.value) for name in RUN_DATASETS)


def test_unwritable_output_dir_fails_before_any_model_is_built(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model_dir = tmp_path / "tiny"
    proc = train_cli(f"output_dir={blocker / 'run'}", f"model.name_or_path={model_dir}")
    assert_clean_error(proc, "output_dir", "not writable")
    assert not model_dir.exists()
    assert blocker.read_text() == "not a folder"


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": \n')
    proc = train_cli("data.dataset=jsonl", f"data.path={data}", f"output_dir={tmp_path / 'run'}")
    assert_clean_error(proc, str(data), "line 2")


def test_missing_field_names_field_and_record(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n')
    proc = train_cli("data.dataset=jsonl", f"data.path={data}", f"output_dir={tmp_path / 'run'}")
    assert_clean_error(proc, "answer", str(data), "line 2")


def test_conflicting_deepspeed_value_names_both_places(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"gradient_clipping": 0.5, "zero_optimization": {"stage": 2}}')
    proc = train_cli(f"deepspeed_config={ds}", "train.grad_clip=1.0", f"output_dir={tmp_path / 'run'}")
    assert_clean_error(proc, "gradient_clipping", "train.grad_clip")


def test_recipe_that_does_not_exist_is_named():
    proc = subprocess.run([sys.executable, "launchers/train.py", "--config", "recipes/nope.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert_clean_error(proc, "recipes/nope.yaml")


def test_launcher_lists_keys_without_starting_anything():
    proc = subprocess.run([sys.executable, "launchers/train.py", "--keys"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    assert "train.max_steps = " in proc.stdout and "data.formats = " in proc.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["--keys"], "train.max_steps = "),
    (["train.max_stepz=3"], "unknown config key 'train.max_stepz'"),
    (["model.make_tiny=gpt3"], "model.make_tiny='gpt3' is not one of: , t5, umt5, gpt2, llama"),
])
def test_keys_and_recipe_mistakes_are_answered_before_torch_is_imported(args, says):
    """Importing torch, transformers and DeepSpeed takes seconds; the key list and a recipe's mistakes (the
    student family registry included) need none of them, so they are said at once."""
    recipe = [] if args == ["--keys"] else ["--config", "recipes/demo-t5-synthetic.yaml"]
    proc = subprocess.run([sys.executable, "-X", "importtime", "launchers/train.py", *recipe, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == (0 if args == ["--keys"] else 2), proc.stderr[-3000:]
    assert says in proc.stdout + proc.stderr
    imported = imported_modules(proc.stderr)
    assert "cotdistill.config" in imported
    assert not imported & {"torch", "transformers", "deepspeed"}, sorted(imported & {"torch", "transformers"})


def imported_modules(stderr: str) -> set[str]:
    """The modules a ``python -X importtime`` process imported, from its stderr."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("mistake", ["dataset", "missing-model", "not-a-model", "no-complete-checkpoint",
                                     "unwritable-output"])
@pytest.mark.parametrize("entry", ["cli", "launcher"])
def test_evaluation_mistakes_are_answered_before_torch_is_imported(tmp_path, entry, mistake):
    """A misspelt data set, a model path that is not a model, a run without a complete checkpoint and an output
    folder that cannot be written are all decided by files: cotdistill eval and launchers/evaluate.py say so in one
    line before importing torch, transformers or DeepSpeed (seconds per rank)."""
    model, datasets, out = tmp_path / "model", "synthetic", tmp_path / "out"
    if mistake == "dataset":
        datasets = "gsm9k"
    elif mistake == "not-a-model":
        model.mkdir()
    elif mistake == "no-complete-checkpoint":
        (model / "checkpoints" / "step-000004").mkdir(parents=True)
    elif mistake == "unwritable-output":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    says = {"dataset": "unknown evaluation data set 'gsm9k'", "missing-model": "does not exist",
            "not-a-model": "holds no config.json", "no-complete-checkpoint": "holds no complete checkpoint",
            "unwritable-output": "not writable"}[mistake]
    command = ["-m", "cotdistill.cli", "eval"] if entry == "cli" else ["launchers/evaluate.py"]
    proc = subprocess.run([sys.executable, "-X", "importtime", *command, str(model), "--datasets", datasets,
                           "--output_dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not out.exists()
    imported = imported_modules(proc.stderr)
    assert "cotdistill.config" in imported
    assert not imported & {"torch", "transformers", "deepspeed"}, sorted(imported & {"torch", "transformers"})


def test_existing_output_is_kept_when_a_run_fails(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    proc = train_cli(f"output_dir={run}", "data.dataset=gsm9k")
    assert proc.returncode == 2
    assert (run / "notes.txt").read_text() == "mine"
    assert Path(run).is_dir()
