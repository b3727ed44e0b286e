"""The embedded experiment: answer-only vs chain-of-thought vs Socratic CoT students, same budget.

Shridhar et al. and Fu et al. report Socratic >= CoT > answer-only for distilled students. This trains
the three on the synthetic word problems from one tiny GPT-2 initialisation (one tokenizer trained on all
three formats' texts), with the same optimizer steps, batch size and schedule, then prints their greedy
held-out accuracies side by side. Usage:
    python benchmarks/format_experiment.py [--steps 1800] [--ranks 2] [--out table.md]
Each arm is `deepspeed launchers/train.py --config recipes/experiment/<arm>.yaml`; results stay in runs/experiment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cotdistill.entrypoints import run_or_exit
from cotdistill.outputs import check_output_file
from cotdistill.report import markdown_table
from cotdistill.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
ARMS = {"answer-only": "answer_only", "cot": "zero_shot_cot", "socratic": "socratic"}
TINY = "runs/experiment/tiny-gpt2"


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1800, help="optimizer steps per arm")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    if args.out:  # checked now: a missing folder must not cost the whole run
        run_or_exit(lambda: check_output_file(args.out))
    bin_dir = Path(sys.executable).parent
    shutil.rmtree(REPO / "runs" / "experiment", ignore_errors=True)
    # One initialisation and tokenizer for all arms, trained on the texts of every format.
    run([str(bin_dir / "cotdistill"), "make-tiny", "gpt2", TINY, "--config", "recipes/experiment/socratic.yaml",
         "data.formats={answer_only: 1, zero_shot_cot: 1, decomposer: 1, solver: 1}"])
    rows = []
    for arm, strategy in ARMS.items():
        started = time.monotonic()
        run([str(bin_dir / "deepspeed"), "--num_gpus", str(args.ranks), "launchers/train.py", "--config",
             f"recipes/experiment/{arm}.yaml", f"train.max_steps={args.steps}", "model.make_tiny="])
        minutes = (time.monotonic() - started) / 60
        held_out = RunFolder(REPO / "runs" / "experiment" / arm).eval_dir() / "held-out"
        metrics = json.loads((held_out / "metrics.json").read_text())
        rows.append([arm, strategy, f"{metrics['correct']}/{metrics['total']}", f"{100 * metrics['accuracy']:.1f}%",
                     f"{minutes:.1f}"])
        print(rows[-1], file=sys.stderr, flush=True)
    table = markdown_table(["student", "evaluated as", "correct", "held-out accuracy", "minutes (train + eval)"],
                           rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
