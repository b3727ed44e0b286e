"""A run killed with ``kill -9`` (the whole 2-rank job) at several points and rerun ends with exactly the model of
an uninterrupted run: every logged loss, learning rate and gradient norm, the exported safetensors byte for byte,
the dev evaluations and the held-out predictions.

Exact, not approximate: on CPU the same ranks run the same kernels on the same inputs in the same order, so any
difference means some state did not carry over. The student has dropout 0.1 (so the RNG streams must carry over)
and samples its dev evaluations (self-consistency draws from the RNG) at a step that is also a checkpoint: the
uninterrupted run evaluates there and the resumed run, starting after it, does not, so evaluation must not
touch training's streams. The kills: before the first checkpoint, during a checkpoint write, and after one;
the last start resumes 30 steps before the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import kill_job_when, launch, synthetic_texts
from cotdistill import checkpoints as ckpt

pytestmark = pytest.mark.distributed

STEPS = 40
EVERY = 5  # checkpoint interval
EVAL_EVERY = 5  # dev evaluation: at every checkpoint, so each resume starts after an evaluation it does not repeat
# Row keys that measure the machine's speed rather than the computation.
TIMING_KEYS = ("time", "samples_per_s", "tokens_per_s", "step_time_s")


def train_args(model: Path, output_dir: Path) -> list[str]:
    return ["--config", "recipes/demo-gpt2-synthetic.yaml", f"model.name_or_path={model}", "model.make_tiny=",
            f"output_dir={output_dir}", "data.synthetic.train_size=256", "data.synthetic.eval_size=6",
            "train.micro_batch_size=4", f"train.max_steps={STEPS}", "train.warmup_steps=4", "train.lr=2e-3",
            f"checkpoint.every={EVERY}", "checkpoint.keep_last=2", f"eval.every={EVAL_EVERY}", "eval.limit=2",
            "eval.samples=2", "eval.temperature=1.0", "eval.max_new_tokens=16", "eval.batch_size=2"]


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def computed(rows: list[dict]) -> list[dict]:
    """The rows without their timings: step, loss, lr, grad_norm, padding fraction."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def last_step(run: Path) -> int:
    path = run / "train_log.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def incomplete(run: Path, step: int) -> bool:
    folder = ckpt.checkpoint_path(run, step)
    return folder.is_dir() and any(folder.iterdir()) and not (folder / ckpt.MARKER).exists()


def kill_when(run: Path, model: Path, condition: Callable[[], bool]) -> None:
    """Start the 2-rank job, wait until ``condition`` holds, then SIGKILL its whole process group."""
    kill_job_when("launchers/train.py", train_args(model, run), run.parent / f"{run.name}-killed.log", condition)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from cotdistill.config import TinyModelConfig
    from cotdistill.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("resume-exact")
    size = TinyModelConfig(d_model=64, num_layers=2, num_heads=2, d_ff=128, vocab_size=320, dropout=0.1)
    model = build_tiny_model("gpt2", root / "model", synthetic_texts("gpt2"), size, seed=0)
    launch("launchers/train.py", train_args(model, root / "full"))

    killed = root / "killed"
    killed.mkdir()
    kills = []
    kill_when(killed, model, lambda: last_step(killed) >= 2)  # before the first checkpoint
    kills.append(("before the first checkpoint", last_step(killed), ckpt.latest_checkpoint(killed)))
    # During a checkpoint write: the folder of step 10 holds files, its COMPLETE marker does not exist (yet). A
    # write that finished between the look and the kill is retried at the next checkpoint.
    for step in (10, 15):
        kill_when(killed, model, lambda s=step: incomplete(killed, s) or last_step(killed) > s)
        if incomplete(killed, step):
            kills.append(("during a checkpoint write", step, ckpt.latest_checkpoint(killed)))
            break
    # 3 steps after the newest checkpoint (the rows of an earlier start beyond it are dropped first).
    kill_when(killed, model, lambda: (c := ckpt.latest_checkpoint(killed)) is not None
              and last_step(killed) == c.step + 3)
    kills.append(("after a checkpoint", last_step(killed), ckpt.latest_checkpoint(killed)))
    final = launch("launchers/train.py", train_args(model, killed))
    return {"full": root / "full", "killed": killed, "kills": kills, "log": final.stdout + final.stderr}


def test_the_job_was_killed_before_during_and_after_a_checkpoint(runs):
    before, during, after = runs["kills"]
    assert before[0] == "before the first checkpoint" and before[2] is None
    assert during[0] == "during a checkpoint write", "no kill landed inside a checkpoint write"
    assert after[0] == "after a checkpoint" and after[1] == after[2].step + 3
    resumed_at = after[2].step
    assert STEPS - resumed_at >= 30
    assert f"(step {resumed_at}, epoch 0" in runs["log"], "the last start resumes from that checkpoint"


def test_every_step_of_the_killed_run_logs_exactly_the_uninterrupted_loss_lr_and_grad_norm(runs):
    full, killed = computed(logged(runs["full"])), computed(logged(runs["killed"]))
    assert [row["step"] for row in killed] == list(range(1, STEPS + 1))
    mismatched = [(a["step"], a["loss"] - b["loss"], a["lr"] - b["lr"]) for a, b in zip(full, killed, strict=True)
                  if a != b]
    assert not mismatched, mismatched
    assert len({row["lr"] for row in full}) > STEPS // 2, "the schedule moves (warmup then cosine)"


def test_exported_weights_are_byte_identical(runs):
    full = (runs["full"] / "final" / "model.safetensors").read_bytes()
    assert full == (runs["killed"] / "final" / "model.safetensors").read_bytes()


def test_sampled_dev_evaluations_and_held_out_predictions_are_identical(runs):
    for folder in ("eval/step-000030/held-out", "eval/step-000035/held-out",
                   "eval/held-out"):
        full = (runs["full"] / folder / "predictions.jsonl").read_text()
        assert full == (runs["killed"] / folder / "predictions.jsonl").read_text(), folder
    samples = [json.loads(line)["samples"] for line in
               (runs["full"] / "eval/step-000030/held-out/predictions.jsonl").read_text().splitlines()]
    assert all(len(s) == 2 for s in samples), "the dev evaluation samples (self-consistency)"
