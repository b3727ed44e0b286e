"""Writing a built dataset (shards + manifest) and reading it back through the teacher_data loader."""

from __future__ import annotations

import hashlib
import json

import pytest

from cotdistill.errors import DataError
from cotdistill.problems import load_problems
from cotdistill.problems.built import read_built_dataset
from cotdistill.problems.record import Problem, Step
from cotdistill.teacher.grading import grade_cot, grade_decompositions
from cotdistill.teacher.output import write_manifest, write_shards


def _records(n: int, prefix: str = "r") -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": f"What is {i} + 1?", "answer": str(i + 1),
             "rationale": f"{i} + 1 = {i + 1}. The answer is {i + 1}.", "source": "gsm8k"} for i in range(n)]


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _visible_and_hidden(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


# ---------------------------------------------------------------------------------------------------------
# write_shards / write_manifest


def test_write_shards_splits_records_into_named_shards_with_counts_and_hashes(tmp_path):
    records = _records(7)
    listing = write_shards(tmp_path, {"cot": records, "decompositions": _records(2, "d")}, shard_size=3)
    assert [e["path"] for e in listing["cot"]] == ["data/cot-00000-of-00003.jsonl", "data/cot-00001-of-00003.jsonl",
                                                   "data/cot-00002-of-00003.jsonl"]
    assert [e["records"] for e in listing["cot"]] == [3, 3, 1]
    assert [e["path"] for e in listing["decompositions"]] == ["data/decompositions-00000-of-00001.jsonl"]
    read_back = []
    for entry in listing["cot"] + listing["decompositions"]:
        data = (tmp_path / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert len(data.splitlines()) == entry["records"]
        read_back += _read_jsonl(tmp_path / entry["path"])
    assert read_back == records + _records(2, "d")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        e["path"].removeprefix("data/") for e in listing["cot"] + listing["decompositions"])


def test_write_shards_exact_multiple_makes_no_empty_shard(tmp_path):
    listing = write_shards(tmp_path, {"cot": _records(6)}, shard_size=3)
    assert [e["records"] for e in listing["cot"]] == [3, 3]
    assert listing["cot"][-1]["path"].endswith("-00001-of-00002.jsonl")


def test_an_empty_product_gets_one_empty_shard(tmp_path):
    listing = write_shards(tmp_path, {"cot": []}, shard_size=10)
    assert listing == {"cot": [{"path": "data/cot-00000-of-00001.jsonl", "records": 0,
                                "sha256": hashlib.sha256(b"").hexdigest()}]}
    assert (tmp_path / "data" / "cot-00000-of-00001.jsonl").read_bytes() == b""


def test_non_ascii_text_is_written_as_utf8(tmp_path):
    record = {"id": "x", "question": "Combien coûte 3 × 4 €?", "answer": "12", "rationale": "3 × 4 = 12 €."}
    listing = write_shards(tmp_path, {"cot": [record]}, shard_size=5)
    raw = (tmp_path / listing["cot"][0]["path"]).read_bytes()
    assert "coûte 3 × 4 €".encode() in raw
    assert _read_jsonl(tmp_path / listing["cot"][0]["path"]) == [record]


def test_a_second_write_replaces_data_completely(tmp_path):
    write_shards(tmp_path, {"cot": _records(10), "decompositions": _records(4, "d")}, shard_size=3)
    assert len(list((tmp_path / "data").iterdir())) == 4 + 2
    listing = write_shards(tmp_path, {"cot": _records(2, "new")}, shard_size=3)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cot-00000-of-00001.jsonl"]
    assert [r["id"] for r in _read_jsonl(tmp_path / listing["cot"][0]["path"])] == ["new0", "new1"]
    assert _visible_and_hidden(tmp_path) == ["data", "data/cot-00000-of-00001.jsonl"]  # no staging/old folders


def test_write_shards_leaves_the_rest_of_the_folder_alone(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cot-1.jsonl").write_text("{}\n", encoding="utf-8")
    write_shards(tmp_path, {"cot": _records(1)}, shard_size=3)
    write_shards(tmp_path, {"cot": _records(1)}, shard_size=3)
    assert (tmp_path / "cache" / "cot-1.jsonl").read_text(encoding="utf-8") == "{}\n"


def test_write_manifest_writes_json_and_leaves_no_temp_files(tmp_path):
    manifest = {"format_version": 1, "files": {"cot": []}, "note": "ünïcode"}
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / "manifest.json"
    assert json.loads(path.read_text(encoding="utf-8")) == manifest
    write_manifest(tmp_path, {**manifest, "format_version": 2})
    assert json.loads(path.read_text(encoding="utf-8"))["format_version"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


# ---------------------------------------------------------------------------------------------------------
# Reading a build back: load_problems("teacher_data", ...)

PROBLEM = Problem(id="gsm8k/3", question="Sam had 20 apples and ate 8. How many are left?", answer="12",
                  source="gsm8k")
DECOMPOSITION = "Q1: How many did Sam eat?\nA1: He ate 8.\nQ2: How many are left?\nA2: 20 - 8 = 12."


def _build(out, with_decompositions: bool = True, shard_size: int = 1):
    cot = grade_cot(PROBLEM, [(0, {"text": "20 - 8 = 12. The answer is 12."}),
                              (1, {"text": "He has 12 left. The answer is 12.\nQuestion: next?"}),
                              (2, {"text": "The answer is 13."})], wanted=3).records
    products = {"cot": cot}
    if with_decompositions:
        products["decompositions"] = grade_decompositions(PROBLEM, [(0, {"text": DECOMPOSITION})], wanted=1).records
    write_manifest(out, {"format_version": 1, "files": write_shards(out, products, shard_size)})
    return products


def test_a_built_folder_reads_back_as_cot_problems(tmp_path):
    _build(tmp_path)
    problems = load_problems("teacher_data", "cot", path=tmp_path)
    assert [p.id for p in problems] == ["gsm8k/3#cot0", "gsm8k/3#cot1"]  # across two shards, in order
    assert problems[1] == Problem(id="gsm8k/3#cot1", question=PROBLEM.question, answer="12",
                                  rationale="He has 12 left. The answer is 12.", source="gsm8k")
    assert load_problems("teacher_data", path=tmp_path) == problems  # "default" is the cot product


def test_a_built_folder_reads_back_decompositions_with_steps(tmp_path):
    _build(tmp_path)
    (problem,) = load_problems("teacher_data", "decompositions", path=tmp_path)
    assert problem.id == "gsm8k/3#dec0" and problem.answer == "12" and problem.rationale is None
    assert problem.steps == (Step("How many did Sam eat?", "He ate 8."), Step("How many are left?", "20 - 8 = 12."))


def test_a_folder_without_manifest_is_not_a_finished_build(tmp_path):
    write_shards(tmp_path, {"cot": _records(2)}, shard_size=5)  # the build died before its manifest
    with pytest.raises(DataError, match="not a finished") as err:
        load_problems("teacher_data", "cot", path=tmp_path)
    assert "manifest.json" in str(err.value) and str(tmp_path) in str(err.value)


def test_shards_swapped_in_by_a_build_killed_before_its_manifest_are_refused(tmp_path):
    # The writer renames the new data/ into place, then writes the manifest: a kill -9 in between left new shards
    # under the old manifest, and the old reader took them with the old build's counts and settings.
    write_shards(tmp_path, {"cot": _records(4)}, shard_size=5)
    write_manifest(tmp_path, {"files": {"cot": write_shards(tmp_path, {"cot": _records(4)}, shard_size=5)["cot"]}})
    assert len(read_built_dataset(tmp_path, "cot")) == 4
    write_shards(tmp_path, {"cot": _records(3, "new")}, shard_size=5)  # same shard name, no manifest yet
    with pytest.raises(DataError, match="is not the shard") as err:
        read_built_dataset(tmp_path, "cot")
    assert "cot-00000-of-00001.jsonl" in str(err.value) and "3 records, expected 4" in str(err.value)
    (tmp_path / "data" / "cot-00000-of-00001.jsonl").unlink()
    with pytest.raises(DataError, match="cannot be read"):
        read_built_dataset(tmp_path, "cot")


def test_a_shard_swapped_after_its_check_is_not_what_the_reader_returns(tmp_path, monkeypatch):
    # The reader checked a shard's bytes against the manifest, then opened the file again to parse it: a build
    # swapping in new shards between the two reads handed the trainer data its manifest does not describe.
    import cotdistill.problems.built as built

    write_manifest(tmp_path, {"files": {"cot": write_shards(tmp_path, {"cot": _records(4)}, shard_size=5)["cot"]}})
    checked = built._check_shard

    def check_then_swap(folder, entry):
        data = checked(folder, entry)
        write_shards(tmp_path, {"cot": _records(3, "new")}, shard_size=5)  # a concurrent build, just after
        return data

    monkeypatch.setattr(built, "_check_shard", check_then_swap)
    problems = read_built_dataset(tmp_path, "cot")
    assert [p.id for p in problems] == ["r0", "r1", "r2", "r3"]


def test_a_product_the_build_does_not_hold_names_what_it_holds(tmp_path):
    _build(tmp_path, with_decompositions=False)
    with pytest.raises(DataError, match="no 'decompositions' product; it holds: cot"):
        load_problems("teacher_data", "decompositions", path=tmp_path)
    with pytest.raises(DataError, match="it holds: cot"):
        read_built_dataset(tmp_path, "steps")


def test_an_unknown_split_of_teacher_data_lists_the_valid_ones(tmp_path):
    _build(tmp_path)
    with pytest.raises(DataError, match="valid splits") as err:
        load_problems("teacher_data", "train", path=tmp_path)
    assert "cot" in str(err.value) and "decompositions" in str(err.value)


def test_a_manifest_without_files_is_refused_with_its_path(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format_version": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="not a build manifest") as err:
        read_built_dataset(tmp_path, "cot")
    assert str(tmp_path / "manifest.json") in str(err.value)
