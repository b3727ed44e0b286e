"""Every entry point refuses what would fail later before its work starts: one `error:` line, exit code 2, and no
output folder left behind (issue 15, item 7). No test here trains or evaluates a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from cotdistill.config import load_config, validate_run
from cotdistill.errors import ConfigError
from cotdistill.outputs import check_output_dir, check_output_file, removed_on_failure
from test_bad_input import assert_clean_error, train_cli

BIN = Path(sys.executable).parent
DEMO = "recipes/demo-t5-synthetic.yaml"


def run(*cmd: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COTDISTILL_DATA_DIR": os.environ.get("COTDISTILL_DATA_DIR", "/nonexistent")}
    return subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A file where a folder is wanted: nothing can be created below it, not even by root."""
    path = tmp_path / "a-file"
    path.write_text("not a folder", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# The shared output checks


def test_output_dir_check_creates_nothing(tmp_path: Path):
    target = tmp_path / "new" / "run"
    assert check_output_dir(target) == target
    assert list(tmp_path.iterdir()) == []


def test_output_dir_below_a_file_is_refused_with_the_file_named(blocker: Path):
    with pytest.raises(ConfigError, match=f"not writable: {blocker} is a file"):
        check_output_dir(blocker / "run")


def test_result_file_in_a_missing_folder_is_refused_unless_its_writer_makes_it(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "x.json")
    check_output_file(tmp_path / "missing" / "x.json", make_parent=True)
    with pytest.raises(ConfigError, match="is a folder"):
        check_output_file(tmp_path)


def test_failed_start_removes_the_folders_it_made_and_keeps_what_existed(tmp_path: Path):
    made, kept = tmp_path / "new" / "run", tmp_path / "kept"
    kept.mkdir()
    for folder in (made, kept):
        with pytest.raises(RuntimeError), removed_on_failure(folder, scratch=("hf_meta",)):
            (folder / "hf_meta").mkdir(parents=True)
            raise RuntimeError("start-up failed")
    assert not (tmp_path / "new").exists()  # the parent it made goes too
    assert (kept / "hf_meta").is_dir()


def test_failed_run_with_results_in_its_new_folder_keeps_them(tmp_path: Path):
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError), removed_on_failure(folder, scratch=("hf_meta",)):
        folder.mkdir()
        (folder / "train_log.jsonl").write_text("{}\n", encoding="utf-8")
        raise RuntimeError("failed at step 7")
    assert (folder / "train_log.jsonl").is_file()


# ---------------------------------------------------------------------------------------------------------
# Training and show-config validate the same things


@pytest.mark.parametrize("override,needle", [
    ("data.dataset=teacher_dta", "teacher_dta"),
    ("eval.datasets=[svamp:nope]", "nope"),
    ("deepspeed_config=ds_configs/nope.json", "nope.json"),
    ("train.precision=fp16", "fp16"),  # the recipe builds a tiny T5
])
def test_show_config_refuses_what_training_refuses(override: str, needle: str):
    assert_clean_error(run(str(BIN / "cotdistill"), "show-config", "--config", DEMO, override), needle)


def test_every_shipped_recipe_passes_the_training_validation(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COTDISTILL_DATA_DIR", os.environ.get("COTDISTILL_DATA_DIR", "/data"))
    monkeypatch.chdir(REPO)
    recipes = [p for p in (REPO / "recipes").rglob("*.yaml")
               if not {"data", "experiments"} & set(p.relative_to(REPO / "recipes").parts)]  # not run configs
    assert len(recipes) > 5
    for recipe in recipes:
        validate_run(load_config(recipe))


def test_training_refuses_a_misspelt_dataset_before_making_its_run_folder(tmp_path: Path):
    run_dir = tmp_path / "run"
    assert_clean_error(train_cli("data.dataset=teacher_dta", f"output_dir={run_dir}"), "teacher_dta")
    assert not run_dir.exists()


def test_training_refuses_a_student_folder_that_does_not_exist_before_making_its_run_folder(tmp_path: Path):
    run_dir = tmp_path / "runs" / "x"
    proc = train_cli(f"output_dir={run_dir}", f"model.name_or_path={tmp_path / 'no-model'}", "model.make_tiny=",
                     "data.synthetic.train_size=16", "data.synthetic.eval_size=4")
    assert not (tmp_path / "runs").exists()
    assert_clean_error(proc, "model.name_or_path", "no-model", "does not exist")


def test_run_failing_at_start_up_leaves_no_run_folder(tmp_path: Path):
    """A student folder with a config but no weights passes every check that reads no model and fails once the
    run folder exists (its data tokenized): the folder, and the runs/ folder above it, are removed again."""
    model = tmp_path / "config-only"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
                                                   "vocab_size": 64}))
    run_dir = tmp_path / "runs" / "x"
    proc = train_cli(f"output_dir={run_dir}", f"model.name_or_path={model}", "model.make_tiny=",
                     "data.synthetic.train_size=16", "data.synthetic.eval_size=4", "train.precision=fp32")
    assert "tokens: 16 examples" in proc.stderr + proc.stdout, "the run should have started before failing"
    assert not (tmp_path / "runs").exists()
    assert_clean_error(proc, "config-only", "cannot load model weights")


# ---------------------------------------------------------------------------------------------------------
# build-data, eval, benchmarks


def test_build_data_refuses_an_unwritable_output_dir_before_asking_the_teacher(blocker: Path):
    proc = run(sys.executable, "launchers/build_data.py", "problems.dataset=synthetic", "problems.limit=2",
               "teacher.model=m", "teacher.base_url=http://127.0.0.1:9/v1", "teacher.max_retries=0",
               "teacher.timeout=1", f"output_dir={blocker / 'data'}")
    assert_clean_error(proc, "output_dir", "not writable", str(blocker))


def test_eval_refuses_an_unwritable_output_dir_before_loading_the_model(tmp_path: Path, blocker: Path):
    proc = run(str(BIN / "cotdistill"), "eval", str(tmp_path), "--datasets", "synthetic", "--output_dir",
               str(blocker / "out"))
    assert_clean_error(proc, "output_dir", "not writable", str(blocker))


def test_eval_of_a_folder_without_config_json_says_so(tmp_path: Path):
    model = tmp_path / "not-a-model"
    model.mkdir()
    proc = run(str(BIN / "cotdistill"), "eval", str(model), "--datasets", "synthetic", "--output_dir",
               str(tmp_path / "out"))
    assert_clean_error(proc, str(model), "no config.json")
    assert "model_type" not in proc.stderr


def test_train_throughput_refuses_out_in_a_missing_folder_before_benchmarking(tmp_path: Path):
    out = tmp_path / "missing" / "x.json"
    # An unknown workload too: if --out were not checked first, the script still stops before any training.
    proc = run(sys.executable, "benchmarks/train_throughput.py", "--out", str(out), "--workloads", "none-such")
    assert_clean_error(proc, "--out", str(out.parent), "does not exist")


def test_matmul_peak_refuses_out_in_a_missing_folder_before_measuring(tmp_path: Path):
    out = tmp_path / "missing" / "x.json"
    proc = run(sys.executable, "benchmarks/matmul_peak.py", "--sizes", "32", "--seconds", "0.01", "--out", str(out))
    assert_clean_error(proc, "--out", "does not exist")


def test_every_benchmark_with_an_out_file_checks_it_before_its_work():
    scripts = [p for p in (REPO / "benchmarks").glob("*.py") if '"--out"' in p.read_text(encoding="utf-8")]
    assert len(scripts) >= 8
    for script in scripts:
        text = script.read_text(encoding="utf-8")
        main = text[text.index("def main("):]
        parsed = main.index("parser.parse_args()")
        assert "check_output_file(args.out" in main[parsed:parsed + 300], script.name
