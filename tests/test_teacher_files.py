"""Importing teacher traces written elsewhere: matching to problems by question, then grading them."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA
from cotdistill.answers import answers_match, infer_kind
from cotdistill.errors import DataError
from cotdistill.problems import load_problems
from cotdistill.problems.record import Problem
from cotdistill.teacher.files import import_trace_files, question_key
from cotdistill.teacher.grading import TaskStats, grade_cot

TRACES = SHARED_DATA / "teacher_traces"


def _problem(pid: str, question: str, answer: str, source: str = "gsm8k") -> Problem:
    return Problem(id=pid, question=question, answer=answer, source=source)


def _write(path, records, jsonl: bool = False):
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _grade_all(problems, samples) -> tuple[TaskStats, list[dict]]:
    stats, records = TaskStats(), []
    for problem in problems:
        if problem.id in samples:
            graded = grade_cot(problem, samples[problem.id], len(samples[problem.id]))
            stats.add(graded.stats)
            records += graded.records
    return stats, records


@pytest.fixture(scope="module")
def gsm8k_train() -> list[Problem]:
    return load_problems("gsm8k", "train", data_dir=SHARED_DATA)


# ---------------------------------------------------------------------------------------------------------
# Small hand-made files


def test_question_key_ignores_case_and_whitespace():
    assert question_key("  How MANY\tapples\n are  left? ") == question_key("how many apples are left?")
    assert question_key("How many apples?") != question_key("How many apple?")


def test_traces_match_problems_ignoring_case_and_whitespace(tmp_path):
    problems = [_problem("p/0", "Sam has 3 apples. How many?", "3"), _problem("p/1", "What is 2 + 2?", "4")]
    file = _write(tmp_path / "t.json", [
        {"instruction": "  SAM has 3 apples.\nHow   many? ", "output": "The answer is 3."},
        {"instruction": "what is 2 + 2?", "output": "The answer is 4."},
        {"instruction": "What is 2 + 3?", "output": "The answer is 5."},
    ])
    samples, stats = import_trace_files([file], problems)
    assert stats.as_dict() == {"files": 1, "traces": 3, "matched": 2, "unmatched": 1, "ambiguous": 0}
    assert samples["p/0"] == [(0, {"text": "The answer is 3.", "finish_reason": "", "origin": "t.json:record 0"})]
    assert [s["text"] for _, s in samples["p/1"]] == ["The answer is 4."]


def test_a_question_with_two_different_gold_answers_is_ambiguous(tmp_path):
    problems = [_problem("a/0", "How many legs?", "4"), _problem("a/1", "how many  legs?", "8"),
                _problem("b/0", "Same twice?", "1"), _problem("b/1", "Same twice?", "1")]
    file = _write(tmp_path / "t.jsonl", [
        {"instruction": "How many legs?", "output": "The answer is 4."},
        {"instruction": "Same twice?", "output": "The answer is 1."},
    ], jsonl=True)
    samples, stats = import_trace_files([file], problems)
    assert stats.ambiguous == 1 and stats.matched == 1 and stats.unmatched == 0
    assert set(samples) == {"b/0"}  # the same question with the same answer goes to its first problem
    assert samples["b/0"][0][1]["origin"] == "t.jsonl:line 2"


def test_a_question_repeated_three_times_stays_ambiguous(tmp_path):
    problems = [_problem("a/0", "Q?", "4"), _problem("a/1", "Q?", "8"), _problem("a/2", "Q?", "4")]
    file = _write(tmp_path / "t.json", [{"instruction": "Q?", "output": "The answer is 4."}])
    samples, stats = import_trace_files([file], problems)
    assert stats.ambiguous == 1 and samples == {}


def test_two_files_number_samples_in_file_order(tmp_path):
    problems = [_problem("p/0", "Q zero?", "1"), _problem("p/1", "Q one?", "2")]
    first = _write(tmp_path / "first.json", [{"instruction": "Q zero?", "output": "A"},
                                             {"instruction": "Q one?", "output": "B"},
                                             {"instruction": "Q zero?", "output": "C"}])
    second = _write(tmp_path / "second.json", [{"instruction": "Q zero?", "output": "D"}])
    samples, stats = import_trace_files([first, second], problems)
    assert stats.files == 2 and stats.traces == 4 and stats.matched == 4
    assert [(i, s["text"], s["origin"]) for i, s in samples["p/0"]] == [
        (0, "A", "first.json:record 0"), (1, "C", "first.json:record 2"), (2, "D", "second.json:record 0")]
    assert [(i, s["text"]) for i, s in samples["p/1"]] == [(0, "B")]
    swapped, _ = import_trace_files([second, first], problems)
    assert [s["text"] for _, s in swapped["p/0"]] == ["D", "A", "C"]


def test_other_field_names_can_be_read(tmp_path):
    problems = [_problem("p/0", "Q?", "1")]
    file = _write(tmp_path / "t.json", [{"q": "Q?", "cot": "The answer is 1."}])
    samples, stats = import_trace_files([file], problems, question_field="q", rationale_field="cot")
    assert stats.matched == 1 and samples["p/0"][0][1]["text"] == "The answer is 1."


def test_a_trace_without_the_question_field_names_the_file_and_record(tmp_path):
    file = _write(tmp_path / "t.json", [{"instruction": "Q?", "output": "x"}, {"output": "y"}])
    with pytest.raises(DataError, match="record 1") as err:
        import_trace_files([file], [_problem("p/0", "Q?", "1")])
    assert "instruction" in str(err.value) and str(file) in str(err.value)


def test_a_missing_trace_file_is_named(tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        import_trace_files([tmp_path / "nope.json"], [_problem("p/0", "Q?", "1")])


# ---------------------------------------------------------------------------------------------------------
# The public trace files


def test_real_gsm8k_llama_traces_match_gsm8k_train(gsm8k_train):
    samples, stats = import_trace_files([TRACES / "gsm8k_llama_level2_ranked.json"], gsm8k_train)
    assert stats.files == 1 and stats.traces == 7442
    assert stats.matched + stats.unmatched + stats.ambiguous == stats.traces
    assert stats.unmatched <= 10
    assert sum(len(v) for v in samples.values()) == stats.matched
    ids = {p.id for p in gsm8k_train}
    assert set(samples) <= ids


def test_real_gsm8k_traces_with_wrong_answers_are_dropped(gsm8k_train):
    samples, stats = import_trace_files([TRACES / "gsm8k_llama_level2_ranked.json"], gsm8k_train)
    graded, records = _grade_all(gsm8k_train, samples)
    assert graded.samples == stats.matched
    assert 0 < graded.wrong < 0.05 * stats.matched
    assert graded.kept == len(records) > 0.9 * stats.matched
    assert graded.kept + graded.wrong + graded.malformed + graded.duplicates == graded.samples
    gold = {p.id: p.answer for p in gsm8k_train}
    for record in records:  # recomputed independently of the grader's own extraction
        assert record["answer"] == gold[record["problem_id"]]
        assert answers_match(record["rationale"], record["answer"], "number"), record["id"]
    kept = {(r["problem_id"], r["sample_index"]) for r in records}
    dropped = [(pid, i, s) for pid, mine in samples.items() for i, s in mine if (pid, i) not in kept]
    wrong = [d for d in dropped if not answers_match(d[2]["text"], gold[d[0]], "number")]
    assert len(wrong) == graded.wrong + graded.malformed


def test_real_strategyqa_traces_are_graded_yes_no_and_mostly_kept():
    problems = load_problems("strategyqa", "all", data_dir=SHARED_DATA)
    samples, stats = import_trace_files([TRACES / "strategyQA_chatgpt_level_2_ranked.json"], problems)
    assert stats.traces == 1999 and stats.matched > 0.95 * stats.traces
    graded, records = _grade_all(problems, samples)
    assert graded.kept > 0.85 * graded.samples
    assert graded.malformed < 0.02 * graded.samples
    assert graded.wrong > 0
    by_id = {p.id: p for p in problems}
    for record in records:
        assert infer_kind(by_id[record["problem_id"]].source, record["answer"]) == "yesno"
        assert record["teacher_answer"] in ("yes", "no")
        assert record["teacher_answer"] == record["answer"]
