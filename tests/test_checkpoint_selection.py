"""Choosing checkpoints by in- vs out-of-distribution accuracy, the table and the plot."""

from __future__ import annotations

import json

from cotdistill.checkpoint_selection import Selection, plot_selection

ACCURACY = {
    100: {"gsm8k": 0.20, "multiarith": 0.50, "svamp": 0.30},
    200: {"gsm8k": 0.30, "multiarith": 0.45, "svamp": 0.30},
    300: {"gsm8k": 0.35, "multiarith": 0.40, "svamp": 0.20},
}


def chosen() -> Selection:
    selection = Selection({s: dict(v) for s, v in ACCURACY.items()}, "gsm8k")
    selection.choose()
    return selection


def test_best_checkpoint_per_dataset_and_by_average():
    best = chosen().best
    assert best["gsm8k"] == 300
    assert best["multiarith"] == 100
    assert best["average"] == 200  # 0.35 vs 0.333 and 0.317
    assert best["out_of_distribution"] == 100  # ID keeps improving while OOD falls: the paper's trade-off


def test_ties_go_to_the_earliest_checkpoint():
    assert chosen().best["svamp"] == 100


def test_table_marks_the_in_distribution_set_and_lists_every_step():
    table = chosen().table()
    assert "gsm8k (ID)" in table
    for step in (100, 200, 300):
        assert f"| {step} |" in table
    assert "best average: step 200" in table


def test_json_round_trips_the_accuracies():
    data = json.loads(json.dumps(chosen().to_json()))
    assert data["accuracy"]["300"]["gsm8k"] == 0.35 and data["in_distribution"] == "gsm8k"


def test_plot_is_a_png(tmp_path):
    path = plot_selection(chosen(), tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_single_dataset_has_no_out_of_distribution_choice():
    selection = Selection({1: {"synthetic": 0.1}, 2: {"synthetic": 0.2}}, "synthetic")
    selection.choose()
    assert selection.best == {"synthetic": 2, "average": 2}
