"""Data-build recipes (BuildConfig): loading, ${VAR} expansion, validation; and the builder's planning helpers."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA
from cotdistill.config import BuildConfig, ProblemsConfig, load_build_config, validate_build
from cotdistill.errors import ConfigError, DataError
from cotdistill.problems.record import Problem
from cotdistill.teacher.asking import Job, RunCounters, TaskPlan, ask_one, plan_jobs
from cotdistill.teacher.builder import load_build_problems
from cotdistill.teacher.cache import SampleCache
from cotdistill.teacher.prompts import BUILTIN_EXEMPLARS, cot_prompt
from cotdistill.teacher.retry import RetryPolicy
from cotdistill.teacher.types import Completion, SampleResponse, Sampling, Usage

RECIPES = sorted((REPO / "recipes" / "data").glob("*.yaml"))


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------
# Loading recipes


def test_a_yaml_recipe_loads_and_overrides_apply_on_top(tmp_path):
    path = _recipe(tmp_path, """
output_dir: out/x
problems: {dataset: svamp, split: train, limit: 50}
teacher: {backend: openai, model: my-model, base_url: "http://localhost:8000/v1", samples_per_request: 2}
sampling: {temperature: 0.5, stop: ["\\n\\nQuestion:", "\\nQ:"], seed: 3}
cot: {samples: 6, k_shot: 2}
decompose: {enabled: true, source: gold}
shard_size: 100
""")
    config = load_build_config(path, ["cot.samples=8", "teacher.model=007", "sampling.top_p=0.9"])
    assert isinstance(config, BuildConfig)
    assert config.output_dir == "out/x" and config.shard_size == 100
    assert (config.problems.dataset, config.problems.split, config.problems.limit) == ("svamp", "train", 50)
    assert config.teacher.model == "007"  # strings are taken verbatim from overrides
    assert config.teacher.samples_per_request == 2
    assert config.sampling.stop == ["\n\nQuestion:", "\nQ:"] and config.sampling.top_p == 0.9
    assert config.cot.samples == 8 and config.cot.k_shot == 2
    assert config.decompose.enabled and config.decompose.source == "gold"
    assert config.sampling.temperature == 0.5 and config.sampling.seed == 3


def test_defaults_without_recipe_need_a_model():
    with pytest.raises(ConfigError, match="teacher.model is empty"):
        load_build_config(None, [])
    assert load_build_config(None, ["teacher.model=m"]).teacher.backend == "openai"


def test_an_unknown_recipe_key_names_the_recipe_and_the_key(tmp_path):
    path = _recipe(tmp_path, "teacher: {backend: openai, model: m, modle: x}\n")
    with pytest.raises(ConfigError, match=r"teacher\.modle") as err:
        load_build_config(path)
    assert str(path) in str(err.value)


def test_a_missing_recipe_is_named(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_build_config(tmp_path / "nope.yaml")


def test_env_variables_in_recipe_strings_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACE_ROOT", "/data/traces")
    monkeypatch.setenv("MODEL_NAME", "llama-70b")
    path = _recipe(tmp_path, """
output_dir: ${TRACE_ROOT}/built
teacher:
  backend: files
  model: "${MODEL_NAME}-${MODEL_NAME}"
  files: ["${TRACE_ROOT}/a.json", "plain.json", "$TRACE_ROOT/kept-as-is.json"]
""")
    config = load_build_config(path)
    assert config.output_dir == "/data/traces/built"
    assert config.teacher.model == "llama-70b-llama-70b"
    assert config.teacher.files == ["/data/traces/a.json", "plain.json", "$TRACE_ROOT/kept-as-is.json"]


def test_an_unset_env_variable_is_an_error_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("COTDISTILL_TEST_UNSET_VAR", raising=False)
    path = _recipe(tmp_path, "teacher:\n  backend: files\n  files:\n    - a.json\n"
                             "    - ${COTDISTILL_TEST_UNSET_VAR}/b.json\n")
    with pytest.raises(ConfigError, match=r"teacher\.files\[1\]") as err:
        load_build_config(path)
    message = str(err.value)
    assert "COTDISTILL_TEST_UNSET_VAR" in message and "not set" in message and str(path) in message


def test_an_env_variable_set_to_empty_is_expanded_to_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("COTDISTILL_TEST_EMPTY", "")
    path = _recipe(tmp_path, "teacher: {model: 'm${COTDISTILL_TEST_EMPTY}'}\n")
    assert load_build_config(path).teacher.model == "m"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_the_shipped_data_recipes_load(recipe, monkeypatch):
    monkeypatch.setenv("COTDISTILL_DATA_DIR", str(SHARED_DATA))
    config = load_build_config(recipe)
    assert "${" not in json.dumps(config.teacher.files) + config.output_dir + config.problems.path
    for file in config.teacher.files:  # the expanded paths point at the shared data
        assert Path(file).is_file(), file


def test_there_are_shipped_data_recipes():
    assert RECIPES, "recipes/data/*.yaml holds no recipe"


# ---------------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(("overrides", "message"), [
    (["teacher.backend=files"], "needs teacher.files"),
    (["teacher.backend=openai", "teacher.model="], "teacher.model is empty: name the served model"),
    (["teacher.backend=hf", "teacher.model="], "teacher.model is empty: name the hub id"),
    (["teacher.backend=vllm"], "teacher.backend='vllm' is not one of"),
    (["sampling.temperature=-0.1"], "sampling.temperature must be >= 0"),
    (["sampling.top_p=0"], r"sampling.top_p must be in \(0, 1\]"),
    (["sampling.top_p=1.5"], r"sampling.top_p must be in \(0, 1\]"),
    (["cot.enabled=false"], "nothing to build"),
    (["decompose.enabled=true", "decompose.source=bogus"], "decompose.source='bogus' is not one of"),
    (["teacher.backend=files", "teacher.files=a.json", "decompose.enabled=true", "decompose.source=teacher"],
     "chain-of-thought traces only"),
    (["teacher.api_key_env=OPENAI_API_KEY=sk-123"], "api_key_env must be the name of an environment variable"),
    (["teacher.api_key_env=MY KEY"], "api_key_env must be the name of an environment variable"),
    (["teacher.api_key_env="], "api_key_env must be the name of an environment variable"),
    (["cot.samples=0"], "cot.samples must be > 0"),
    (["teacher.concurrency=0"], "teacher.concurrency must be > 0"),
    (["sampling.stop=['\\n', '']"], "sampling.stop holds an empty string"),
    (["shard_size=0"], "shard_size must be > 0"),
    (["problems.limit=-1"], "problems.limit must be >= 0"),
])
def test_invalid_build_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_build_config(None, ["teacher.model=m", *overrides])


@pytest.mark.parametrize("overrides", [
    ["teacher.backend=files", "teacher.files=a.json,b.json"],
    ["teacher.backend=files", "teacher.files=a.json", "decompose.enabled=true", "decompose.source=gold"],
    ["teacher.model=m", "cot.enabled=false", "decompose.enabled=true"],
    ["teacher.model=m", "sampling.temperature=0", "sampling.top_p=1"],
    ["teacher.model=m", "teacher.api_key_env=MY_KEY_2"],
])
def test_valid_build_settings_pass(overrides):
    config = load_build_config(None, overrides)
    validate_build(config)  # idempotent


def test_files_backend_needs_no_model():
    config = load_build_config(None, ["teacher.backend=files", "teacher.files=a.json,b.json"])
    assert config.teacher.files == ["a.json", "b.json"] and config.teacher.model == ""


# ---------------------------------------------------------------------------------------------------------
# Builder helpers: TaskPlan.groups, plan_jobs, load_build_problems

SPEC = cot_prompt(BUILTIN_EXEMPLARS[:1])
PROBLEMS = [Problem(id=f"p/{i}", question=f"What is {i} + 1?", answer=str(i + 1), source="gsm8k") for i in range(3)]
KEY = [SPEC.request_hash(p.question) for p in PROBLEMS]  # the cache key's prompt part of each problem


@pytest.mark.parametrize(("samples", "per_request", "groups"), [
    (8, 3, [(0, 1, 2), (3, 4, 5), (6, 7)]),
    (6, 3, [(0, 1, 2), (3, 4, 5)]),
    (4, 4, [(0, 1, 2, 3)]),
    (3, 1, [(0,), (1,), (2,)]),
])
def test_groups_partition_the_sample_indices(samples, per_request, groups):
    plan = TaskPlan("cot", SPEC, samples, per_request)
    assert plan.groups() == groups
    flat = [i for g in plan.groups() for i in g]
    assert flat == list(range(samples))


def _text(i: int) -> dict:
    return {"text": f"sample {i}", "finish_reason": "stop"}


def test_plan_jobs_asks_every_group_of_an_empty_cache(tmp_path):
    plan = TaskPlan("cot", SPEC, samples=5, per_request=2)
    with SampleCache(tmp_path / "c.jsonl") as cache:
        jobs = plan_jobs([plan], PROBLEMS[:2], {"cot": cache}, base_seed=100)
    assert [(j.problem.id, j.group, j.missing, j.seed) for j in jobs] == [
        ("p/0", (0, 1), (0, 1), 100), ("p/0", (2, 3), (2, 3), 102), ("p/0", (4,), (4,), 104),
        ("p/1", (0, 1), (0, 1), 100), ("p/1", (2, 3), (2, 3), 102), ("p/1", (4,), (4,), 104)]


def test_plan_jobs_skips_cached_groups_and_reasks_partial_ones_with_the_same_seed(tmp_path):
    plan = TaskPlan("cot", SPEC, samples=8, per_request=4)
    with SampleCache(tmp_path / "c.jsonl") as cache:
        cache.append("p/0", KEY[0], [0, 1, 2, 3], [_text(i) for i in range(4)], {})  # p/0 group 1 complete
        cache.append("p/0", KEY[0], [4], [_text(4)], {})  # p/0 group 2 partial: its first index is cached
        cache.append("p/1", "other-prompt-hash", [0, 1, 2, 3], [_text(i) for i in range(4)], {})  # other prompt
        cache.append("p/2", KEY[2], list(range(8)), [_text(i) for i in range(8)], {})  # p/2 complete
        jobs = plan_jobs([plan], PROBLEMS, {"cot": cache}, base_seed=7)
    assert [(j.problem.id, j.group, j.missing, j.seed) for j in jobs] == [
        ("p/0", (4, 5, 6, 7), (5, 6, 7), 11),
        ("p/1", (0, 1, 2, 3), (0, 1, 2, 3), 7),
        ("p/1", (4, 5, 6, 7), (4, 5, 6, 7), 11)]


def test_a_cached_answer_is_not_reused_for_another_question_under_the_same_id(tmp_path):
    # Another data file with the same ids: the old key (id, index, template hash) handed p/0's samples to the
    # new question, and the grader then graded them against the new gold.
    plan = TaskPlan("cot", SPEC, samples=2, per_request=2)
    changed = Problem(id="p/0", question="What is 40 + 2?", answer="42", source="gsm8k")
    with SampleCache(tmp_path / "c.jsonl") as cache:
        cache.append("p/0", SPEC.request_hash(PROBLEMS[0].question), [0, 1], [_text(0), _text(1)], {})
        assert plan_jobs([plan], PROBLEMS[:1], {"cot": cache}, base_seed=0) == []
        (job,) = plan_jobs([plan], [changed], {"cot": cache}, base_seed=0)
    assert job.missing == (0, 1)
    assert SPEC.request_hash(changed.question) != SPEC.request_hash(PROBLEMS[0].question) != SPEC.hash


def test_answers_cached_without_question_hashes_are_asked_again_with_one_warning(tmp_path, caplog):
    from cotdistill.teacher.builder import _warn_of_unkeyed_lines

    plan = TaskPlan("cot", SPEC, samples=2, per_request=2)
    with SampleCache(tmp_path / "c.jsonl") as cache:
        cache.append("p/0", SPEC.hash, [0, 1], [_text(0), _text(1)], {})  # the key builds wrote before
        (job,) = plan_jobs([plan], PROBLEMS[:1], {"cot": cache}, base_seed=0)
        with caplog.at_level("WARNING"):
            _warn_of_unkeyed_lines(cache, PROBLEMS[:1], plan)
    assert job.missing == (0, 1)
    assert "1 cached answers were stored without their question's text hash" in caplog.text


def test_planning_renders_each_problems_prompt_once_however_many_samples_it_asks(tmp_path, monkeypatch):
    # The cache key hashes the whole rendered prompt (few-shot exemplars included): hashing it again for every
    # sample index made planning a many-sample build cost samples x problems renders.
    from cotdistill.teacher.builder import _cached_samples

    renders = Counter()
    original = type(SPEC).request_hash
    monkeypatch.setattr(type(SPEC), "request_hash",
                        lambda self, question: renders.update([question]) or original(self, question))
    plan = TaskPlan("cot", SPEC, samples=16, per_request=1)
    with SampleCache(tmp_path / "c.jsonl") as cache:
        jobs = plan_jobs([plan], PROBLEMS, {"cot": cache}, base_seed=0)
        assert len(jobs) == 16 * len(PROBLEMS)
        assert all(count == 1 for count in renders.values()) and len(renders) == len(PROBLEMS)
        renders.clear()
        assert _cached_samples(cache, PROBLEMS[0], plan) == []
        assert renders == Counter({PROBLEMS[0].question: 1})


def test_plan_jobs_looks_in_each_tasks_own_cache(tmp_path):
    cot = TaskPlan("cot", SPEC, samples=2, per_request=2)
    dec = TaskPlan("decompose", SPEC, samples=1, per_request=1)
    with SampleCache(tmp_path / "cot.jsonl") as cot_cache, SampleCache(tmp_path / "dec.jsonl") as dec_cache:
        cot_cache.append("p/0", KEY[0], [0, 1], [_text(0), _text(1)], {})
        jobs = plan_jobs([cot, dec], PROBLEMS[:1], {"cot": cot_cache, "decompose": dec_cache}, base_seed=0)
    assert [(j.plan.task, j.group) for j in jobs] == [("decompose", (0,))]


class _RecordingTeacher:
    """Answers each request with completions 'g<k>' (k: position in the request), recording the requests."""

    def __init__(self) -> None:
        self.requests = []

    async def sample(self, request):
        self.requests.append(request)
        return SampleResponse(tuple(Completion(f"g{k}", "stop") for k in range(request.n)), Usage(5, 7))

    def describe(self) -> dict:
        return {"backend": "recording"}

    async def close(self) -> None:
        pass


def test_a_partially_cached_group_is_asked_whole_and_only_its_missing_samples_are_stored(tmp_path):
    plan = TaskPlan("cot", SPEC, samples=4, per_request=4)
    path = tmp_path / "c.jsonl"
    with SampleCache(path) as cache:
        cache.append("p/0", KEY[0], [0, 2], [_text(0), _text(2)], {})
        (job,) = plan_jobs([plan], PROBLEMS[:1], {"cot": cache}, base_seed=10)
        assert isinstance(job, Job) and job.missing == (1, 3)
        teacher, counters = _RecordingTeacher(), RunCounters()
        asyncio.run(ask_one(teacher, job, Sampling(), cache, RetryPolicy(max_retries=0), random.Random(0),
                             counters, Counter()))
    (request,) = teacher.requests
    assert request.n == 4 and request.seed == 10  # the same request as the first time this group was asked
    assert request.prompt == SPEC.render(PROBLEMS[0].question)
    assert counters.requests_sent == 1
    with SampleCache(path) as cache:
        last = cache.lines[-1]
        assert last["indices"] == [1, 3] and last["seed"] == 10
        assert [s["text"] for s in last["samples"]] == ["g1", "g3"]  # completion k answers group[k]
        assert cache.samples[("p/0", 0, KEY[0])] == _text(0)  # the earlier answers are untouched
        assert cache.samples[("p/0", 2, KEY[0])] == _text(2)
        assert plan_jobs([plan], PROBLEMS[:1], {"cot": cache}, base_seed=10) == []


def _jsonl(tmp_path: Path, ids: list[str]) -> str:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": f"Q {n}?", "answer": str(n)}) + "\n"
                            for n, i in enumerate(ids)), encoding="utf-8")
    return str(path)


def test_load_build_problems_limit_keeps_the_first_n(tmp_path):
    source = ProblemsConfig(dataset="jsonl", split="all", path=_jsonl(tmp_path, ["a", "b", "c", "d"]), limit=2)
    assert [p.id for p in load_build_problems(source)] == ["a", "b"]
    source.limit = 0
    assert [p.id for p in load_build_problems(source)] == ["a", "b", "c", "d"]


def test_load_build_problems_rejects_duplicate_ids(tmp_path):
    source = ProblemsConfig(dataset="jsonl", split="all", path=_jsonl(tmp_path, ["a", "b", "a", "c", "b"]))
    with pytest.raises(DataError, match="unique") as err:
        load_build_problems(source)
    assert "a, b" in str(err.value)
    source.limit = 2  # the repeats are past the limit: fine
    assert [p.id for p in load_build_problems(source)] == ["a", "b"]


def test_load_build_problems_rejects_an_empty_selection(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="holds no problems"):
        load_build_problems(ProblemsConfig(dataset="jsonl", split="all", path=str(path)))


def test_load_build_problems_reads_shared_data_and_synthetic():
    gsm8k = load_build_problems(ProblemsConfig(dataset="gsm8k", split="train", data_dir=str(SHARED_DATA), limit=5))
    assert len(gsm8k) == 5 and len({p.id for p in gsm8k}) == 5
    synthetic = load_build_problems(ProblemsConfig(dataset="synthetic", limit=7))
    assert len(synthetic) == 7
    again = load_build_problems(ProblemsConfig(dataset="synthetic", limit=7))
    assert [p.question for p in again] == [p.question for p in synthetic]


def test_a_key_pasted_into_api_key_env_is_not_echoed_in_the_error():
    with pytest.raises(ConfigError) as caught:
        load_build_config(None, ["teacher.model=m", "teacher.api_key_env=sk-live-4f9a1b"])
    assert "sk-live-4f9a1b" not in str(caught.value)
