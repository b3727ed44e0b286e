"""train_log.jsonl holds each optimizer step once, however a run was stopped and restarted.

Every start trims the log to the step training resumes after (0 without a checkpoint): those steps are
trained again and logged again. The 2-rank restart from a run killed before its first checkpoint is in
tests/test_train_distributed.py (the ``t5_runs`` fixture seeds such a log).
"""

from __future__ import annotations

import json
from pathlib import Path

from cotdistill.config import RunConfig
from cotdistill.run_folder import RunFolder
from cotdistill.train import _forget_logged_steps_after, _tensorboard


def row(step: int, loss: float = 1.0) -> str:
    return json.dumps({"step": step, "loss": loss, "time": 0.0})


def write_log(path: Path, lines: list[str], newline_at_end: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""), encoding="utf-8")
    return path


def logged_steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_start_without_checkpoint_forgets_every_row_of_earlier_attempts(tmp_path):
    log = write_log(tmp_path / "train_log.jsonl", [row(s) for s in (*range(1, 10), *range(1, 10))])
    assert _forget_logged_steps_after(log, 0) == 18
    assert log.read_text() == ""


def test_a_resume_keeps_rows_up_to_the_checkpoint_step_and_drops_later_ones(tmp_path):
    log = write_log(tmp_path / "train_log.jsonl", [row(s) for s in range(1, 8)])
    assert _forget_logged_steps_after(log, 5) == 2
    assert logged_steps(log) == [1, 2, 3, 4, 5]


def test_a_row_torn_by_kill_9_is_dropped_instead_of_breaking_the_next_start(tmp_path):
    """kill -9 mid-write leaves half a JSON object and no newline; the next row must not be glued onto it."""
    log = write_log(tmp_path / "train_log.jsonl", [row(1), row(2), '{"step": 3, "loss": 4.'], newline_at_end=False)
    assert _forget_logged_steps_after(log, 0) == 3
    write_log(log, [row(1), row(2), '{"step": 3, "loss": 4.'], newline_at_end=False)
    assert _forget_logged_steps_after(log, 2) == 1
    with open(log, "a", encoding="utf-8") as fh:  # what the training loop does next
        fh.write(row(3) + "\n")
    assert logged_steps(log) == [1, 2, 3]


def test_a_last_row_that_lost_only_its_newline_is_kept_and_ended(tmp_path):
    log = write_log(tmp_path / "train_log.jsonl", [row(1), row(2)], newline_at_end=False)
    assert _forget_logged_steps_after(log, 2) == 0
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(row(3) + "\n")
    assert logged_steps(log) == [1, 2, 3]


def test_tensorboard_after_a_restart_shows_each_step_once(tmp_path):
    """The writer of a start at step 2 purges the later events an earlier start logged, as the JSONL log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = RunConfig(output_dir=str(tmp_path))
    for start, steps in ((0, (1, 2, 3, 4)), (2, (3, 4, 5))):
        writer = _tensorboard(RunFolder(tmp_path), config, start)
        for step in steps:
            writer.add_scalar("train/loss", float(start), step)
        writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 0.0), (2, 0.0), (3, 2.0), (4, 2.0),
                                                                        (5, 2.0)]


def test_steps_logged_twice_by_an_older_version_keep_their_last_row(tmp_path):
    """Old versions appended a restart's rows again; the last row of a step is the one the checkpoint saw."""
    lines = [row(s, loss=9.0) for s in range(1, 4)] + [row(s, loss=float(s)) for s in range(1, 6)] + [""]
    log = write_log(tmp_path / "train_log.jsonl", lines)
    assert _forget_logged_steps_after(log, 4) == len(lines) - 4
    assert [json.loads(line)["loss"] for line in log.read_text().splitlines()] == [1.0, 2.0, 3.0, 4.0]


def test_a_clean_log_is_left_untouched(tmp_path):
    log = write_log(tmp_path / "train_log.jsonl", [row(s) for s in range(1, 4)])
    before = log.stat().st_mtime_ns
    assert _forget_logged_steps_after(log, 3) == 0
    assert log.stat().st_mtime_ns == before
    assert not list(tmp_path.glob("*.tmp"))


def test_no_log_yet_is_nothing_to_forget(tmp_path):
    assert _forget_logged_steps_after(tmp_path / "train_log.jsonl", 0) == 0
    assert not (tmp_path / "train_log.jsonl").exists()
