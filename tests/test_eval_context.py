"""Evaluation fits every generation to the model's positions instead of crashing on a long input.

A tiny GPT-2 has 512 positions. A GSM8K prompt plus a generous generation budget, or a question longer
than the whole context, used to end in ``IndexError: index out of range in self`` and a long traceback
(issue 15); now the prompt keeps its end, the new tokens are capped to what is left, and metrics.json
counts both.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA


def run_eval(model, out, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cotdistill.cli", "eval", str(model), "--output_dir", str(out),
           "--precision", "fp32", "--batch_size", "4", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def long_questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    filler = " ".join(f"Box {i} holds {i % 7} red pens and {i % 5} blue pens." for i in range(120))
    rows = [{"question": f"{filler} How many pens are in box {n}?", "answer": str(n % 7 + n % 5)} for n in (3, 4)]
    rows.append({"question": "Ann has 2 pens and buys 3. How many pens?", "answer": "5"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_prompts_longer_than_the_context_keep_their_end_and_the_budget_fits(tiny_models, long_questions, tmp_path):
    proc = run_eval(tiny_models["gpt2"], tmp_path / "out", "--datasets", str(long_questions), "--strategy",
                    "zero_shot_cot", "--max_new_tokens", "400")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    metrics = json.loads((tmp_path / "out" / "long" / "metrics.json").read_text())
    assert metrics["context"] == 512
    assert metrics["prompts_truncated"] == 2  # the two long questions; the short one is whole
    assert metrics["new_tokens_capped"] == 3  # 400 new tokens never fit after a 256-token prompt budget
    rows = [json.loads(line) for line in (tmp_path / "out" / "long" / "predictions.jsonl").read_text().splitlines()]
    assert all(0 < row["generated_tokens"] <= 400 for row in rows)


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "test.jsonl").exists(), reason="needs the shared GSM8K data")
def test_socratic_gsm8k_on_a_512_position_model_runs_to_the_end(tiny_models, tmp_path):
    """The issue's reproduction: cotdistill eval --strategy socratic --datasets gsm8k on the tiny GPT-2."""
    proc = run_eval(tiny_models["gpt2"], tmp_path / "out", "--datasets", "gsm8k", "--strategy", "socratic",
                    "--limit", "4", "--max_new_tokens", "480", "--max_step_tokens", "16",
                    "--data_dir", str(SHARED_DATA))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "gsm8k" / "metrics.json").read_text())
    assert metrics["total"] == 4 and metrics["context"] == 512
    assert metrics["new_tokens_capped"] >= 4  # every decomposition's budget was cut to the positions left
