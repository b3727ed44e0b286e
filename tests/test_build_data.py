"""The data builder end to end against a real loopback OpenAI-compatible server with injected faults."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA
from cotdistill.config import load_build_config
from cotdistill.errors import DataError
from cotdistill.teacher.builder import build_dataset, load_build_problems
from cotdistill.teacher.prompts import render_steps
from cotdistill.teacher.types import TeacherError
from fake_openai import FakeOpenAIServer, Fault

KEY_ENV = "COTDISTILL_TEST_TEACHER_KEY"
SECRET = "sk-test-8c1f0e9d2b7a4e65a1f3c0ddee77aa12"


def build_overrides(server: FakeOpenAIServer, out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", "problems.dataset=synthetic", "problems.synthetic.train_size=12",
            "problems.synthetic.max_steps=2", "teacher.backend=openai", "teacher.model=fake-teacher",
            f"teacher.base_url={server.base_url}", f"teacher.api_key_env={KEY_ENV}", "teacher.concurrency=4",
            "teacher.timeout=1.0", "teacher.backoff_initial=0.01", "teacher.backoff_max=0.05",
            "cot.samples=4", "cot.k_shot=2", *extra]


class ScriptedTeacher:
    """Answers by rule so every statistic is known in advance.

    CoT sample j of a question: 0 and 1 are two different correct rationales, 2 repeats sample 0 (a
    duplicate), 3 is wrong. Question 5 gets a wrong sample 0; question 7 never states an answer.
    Decompositions: the problem's own steps, except question 9 whose decomposition does not parse.
    """

    def __init__(self, problems) -> None:
        self.by_question = {p.question: (i, p) for i, p in enumerate(problems)}

    def __call__(self, question: str, prompt: str, sample: int) -> str:
        index, problem = self.by_question[question]
        gold = int(problem.answer)
        if "Break each problem" in prompt:
            return "I would rather not." if index == 9 else render_steps(problem.steps)
        if index == 7:
            return "This one is hard to say."
        if sample == 3 or (index == 5 and sample in (0, 2)):
            return f"Adding it all up gives {gold + 1}. The answer is {gold + 1}."
        if sample in (0, 2):
            return f"Working it through gives {gold}. The answer is {gold}."
        return f"Step by step the total is {gold}. The answer is {gold}."


@pytest.fixture
def problems():
    config = load_build_config(None, ["problems.dataset=synthetic", "problems.synthetic.train_size=12",
                                      "problems.synthetic.max_steps=2", "teacher.model=x"])
    return load_build_problems(config.problems)


def read_records(out: Path, product: str) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [json.loads(line) for entry in manifest["files"][product]
            for line in (out / entry["path"]).read_text().splitlines()]


def test_build_against_a_faulty_server_keeps_exactly_the_right_samples_and_counts_every_retry(
        tmp_path, problems, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    q = [p.question for p in problems]
    faults = [Fault("429", 2, question=q[3]), Fault("500", 1, question=q[4]), Fault("truncate", 1, question=q[6]),
              Fault("drop", 1, question=q[8]), Fault("hang", 1, question=q[10])]
    with FakeOpenAIServer(ScriptedTeacher(problems), faults=faults, api_key=SECRET, hang_seconds=3.0) as server:
        config = load_build_config(None, build_overrides(
            server, tmp_path / "out", "teacher.samples_per_request=2", "sampling.logprobs=2",
            "decompose.enabled=true", "decompose.samples=1"))
        manifest = json.loads(build_dataset(config).read_text())
        assert server.faults_injected == {"429": 2, "500": 1, "truncate": 1, "drop": 1, "hang": 1}

    cot = manifest["tasks"]["cot"]
    # 10 normal questions keep samples 0 and 1; question 5 keeps only 1; question 7 keeps nothing.
    assert (cot["questions"], cot["samples"], cot["missing"]) == (12, 48, 0)
    assert (cot["kept"], cot["duplicates"], cot["wrong"], cot["malformed"]) == (21, 10, 13, 4)
    assert (cot["first_sample_correct"], cot["majority_correct"], cot["questions_kept"]) == (10, 10, 11)
    assert cot["first_sample_accuracy"] == pytest.approx(10 / 12)
    # A fault may hit the question's decomposition request instead of a CoT one: count both tasks.
    retries = Counter(cot["cache"]["retries"]) + Counter(manifest["tasks"]["decompose"]["cache"]["retries"])
    assert retries == {"rate_limit": 2, "server_error": 1, "malformed": 1, "connection": 1, "timeout": 1}
    assert cot["cache"]["requests"] == 24 and cot["cache"]["usage"]["completion_tokens"] > 0
    decompose = manifest["tasks"]["decompose"]
    assert (decompose["kept"], decompose["malformed"], decompose["questions"]) == (11, 1, 12)
    assert manifest["complete"] is True and manifest["this_run"]["requests_sent"] == 36

    records = read_records(tmp_path / "out", "cot")
    assert [r["id"] for r in records[:2]] == [f"{problems[0].id}#cot0", f"{problems[0].id}#cot1"]
    assert {r["sample_index"] for r in records if r["problem_id"] == problems[5].id} == {1}
    for record in records:  # the stored teacher tokens spell the rationale
        assert "".join(t[0] for t in record["teacher_tokens"]).strip() == record["rationale"]
        assert all(len(t[2]) == 2 and t[2][0][0] == t[0] for t in record["teacher_tokens"])
    decompositions = read_records(tmp_path / "out", "decompositions")
    assert decompositions[0]["steps"] == [{"question": s.question, "answer": s.answer} for s in problems[0].steps]
    assert manifest["prompts"]["cot"]["hash"] != manifest["prompts"]["decompose"]["hash"]


def test_a_second_run_asks_nothing_and_rewrites_the_same_dataset(tmp_path, problems, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(ScriptedTeacher(problems)) as server:
        first = json.loads(build_dataset(load_build_config(None, build_overrides(server, tmp_path))).read_text())
        before = server.requests
        second = json.loads(build_dataset(load_build_config(None, build_overrides(server, tmp_path))).read_text())
        assert server.requests == before
    assert second["this_run"]["requests_sent"] == 0 and first["this_run"]["requests_sent"] == 12
    assert first["files"] == second["files"]  # same shards, same sha256
    assert first["tasks"] == second["tasks"]


def test_requests_failing_after_all_retries_are_reported_then_filled_by_the_next_run_counting_their_retries(
        tmp_path, problems, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "out"
    with FakeOpenAIServer(ScriptedTeacher(problems), faults=[Fault("503", 100, question=problems[2].question)]) \
            as server, pytest.raises(DataError, match="1 request\\(s\\) failed after 2 retries"):
        build_dataset(load_build_config(None, build_overrides(server, out, "teacher.max_retries=2")))
    partial = json.loads((out / "manifest.json").read_text())
    assert partial["complete"] is False and partial["tasks"]["cot"]["missing"] == 4
    assert partial["this_run"]["retries_of_failed_requests"] == {"server_error": 2}
    with FakeOpenAIServer(ScriptedTeacher(problems)) as healthy:
        full = json.loads(build_dataset(load_build_config(None, build_overrides(healthy, out))).read_text())
        assert healthy.requests == 1 + full["this_run"]["probe_requests"]  # only the failed question again
    # The retries of the request that failed in the first run still count, and its failure is on record.
    assert full["tasks"]["cot"]["cache"]["retries"] == {"server_error": 2}
    assert full["tasks"]["cot"]["cache"]["failed_requests"] == 1 and full["tasks"]["cot"]["cache"]["requests"] == 12
    with FakeOpenAIServer(ScriptedTeacher(problems)) as fresh:
        reference = json.loads(build_dataset(load_build_config(None, build_overrides(fresh, tmp_path / "ref")))
                               .read_text())
    assert full["complete"] is True and full["files"] == reference["files"]


def test_a_server_that_ignores_n_gets_one_sample_per_request_and_the_same_dataset_without_retries(
        tmp_path, problems, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(ScriptedTeacher(problems), ignores=["n"]) as server:
        manifest = json.loads(build_dataset(load_build_config(None, build_overrides(server, tmp_path / "out")))
                              .read_text())
        asked = server.requests
        again = json.loads(build_dataset(load_build_config(None, build_overrides(server, tmp_path / "out")))
                           .read_text())
        assert server.requests == asked  # the rerun finds the one-sample cache: no probe, no request
    with FakeOpenAIServer(ScriptedTeacher(problems)) as honest:
        reference = json.loads(build_dataset(load_build_config(None, build_overrides(honest, tmp_path / "ref")))
                               .read_text())
    assert manifest["teacher"]["capabilities"] == {"n": False, "logprobs": None, "seed": True, "samples_vary": True,
                                                   "probed": "this run", "probe_requests": 3}
    assert again["teacher"]["capabilities"]["probed"] == "an earlier run"
    assert again["teacher"]["capabilities"]["n"] is False
    assert reference["teacher"]["capabilities"]["n"] is True
    cot = manifest["tasks"]["cot"]
    assert cot["cache"]["samples_per_request"] == 1 and reference["tasks"]["cot"]["cache"]["samples_per_request"] == 4
    assert (cot["samples"], cot["missing"], cot["cache"]["requests"]) == (48, 0, 48)
    assert cot["cache"]["retries"] == {} and manifest["this_run"]["requests_failed"] == 0
    assert asked == 48 + manifest["this_run"]["probe_requests"]
    assert manifest["complete"] is True
    # Sample i asked alone with seed sampling.seed + i is the sample a server honouring n returns as choice i.
    assert read_records(tmp_path / "out", "cot") == read_records(tmp_path / "ref", "cot")


def test_logprobs_asked_from_a_server_that_ignores_them_stop_the_build_at_once_with_one_line(tmp_path, problems):
    with FakeOpenAIServer(ScriptedTeacher(problems), ignores=["n", "logprobs"]) as server:
        started = time.monotonic()
        proc = run_launcher(build_overrides(server, tmp_path / "out", "sampling.logprobs=3"), {KEY_ENV: SECRET})
        _, err = proc.communicate(timeout=120)
        seconds = time.monotonic() - started
        assert server.requests == 1  # the probe's first request tells: nothing is sampled, nothing retried
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert server.base_url in errors[0] and "sampling.logprobs=0" in errors[0]
    assert "does not return token log-probs" in errors[0]
    assert seconds < 30
    assert not (tmp_path / "out").exists()  # nothing was asked: no empty cache or folder is left behind


class DropsAChoiceAboveTwo(FakeOpenAIServer):
    """Honours n=2 (what the probe asks) but answers one choice short for larger n: a protocol mismatch."""

    def _samples(self, prompt, body):
        samples, prompt_tokens, completion_tokens = super()._samples(prompt, body)
        return (samples[:-1] if len(samples) > 2 else samples), prompt_tokens, completion_tokens


def test_a_deterministic_protocol_mismatch_stops_the_build_without_a_single_retry(tmp_path, problems, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with DropsAChoiceAboveTwo(ScriptedTeacher(problems)) as server, \
            pytest.raises(TeacherError, match="answered 3 completion\\(s\\) to a request for n=4") as caught:
        build_dataset(load_build_config(None, build_overrides(server, tmp_path / "out", "teacher.concurrency=1")))
    assert server.requests == 3 + 1  # the probe, then the first request: never asked again
    assert "teacher.samples_per_request=1" in str(caught.value) and server.base_url in str(caught.value)


def test_a_server_that_ignores_seeds_is_recorded_and_warned_about(tmp_path, problems, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.INFO, logger="cotdistill")
    with FakeOpenAIServer(lambda question, prompt, sample: f"Draw {sample}. The answer is 1.",
                          ignores=["seed"]) as server:
        manifest = json.loads(build_dataset(load_build_config(None, build_overrides(
            server, tmp_path / "out", "sampling.logprobs=2"))).read_text())
    assert manifest["teacher"]["capabilities"] == {"n": True, "logprobs": True, "seed": False, "samples_vary": True,
                                                   "probed": "this run", "probe_requests": 3}
    lines = [r.getMessage() for r in caplog.records]
    assert sum("teacher capabilities of" in line for line in lines) == 1
    assert any("ignores seed" in line for line in lines)


@pytest.mark.parametrize(("fault", "expected"), [("401", f"\\${KEY_ENV}"), ("404", "fake-teacher")])
def test_a_permanent_client_error_stops_the_build_with_the_servers_reason(tmp_path, problems, monkeypatch, fault,
                                                                        expected):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(ScriptedTeacher(problems), faults=[Fault(fault, 100)]) as server, \
            pytest.raises(TeacherError, match=expected):
        build_dataset(load_build_config(None, build_overrides(server, tmp_path / "out")))
    assert not (tmp_path / "out" / "manifest.json").exists()


def run_launcher(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "launchers" / "build_data.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cached_lines(out: Path) -> int:
    files = list((out / "cache").glob("cot-*.jsonl")) if (out / "cache").exists() else []
    return sum(f.read_bytes().count(b"\n") for f in files)


def test_a_build_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_records(tmp_path, problems):
    overrides = ["problems.synthetic.train_size=40", "teacher.samples_per_request=1", "teacher.concurrency=4"]
    with FakeOpenAIServer(ScriptedTeacher(load_build_problems(load_build_config(None, [
            "problems.dataset=synthetic", "problems.synthetic.train_size=40", "problems.synthetic.max_steps=2",
            "teacher.model=x"]).problems)), delay=0.03) as server:
        env = {KEY_ENV: SECRET}
        killed = run_launcher(build_overrides(server, tmp_path / "killed", *overrides), env)
        deadline = time.monotonic() + 60
        while cached_lines(tmp_path / "killed") < 40 and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.02)
        assert killed.poll() is None, "the build finished before it could be killed; slow the server down"
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        done_before = cached_lines(tmp_path / "killed")
        assert 40 <= done_before < 160
        resumed = run_launcher(build_overrides(server, tmp_path / "killed", *overrides), env)
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        reference = run_launcher(build_overrides(server, tmp_path / "reference", *overrides), env)
        _, err = reference.communicate(timeout=120)
        assert reference.returncode == 0, err
    killed_manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    reference_manifest = json.loads((tmp_path / "reference" / "manifest.json").read_text())
    assert killed_manifest["this_run"]["requests_sent"] <= 160 - done_before + 4  # at most the in-flight ones again
    assert read_records(tmp_path / "killed", "cot") == read_records(tmp_path / "reference", "cot")
    assert killed_manifest["files"] == reference_manifest["files"]
    assert killed_manifest["tasks"]["cot"]["kept"] == reference_manifest["tasks"]["cot"]["kept"]
    keys = [(line["qid"], i) for f in (tmp_path / "killed" / "cache").glob("cot-*.jsonl")
            for line in map(json.loads, f.read_text().splitlines()) for i in line["indices"]]
    assert len(keys) == len(set(keys)) == 160  # every sample cached exactly once


def test_retries_of_a_request_cut_off_by_sigkill_count_in_the_next_runs_manifest(tmp_path, problems):
    out = tmp_path / "out"
    env = {KEY_ENV: SECRET}
    with FakeOpenAIServer(ScriptedTeacher(problems), faults=[Fault("503", 10**6, question=problems[2].question)]) \
            as failing:
        killed = run_launcher(build_overrides(failing, out, "teacher.max_retries=1000"), env)
        deadline = time.monotonic() + 60
        while failing.faults_injected.get("503", 0) < 4 and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        injected = failing.faults_injected["503"]
    assert injected >= 4
    with FakeOpenAIServer(ScriptedTeacher(problems)) as healthy:
        resumed = run_launcher(build_overrides(healthy, out), env)
        _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    cache = json.loads((out / "manifest.json").read_text())["tasks"]["cot"]["cache"]
    # Every failed attempt but one in flight at the kill was followed by a retry the killed run wrote down.
    assert injected - 1 <= cache["retries"]["server_error"] <= injected
    assert cache["failed_requests"] == 0 and cache["requests"] == 12


def test_the_api_key_never_reaches_a_file_or_a_log(tmp_path, problems):
    with FakeOpenAIServer(ScriptedTeacher(problems), api_key=SECRET, faults=[Fault("429", 1)]) as server:
        ok = run_launcher(build_overrides(server, tmp_path / "ok"), {KEY_ENV: SECRET})
        ok_out, ok_err = ok.communicate(timeout=120)
        assert ok.returncode == 0, ok_err
        assert f"Bearer {SECRET}" in server.authorization_headers
        wrong = run_launcher(build_overrides(server, tmp_path / "wrong"), {KEY_ENV: SECRET[::-1]})
        wrong_out, wrong_err = wrong.communicate(timeout=120)
    assert wrong.returncode == 2 and "401" in wrong_err and KEY_ENV in wrong_err
    for text in (ok_out, ok_err, wrong_out, wrong_err):
        assert SECRET not in text and SECRET[::-1] not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in written)
    for path in written:
        data = path.read_bytes()
        assert SECRET.encode() not in data and SECRET[::-1].encode() not in data, path


def test_a_local_hugging_face_teacher_builds_a_dataset(tmp_path, tiny_models):
    config = load_build_config(None, [
        f"output_dir={tmp_path / 'out'}", "problems.dataset=synthetic", "problems.synthetic.train_size=3",
        "teacher.backend=hf", f"teacher.model={tiny_models['gpt2']}", "teacher.device=cpu",
        "teacher.precision=fp32", "teacher.batch_size=4", "cot.samples=2", "cot.k_shot=1",
        "sampling.max_tokens=12", "sampling.logprobs=3"])
    manifest = json.loads(build_dataset(config).read_text())
    cot = manifest["tasks"]["cot"]
    assert (cot["questions"], cot["samples"], cot["missing"]) == (3, 6, 0)
    assert cot["kept"] + cot["duplicates"] + cot["wrong"] + cot["malformed"] == 6
    assert manifest["teacher"]["backend"] == "hf" and cot["cache"]["usage"]["completion_tokens"] > 0
    cache = next((tmp_path / "out" / "cache").glob("cot-*.jsonl"))
    samples = [s for line in map(json.loads, cache.read_text().splitlines()) for s in line["samples"]]
    assert len(samples) == 6 and all(len(s["tokens"][0][2]) == 3 for s in samples if s["tokens"])


def test_the_cli_imports_the_public_svamp_traces_keeping_train_questions_that_reach_gold(tmp_path):
    recipe = REPO / "recipes" / "data" / "svamp-traces-import.yaml"
    proc = subprocess.run([sys.executable, "-m", "cotdistill.cli", "build-data", "--config", str(recipe),
                           f"output_dir={tmp_path / 'svamp'}"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COTDISTILL_DATA_DIR": str(SHARED_DATA)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "svamp" / "manifest.json")
    manifest = json.loads((tmp_path / "svamp" / "manifest.json").read_text())
    assert manifest["import"] == {"files": 1, "traces": 700, "matched": 501, "unmatched": 199, "ambiguous": 0}
    cot = manifest["tasks"]["cot"]
    assert cot["samples"] == 501 and 0 < cot["wrong"] < 501 * 0.05
    assert cot["kept"] == 501 - cot["wrong"] - cot["malformed"] - cot["duplicates"]
    assert len(read_records(tmp_path / "svamp", "cot")) == cot["kept"]
