"""Socratic and distillation training end to end: the unified model, the two-model path, and KD on teacher
log-probs from the data builder. One DeepSpeed rank each (the 2-rank machinery is covered elsewhere)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import TINY_RUN, launch, read_losses
from cotdistill.config import load_build_config
from cotdistill.teacher.builder import build_dataset, load_build_problems
from fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.distributed

SOCRATIC = ["data.formats={decomposer: 1, solver: 1}", "data.per_problem=true"]


def train_args(architecture: str, model: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--config", f"recipes/demo-{architecture}-synthetic.yaml", *TINY_RUN, f"model.name_or_path={model}",
            "model.make_tiny=", f"output_dir={output_dir}", "checkpoint.every=0", *extra]


def predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_a_unified_gpt2_trains_on_both_tasks_and_is_evaluated_socratically(tiny_models, tmp_path):
    out = tmp_path / "unified"
    launch("launchers/train.py", train_args("gpt2", tiny_models["gpt2"], out, *SOCRATIC,
                                            "data.single_format_batches=true",
                                            "train.loss_weights={decomposer: 1.0, solver: 2.0}"), ranks=1)
    losses = read_losses(out)
    assert len(losses) == 6 and all(v == v and v > 0 for v in losses.values())
    metrics = json.loads((out / "eval" / "held-out" / "metrics.json").read_text())
    assert metrics["strategy"] == "socratic" and metrics["total"] == 6
    # The trained weights, not the model training started from, played both parts.
    assert metrics["decomposer"] == metrics["solver"] == f"{out} at step 6 (the training engine's weights)"
    for prediction in predictions(out / "eval" / "held-out"):
        assert isinstance(prediction["subquestions"], list)
        assert len(prediction["subanswers"]) == len(prediction["subquestions"])


def test_the_two_model_path_trains_a_t5_decomposer_and_solver_and_evaluates_them_together(tiny_models,
                                                                                           tmp_path):
    model = tiny_models["t5"]
    launch("launchers/train.py", train_args("t5", model, tmp_path / "decomposer",
                                            "data.formats={decomposer: 1}"), ranks=1)
    launch("launchers/train.py", train_args("t5", model, tmp_path / "solver", "data.formats={solver: 1}"), ranks=1)
    # A solver alone is evaluated on the data set's own sub-questions; a decomposer alone is not evaluated.
    solver_metrics = json.loads((tmp_path / "solver" / "eval" / "held-out" / "metrics.json").read_text())
    assert solver_metrics["strategy"] == "socratic" and solver_metrics["subquestions"] == "gold"
    assert not (tmp_path / "decomposer" / "eval").exists()
    launch("launchers/evaluate.py", [str(tmp_path / "decomposer" / "final"), "--datasets", "synthetic",
                                     "--strategy", "socratic", "--solver", str(tmp_path / "solver" / "final"),
                                     "--limit", "5", "--max_new_tokens", "24", "--max_step_tokens", "16",
                                     "--synthetic.train_size", "256", "--synthetic.eval_size", "5",
                                     "--output_dir", str(tmp_path / "eval")], ranks=1)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    settings = metrics["datasets"]["synthetic"]
    assert settings["solver"] == str(tmp_path / "solver" / "final") and settings["total"] == 5


def scripted_teacher(problems):
    """Correct chain-of-thought texts for the synthetic problems: the gold rationale and answer."""
    by_question = {p.question: p for p in problems}

    def respond(question: str, prompt: str, sample: int) -> str:
        problem = by_question[question]
        return f"{problem.rationale} The answer is {problem.answer}."

    return respond


def test_distribution_matching_trains_on_teacher_logprobs_from_the_builder(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    build = ["problems.dataset=synthetic", "problems.synthetic.train_size=64", "problems.synthetic.operand_max=9",
             "teacher.model=fake", "cot.samples=1", "cot.k_shot=1", "sampling.logprobs=4",
             f"output_dir={tmp_path / 'teacher-data'}"]
    problems = load_build_problems(load_build_config(None, build).problems)
    with FakeOpenAIServer(scripted_teacher(problems)) as server:
        build_dataset(load_build_config(None, [*build, f"teacher.base_url={server.base_url}"]))
    out = tmp_path / "kd"
    proc = launch("launchers/train.py", train_args(
        "gpt2", tiny_models["gpt2"], out, "data.dataset=teacher_data", f"data.path={tmp_path / 'teacher-data'}",
        "data.split=cot", "train.kd_weight=0.5", "train.kd_renormalize=false", "eval.at_end=false"), ranks=1)
    found = re.search(r"(\d+) of (\d+) target tokens of traced examples carry the teacher's distribution",
                      proc.stderr + proc.stdout)
    assert found and 0 < int(found[1]) <= int(found[2]), "no target token learned the teacher's distribution"
    losses = read_losses(out)
    assert len(losses) == 6 and all(v == v and v > 0 for v in losses.values())
