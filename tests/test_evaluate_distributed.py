"""The evaluator across 1, 2 and 3 CPU ranks under ZeRO-3, from an exported folder and from a checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_RUN, launch
from cotdistill.generation import shard_batches

pytestmark = pytest.mark.distributed

MAX_NEW = 64
# 11 problems at 6 per rank make two global batches: on 3 ranks the third rank gets no problem at all (an empty
# shard: it runs a dummy batch to keep ZeRO-3's gathers matched and drops its outputs), on 2 ranks the second
# gets a short batch. Every evaluation here, and the run's own dev evaluation, uses these numbers.
PROBLEMS, BATCH = 11, 6
# The run's own held-out problems and dev-evaluation settings, as cotdistill eval flags: the two must agree.
SYNTHETIC = ["--synthetic.eval_size", str(PROBLEMS), "--synthetic.train_size", "256", "--synthetic.operand_max", "9",
             "--synthetic.eval_steps", "0"]
# fp32 throughout (the run and every evaluation of it): this CPU computes it about 2.5x faster than bf16, which it
# has no native kernels for; the bf16 inference path is the modern students' and the GPT-2/T5 training tests'.
EVAL_ARGS = ["--datasets", "synthetic", "--strategy", "zero_shot_cot", *SYNTHETIC, "--batch_size", str(BATCH),
             "--max_new_tokens", str(MAX_NEW), "--precision", "fp32"]


@pytest.fixture(scope="module")
def cot_run(tiny_models, tmp_path_factory) -> Path:
    """A tiny GPT-2 trained long enough on 1-3 step chains that its generations end (EOS) at different lengths."""
    run = tmp_path_factory.mktemp("cot") / "run"
    launch("launchers/train.py", ["--config", "recipes/demo-gpt2-synthetic.yaml", *TINY_RUN,
                                  f"model.name_or_path={tiny_models['gpt2']}", "model.make_tiny=",
                                  f"output_dir={run}", "train.max_steps=150", "train.lr=3e-3", "train.precision=fp32",
                                  "checkpoint.every=75", f"data.synthetic.eval_size={PROBLEMS}",
                                  "data.synthetic.eval_steps=0", f"eval.max_new_tokens={MAX_NEW}",
                                  f"eval.batch_size={BATCH}"])
    return run


def evaluate(target: Path, out: Path, ranks: int, *extra: str) -> list[dict]:
    launch("launchers/evaluate.py", [str(target), *EVAL_ARGS, "--output_dir", str(out), *extra], ranks=ranks)
    lines = (out / "synthetic" / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def predictions(cot_run, tmp_path_factory) -> dict[str, list[dict]]:
    root = tmp_path_factory.mktemp("eval")
    found = {f"export-{n}": evaluate(cot_run / "final", root / f"export-{n}", n) for n in (1, 2, 3)}
    found["checkpoint-2"] = evaluate(cot_run, root / "checkpoint-2", 2, "--zero_stage", "3")  # partitioned
    found["vote-2"] = evaluate(cot_run / "final", root / "vote-2", 2, "--samples", "3", "--temperature", "0.9")
    found["root"] = root
    return found


def test_the_three_rank_evaluation_leaves_one_rank_an_empty_shard():
    """The numbers the 1/2/3-rank comparison uses: fewer global batches than ranks on 3 ranks."""
    order = list(range(PROBLEMS))
    three = [shard_batches(order, BATCH, 3, rank) for rank in range(3)]
    assert [[len(batch) for batch in shard] for shard in three] == [[6], [5], [0]]
    two = [shard_batches(order, BATCH, 2, rank) for rank in range(2)]
    assert [[len(batch) for batch in shard] for shard in two] == [[6], [5]]


def test_generations_stop_at_different_lengths(predictions):
    tokens = [row["generated_tokens"] for row in predictions["export-1"]]
    assert len(set(tokens)) > 1 and min(tokens) < MAX_NEW, tokens


@pytest.mark.parametrize("ranks", [2, 3])
def test_greedy_predictions_are_identical_on_one_two_and_three_ranks(predictions, ranks):
    one, many = predictions["export-1"], predictions[f"export-{ranks}"]
    metrics = json.loads((predictions["root"] / f"export-{ranks}" / "metrics.json").read_text())
    assert metrics["world_size"] == ranks
    if ranks == 3:  # the last rank generated for none of the problems (its shard is one empty batch)
        assert shard_batches(list(range(PROBLEMS)), BATCH, ranks, ranks - 1) == [[]]
    assert [r["index"] for r in many] == list(range(PROBLEMS))
    assert [(r["generated"], r["extracted"], r["correct"]) for r in many] == \
        [(r["generated"], r["extracted"], r["correct"]) for r in one]


def test_metrics_name_the_exact_checkpoint_evaluated(predictions, cot_run):
    metrics = json.loads((predictions["root"] / "checkpoint-2" / "metrics.json").read_text())
    assert metrics["checkpoint"] == str((cot_run / "checkpoints" / "step-000150").resolve())


def test_partitioned_checkpoint_predicts_like_its_replicated_exported_folder(predictions):
    """zero_stage=auto replicates a model that fits (much faster) and predicts exactly what ZeRO-3 does."""
    assert json.loads((predictions["root"] / "export-2" / "metrics.json").read_text())["zero_stage"] == 0
    assert json.loads((predictions["root"] / "checkpoint-2" / "metrics.json").read_text())["zero_stage"] == 3
    assert [r["generated"] for r in predictions["checkpoint-2"]] == [r["generated"] for r in predictions["export-2"]]


def scored(rows: list[dict]) -> list[tuple]:
    return [(r["index"], r["prompt"], r["generated"], r["extracted"], r["extraction"], r["correct"]) for r in rows]


def test_training_dev_eval_and_cotdistill_eval_score_the_same_checkpoint_identically(cot_run, predictions):
    """One evaluation path: the dev evaluation the run logged at its last step equals cotdistill eval of the
    checkpoint at that step (same spec defaults, prompts, generations, extraction and accuracy)."""
    dev = [json.loads(line) for line in (cot_run / "eval" / "held-out" / "predictions.jsonl").read_text().splitlines()]
    assert len(dev) == PROBLEMS
    assert scored(dev) == scored(predictions["checkpoint-2"])
    dev_metrics = json.loads((cot_run / "eval" / "held-out" / "metrics.json").read_text())
    eval_metrics = json.loads((predictions["root"] / "checkpoint-2" / "metrics.json").read_text())["datasets"]
    assert dev_metrics["accuracy"] == eval_metrics["synthetic"]["accuracy"]
    assert dev_metrics["prompt_sha256"] == eval_metrics["synthetic"]["prompt_sha256"]


def test_outputs_hold_metrics_and_a_summary_table(predictions):
    out = predictions["root"] / "export-2"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["strategy"] == "zero_shot_cot"
    synthetic = metrics["datasets"]["synthetic"]
    assert synthetic["total"] == PROBLEMS
    assert synthetic["correct"] == sum(r["correct"] for r in predictions["export-2"])
    assert f"| synthetic | {PROBLEMS} |" in (out / "summary.md").read_text()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cotdistill.cli", "eval", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_unknown_dataset_fails_before_any_model_is_loaded(tmp_path):
    proc = cli(str(tmp_path / "no-model"), "--datasets", "gsm9k", "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "gsm9k" in proc.stderr and "gsm8k" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_model_is_a_clear_error(tmp_path):
    proc = cli(str(tmp_path / "no-model"), "--datasets", "synthetic", "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no-model" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing was evaluated: no empty output folder either


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints" / "step-000004").mkdir(parents=True)
    proc = cli(str(tmp_path / "run"), "--datasets", "synthetic", "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no complete checkpoint" in proc.stderr


def test_self_consistency_samples_and_votes_on_two_ranks(predictions):
    rows = predictions["vote-2"]
    assert [r["index"] for r in rows] == list(range(PROBLEMS))
    assert all(len(r["samples"]) == 3 for r in rows)
    assert any(len(set(r["samples"])) > 1 for r in rows), "sampling at temperature 0.9 should vary"
    for r in rows:
        if r["votes"]:
            assert r["votes"][r["extracted"]] == max(r["votes"].values())


def test_checkpoint_selection_over_a_run_on_two_ranks(cot_run, predictions, tmp_path):
    questions = tmp_path / "tiny.jsonl"
    questions.write_text("".join(json.dumps({"question": f"Ann has {n} apples. Ann finds 2 more apples. How many "
                                                         "apples does Ann have now?", "answer": str(n + 2)}) + "\n"
                                 for n in range(1, 6)))
    out = tmp_path / "selection"
    launch("launchers/eval_checkpoints.py", [str(cot_run), "--datasets", f"synthetic,{questions}", *SYNTHETIC,
                                             "--max_new_tokens", str(MAX_NEW), "--batch_size", str(BATCH),
                                             "--precision", "fp32", "--output_dir", str(out)])
    selection = json.loads((out / "selection.json").read_text())
    assert sorted(map(int, selection["accuracy"])) == [75, 150]
    assert set(selection["accuracy"]["150"]) == {"synthetic", "tiny"}
    assert selection["in_distribution"] == "synthetic"
    assert selection["best"]["average"] in (75, 150)
    assert (out / "accuracy_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "step-000075" / "tiny" / "predictions.jsonl").is_file()
    assert "synthetic (ID)" in (out / "selection.md").read_text()
    # The same evaluation as cotdistill eval (and the run's own dev evaluation) for the same checkpoint; the
    # strategy came from the run's training mixture, not a flag.
    rows = [json.loads(line) for line in (out / "step-000150" / "synthetic" / "predictions.jsonl").read_text()
            .splitlines()]
    assert scored(rows) == scored(predictions["checkpoint-2"])
    assert selection["accuracy"]["150"]["synthetic"] == \
        json.loads((predictions["root"] / "checkpoint-2" / "metrics.json").read_text())["datasets"]["synthetic"][
            "accuracy"]


def test_a_rank_that_dies_ends_the_job_with_an_error_not_a_hang(cot_run):
    proc = launch("tests/scripts/rank_dies.py", [str(cot_run / "final")], timeout=180, expect_ok=False)
    assert proc.returncode != 0


def test_a_run_is_evaluated_on_its_own_synthetic_problems_unless_told_otherwise(cot_run, tmp_path):
    """cotdistill eval of final/ with no --synthetic.* flag generates the held-out problems the run did
    (operands to 9, 11 problems of 1-3 steps), not the generator's defaults (operands to 20), and says so."""
    out = tmp_path / "own"
    proc = launch("launchers/evaluate.py", [str(cot_run / "final"), "--datasets", "synthetic", "--limit", "4",
                                            "--max_new_tokens", "4", "--output_dir", str(out)], ranks=1)
    assert "synthetic problems generated as" in proc.stderr + proc.stdout
    rows = [json.loads(line) for line in (out / "synthetic" / "predictions.jsonl").read_text().splitlines()]
    dev = [json.loads(line) for line in (cot_run / "eval" / "held-out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [r["question"] for r in dev[:4]]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["datasets"]["synthetic"]["synthetic"]["operand_max"] == 9
    assert metrics["checkpoint"] is None and metrics["strategy"] == "zero_shot_cot"  # from the run's mixture
