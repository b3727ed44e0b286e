"""The append-only sample cache: reopening, torn-line repair, first answer wins, corrupt lines, the lock."""

from __future__ import annotations

import json
import logging

import pytest

from cotdistill.errors import DataError
from cotdistill.teacher.cache import SampleCache

HASH = "abcdef0123456789"


def _sample(text: str) -> dict:
    return {"text": text, "finish_reason": "stop"}


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_appended_samples_read_back_after_reopening(tmp_path):
    path = tmp_path / "cache" / "cot.jsonl"
    with SampleCache(path) as cache:
        cache.append("q1", HASH, [0, 1], [_sample("a"), _sample("b")], {"seed": 5, "usage": {"prompt_tokens": 3}})
        cache.append("q2", HASH, [2], [_sample("c — ünïcode")], {})
        assert cache.has(("q1", 1, HASH))
    with SampleCache(path) as reopened:
        assert reopened.samples == {("q1", 0, HASH): _sample("a"), ("q1", 1, HASH): _sample("b"),
                                    ("q2", 2, HASH): _sample("c — ünïcode")}
        assert not reopened.has(("q1", 2, HASH))
        assert not reopened.has(("q1", 0, "another-hash"))
        lines = list(reopened.iter_lines())
        assert [line["qid"] for line in lines] == ["q1", "q2"]
        assert lines[0]["seed"] == 5 and lines[0]["usage"] == {"prompt_tokens": 3}
        assert reopened.repaired_bytes == 0
    assert len(_lines(path)) == 2


def test_each_request_is_one_line(tmp_path):
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as cache:
        cache.append("q", HASH, [0, 1, 2], [_sample("x\ny"), _sample("z"), _sample("w")], {})
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1 and raw.endswith(b"\n")
    assert _lines(path)[0]["indices"] == [0, 1, 2]


def test_torn_last_line_is_cut_and_asked_again(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as cache:
        cache.append("q1", HASH, [0], [_sample("kept")], {})
    good = path.read_bytes()
    torn = b'{"qid":"q2","prompt_hash":"' + HASH.encode() + b'","indices":[0],"samples":[{"te'
    path.write_bytes(good + torn)
    with caplog.at_level(logging.WARNING, logger="cotdistill.teacher.cache"), SampleCache(path) as cache:
        assert cache.repaired_bytes == len(torn)
        assert path.read_bytes() == good  # truncated on open, before anything is appended
        assert cache.has(("q1", 0, HASH))
        assert not cache.has(("q2", 0, HASH))  # the torn request is missing, so it is asked again
        cache.append("q2", HASH, [0], [_sample("again")], {})
    assert any("torn" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    lines = _lines(path)  # every line is valid JSON again
    assert [(line["qid"], line["samples"][0]["text"]) for line in lines] == [("q1", "kept"), ("q2", "again")]
    with SampleCache(path) as cache:
        assert cache.samples[("q2", 0, HASH)] == _sample("again")
        assert cache.repaired_bytes == 0


def test_a_file_holding_only_a_torn_line_becomes_empty(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"qid":"q1","prompt')
    with caplog.at_level(logging.WARNING), SampleCache(path) as cache:
        assert cache.samples == {} and cache.lines == []
        cache.append("q1", HASH, [0], [_sample("x")], {})
    assert len(_lines(path)) == 1


def test_a_duplicated_sample_key_keeps_its_first_answer(tmp_path):
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as cache:
        cache.append("q", HASH, [0, 1], [_sample("first-0"), _sample("first-1")], {})
        cache.append("q", HASH, [1, 2], [_sample("second-1"), _sample("second-2")], {})
        assert cache.samples[("q", 1, HASH)] == _sample("first-1")
    with SampleCache(path) as cache:
        assert cache.samples[("q", 1, HASH)] == _sample("first-1")
        assert cache.samples[("q", 2, HASH)] == _sample("second-2")
        assert len(cache.samples) == 3
        assert len(cache.lines) == 2


def test_a_corrupt_line_in_the_middle_names_the_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as cache:
        cache.append("q1", HASH, [0], [_sample("a")], {})
    good = path.read_text(encoding="utf-8")
    path.write_text(good + "this is not json\n" + good, encoding="utf-8")
    with pytest.raises(DataError, match="line 2") as err, SampleCache(path):
        pass
    assert str(path) in str(err.value)


@pytest.mark.parametrize("bad", [
    '["a list"]',
    '{"qid":"q","indices":[0],"samples":[{"text":"a"}]}',  # no prompt_hash
    '{"qid":"q","prompt_hash":"h","indices":[0,1],"samples":[{"text":"a"}]}',  # counts differ
])
def test_a_line_that_is_json_but_not_a_cache_record_is_refused(tmp_path, bad):
    path = tmp_path / "c.jsonl"
    path.write_text(bad + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1 is not a cache record"), SampleCache(path):
        pass


def test_a_refused_cache_file_is_left_as_it_was(tmp_path):
    path = tmp_path / "c.jsonl"
    content = "garbage\n" + '{"qid":"q","prompt_hash":"h","indices":[0],"samples":[{"text":"a"}]}\n'
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError), SampleCache(path):
        pass
    assert path.read_text(encoding="utf-8") == content


def test_a_cache_that_fails_to_open_releases_its_lock(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("garbage\n", encoding="utf-8")
    with pytest.raises(DataError, match="not a cache record"), SampleCache(path):
        pass
    path.write_text("", encoding="utf-8")  # the user moved the broken cache away
    with SampleCache(path) as cache:  # must not report the file as in use by this same process
        cache.append("q", HASH, [0], [_sample("a")], {})


def test_a_second_cache_on_the_same_file_is_refused_while_the_first_is_open(tmp_path):
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as first:
        first.append("q", HASH, [0], [_sample("a")], {})
        with pytest.raises(DataError, match="in use") as err, SampleCache(path):
            pass
        assert str(path) in str(err.value)
        first.append("q", HASH, [1], [_sample("b")], {})  # the refused open did not disturb the first
    assert [line["indices"] for line in _lines(path)] == [[0], [1]]


def test_the_lock_is_released_on_close(tmp_path):
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as cache:
        cache.append("q", HASH, [0], [_sample("a")], {})
    with SampleCache(path) as again:
        assert again.has(("q", 0, HASH))
    with pytest.raises(RuntimeError):  # closed: appending is refused rather than lost
        again.append("q", HASH, [1], [_sample("b")], {})


def test_caches_on_different_files_do_not_lock_each_other(tmp_path):
    with SampleCache(tmp_path / "cot.jsonl") as a, SampleCache(tmp_path / "decompose.jsonl") as b:
        a.append("q", HASH, [0], [_sample("a")], {})
        b.append("q", HASH, [0], [_sample("b")], {})
    assert (tmp_path / "cot.jsonl.lock").exists()


def test_append_outside_the_context_is_refused(tmp_path):
    cache = SampleCache(tmp_path / "c.jsonl")
    with pytest.raises(RuntimeError, match="outside its context"):
        cache.append("q", HASH, [0], [_sample("a")], {})
    assert not (tmp_path / "c.jsonl").exists()


def test_append_with_mismatched_indices_and_samples_writes_nothing(tmp_path):
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as cache:
        cache.append("q", HASH, [0], [_sample("a")], {})
        with pytest.raises(ValueError):
            cache.append("q", HASH, [1, 2], [_sample("b")], {})
    with SampleCache(path) as cache:  # a refused append must not leave a line that poisons the cache
        assert set(cache.samples) == {("q", 0, HASH)}
