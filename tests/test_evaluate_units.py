"""Evaluation pieces that need no engine: sharding problems over ranks, and the report's metrics and files."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest

from cotdistill.generation import EvalReport, Prediction
from cotdistill.generation import shard_batches as _shard_batches

# --- sharding --------------------------------------------------------------------------------------------


def shuffled(n: int) -> list[int]:
    """A dataset order that is not 0..n-1, so indices and positions cannot be confused."""
    order = list(range(n))
    random.Random(n).shuffle(order)
    return order


def shapes():
    """Uneven and even problem counts (0..10) for batch sizes 1..4."""
    return [(n, batch) for n in range(0, 11) for batch in (1, 2, 3, 4)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_index_lands_on_exactly_one_rank_once(world):
    for n, batch in shapes():
        order = shuffled(n)
        handed_out = [i for rank in range(world) for b in _shard_batches(order, batch, world, rank) for i in b]
        assert sorted(handed_out) == list(range(n)), f"n={n} batch={batch}"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_all_ranks_make_the_same_number_of_calls_with_short_batches_only_at_the_end(world):
    for n, batch in shapes():
        shards = [_shard_batches(shuffled(n), batch, world, rank) for rank in range(world)]
        expected_calls = -(-n // (batch * world))  # ceil
        where = f"n={n} batch={batch}"
        assert [len(s) for s in shards] == [expected_calls] * world, where
        for shard in shards:
            sizes = [len(b) for b in shard]
            assert all(size == batch for size in sizes[:-1]), f"{where}: a short batch before the last: {sizes}"
            assert all(size <= batch for size in sizes[-1:]), where


def test_ranks_share_consecutive_slices_of_the_length_sorted_order():
    order = [9, 4, 7, 0, 2, 8, 1, 3, 6, 5]
    shards = [_shard_batches(order, 2, 3, rank) for rank in range(3)]
    assert shards[0] == [[9, 4], [1, 3]]
    assert shards[1] == [[7, 0], [6, 5]]
    assert shards[2] == [[2, 8], []]


def test_fewer_problems_than_ranks_gives_the_extra_ranks_one_empty_batch():
    assert [_shard_batches([5], 4, 3, rank) for rank in range(3)] == [[[5]], [[]], [[]]]


# --- report ----------------------------------------------------------------------------------------------


def prediction(index: int, correct: bool, tokens: int, extracted: str | None = "4",
               extraction: str = "marker") -> Prediction:
    return Prediction(index=index, id=f"p/{index}", question=f"q{index}?", gold="4", prompt=f"Q: q{index}?\nA:",
                      generated=f"so the answer is {extracted}", extracted=extracted, correct=correct,
                      generated_tokens=tokens, extraction=extraction if extracted else "none")


@pytest.fixture
def report() -> EvalReport:
    preds = [prediction(0, True, 10), prediction(1, False, 20, extracted=None),
             prediction(2, True, 6, extraction="last_number")]
    return EvalReport(preds, seconds=2.0, settings={"format": "zero_shot_cot", "world_size": 2})


def test_report_counts_accuracy_and_mean_generated_tokens(report):
    assert (report.total, report.correct) == (3, 2)
    assert report.accuracy == pytest.approx(2 / 3)
    metrics = report.metrics()
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["correct"] == 2 and metrics["total"] == 3
    assert metrics["mean_generated_tokens"] == pytest.approx(12.0)
    assert metrics["examples_per_s"] == pytest.approx(1.5)
    assert metrics["format"] == "zero_shot_cot" and metrics["world_size"] == 2
    assert metrics["extraction"] == {"last_number": 1, "marker": 1, "none": 1}
    assert "filters" not in metrics  # one extraction reported: no per-filter table


def test_a_protocol_with_several_filters_reports_each_accuracy():
    preds = [prediction(i, strict, 5) for i, strict in enumerate([True, False, False])]
    for p, flexible in zip(preds, [True, True, False], strict=True):
        p.filters = {"strict-match": {"extracted": "4", "correct": p.correct},
                     "flexible-extract": {"extracted": "4", "correct": flexible}}
    metrics = EvalReport(preds, seconds=1.0).metrics()
    assert metrics["filters"] == pytest.approx({"strict-match": 1 / 3, "flexible-extract": 2 / 3})


def test_empty_report_has_zero_accuracy_and_no_division_error():
    metrics = EvalReport([], seconds=0.0).metrics()
    assert metrics["accuracy"] == 0.0 and metrics["total"] == 0
    assert metrics["mean_generated_tokens"] == 0.0 and metrics["examples_per_s"] == 0.0


def test_write_saves_predictions_metrics_and_summary(report, tmp_path):
    folder = tmp_path / "eval" / "step-10"  # parents do not exist yet
    report.write(folder)

    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [asdict(p) for p in report.predictions]
    assert set(rows[0]) == {"index", "id", "question", "gold", "prompt", "generated", "extracted", "correct",
                            "generated_tokens", "samples", "votes", "extraction", "filters"}
    assert rows[1]["extracted"] is None and rows[1]["correct"] is False

    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == report.metrics()

    summary = (folder / "summary.md").read_text(encoding="utf-8")
    assert "| 3 | 2 | 66.7% | 1 | 1 | 12.0 | 1.50 |" in summary  # one answer by fallback, one with none
    assert summary.splitlines()[0].startswith("| problems | correct | accuracy")


def test_write_overwrites_an_earlier_report_in_the_same_folder(report, tmp_path):
    EvalReport([prediction(i, False, 1) for i in range(5)], seconds=1.0).write(tmp_path)
    report.write(tmp_path)
    assert len((tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["total"] == 3


def vote(texts: list[str], gold: str = "4"):
    from cotdistill.evaluate import majority_vote
    from cotdistill.problems.record import Problem

    return majority_vote(Problem("p", "q?", gold, source="gsm8k"), "prompt", 0, texts, 5)


def test_majority_vote_picks_the_most_frequent_answer():
    found = vote(["The answer is 3.", "The answer is 4.", "So 2 + 2 = 4. The answer is 4.", "no idea"])
    assert (found.extracted, found.correct) == ("4", True)
    assert found.votes == {"3": 1, "4": 2}
    assert found.samples[0] == "The answer is 3." and found.generated == "The answer is 3."


def test_majority_vote_tie_goes_to_the_earliest_sample():
    found = vote(["The answer is 5.", "The answer is 4."])
    assert (found.extracted, found.correct) == ("5", False)


def test_majority_vote_without_any_answer_is_wrong():
    found = vote(["hmm", ""])
    assert found.extracted is None and not found.correct and found.votes == {}
