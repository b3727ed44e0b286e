"""Entry points end with the job's own exit code, whatever the interpreter's teardown would do.

CI once saw a two-rank training job that had saved its checkpoints and printed its summary exit -6
("terminate called without an active exception") during interpreter teardown, with gloo's threads still
running. ``exit_without_teardown`` flushes and leaves with ``os._exit``; these tests make teardown abort on
purpose (an ``atexit`` handler calling ``os.abort``) and check that the code is still 0, 2 or 1 as the job
decided.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, TINY_RUN, launch

ABORTING_TRAIN = "tests/scripts/train_teardown_aborts.py"


def test_finished_training_exits_zero_even_when_teardown_would_abort(tiny_models, tmp_path):
    out = tmp_path / "run"
    proc = launch(ABORTING_TRAIN, ["--config", "recipes/demo-gpt2-synthetic.yaml", *TINY_RUN,
                                   f"model.name_or_path={tiny_models['gpt2']}", "model.make_tiny=",
                                   f"output_dir={out}", "train.max_steps=2", "checkpoint.every=2",
                                   "eval.at_end=false", "checkpoint.export_final=false"], ranks=1)
    assert proc.returncode == 0
    assert "| optimizer steps | 2 |" in proc.stdout  # the summary reached the pipe before the process ended
    assert (out / "train_log.jsonl").read_text().count("\n") == 2


def test_user_error_keeps_exit_code_2_and_its_one_line_when_teardown_would_abort(tmp_path):
    proc = launch(ABORTING_TRAIN, ["--config", "recipes/demo-gpt2-synthetic.yaml", "train.max_steps=-1",
                                   f"output_dir={tmp_path / 'run'}"], ranks=1, expect_ok=False)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr[-2000:]


def run_entry(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` as the main of ``exit_without_teardown`` in a fresh interpreter whose teardown aborts."""
    code = ("import atexit, os, sys\nfrom cotdistill.entrypoints import exit_without_teardown\n"
            "atexit.register(os.abort)\n"
            f"def main():\n    {body}\nexit_without_teardown(main)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_exit_codes_follow_python_conventions_without_teardown():
    assert run_entry("print('done')").returncode == 0
    assert run_entry("print('done')").stdout == "done\n"
    assert run_entry("raise SystemExit(3)").returncode == 3
    message = run_entry("sys.exit('bad input')")
    assert (message.returncode, message.stderr) == (1, "bad input\n")
    crash = run_entry("raise RuntimeError('a bug')")
    assert crash.returncode == 1 and "RuntimeError: a bug" in crash.stderr and "Traceback" in crash.stderr
    assert run_entry("raise KeyboardInterrupt").returncode == 130
