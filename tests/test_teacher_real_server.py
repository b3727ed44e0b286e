"""The builder against a real OpenAI-compatible server, `transformers serve`, for protocol truth.

The server (the `serving` extra) runs on CPU with a tiny GPT-2 the module builds. It accepts `n` and
`logprobs` and ignores them (one choice, no log-probs), and honours `seed`. The fake server mimics those
modes for fast unit tests (test_build_data.py); here the real one checks that the mimicry is right: the
probe measures it, a build adapts (one sample per request, nothing retried), and asking log-probs of it
stops the build at once. In CI (`CI=true`) a server that cannot start fails the tests instead of skipping.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, skip_or_fail
from cotdistill.config import TinyModelConfig, load_build_config
from cotdistill.teacher.builder import build_dataset, load_build_problems
from cotdistill.tiny import build_tiny_model
from real_openai_server import (
    RealServer,
    ServerDidNotStart,
    prepare_for_serving,
    serving_missing,
    start_transformers_serve,
)

QUESTIONS, SAMPLES = 3, 3
SYNTHETIC = ["problems.dataset=synthetic", "problems.synthetic.max_steps=2"]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> RealServer:
    """`transformers serve` with a tiny random GPT-2 whose tokenizer is trained on synthetic problems."""
    missing = serving_missing()
    if missing:
        skip_or_fail(missing)
    root = tmp_path_factory.mktemp("real-server")
    corpus = load_build_problems(load_build_config(None, [*SYNTHETIC, "problems.synthetic.train_size=60",
                                                          "teacher.model=x"]).problems)
    texts = [f"Question: {p.question}\nAnswer: {p.rationale or ''} The answer is {p.answer}." for p in corpus]
    size = TinyModelConfig(vocab_size=320, d_model=32, num_layers=1, num_heads=2, d_ff=64, n_positions=512)
    model = build_tiny_model("gpt2", root / "teacher", texts, size, seed=0)
    prepare_for_serving(model)
    try:
        server = start_transformers_serve(model, root / "serve.log")
    except ServerDidNotStart as err:
        skip_or_fail(str(err))
    yield server
    server.stop()


def overrides(served: RealServer, out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", *SYNTHETIC, f"problems.synthetic.train_size={QUESTIONS}", "teacher.backend=openai",
            f"teacher.model={served.model}", f"teacher.base_url={served.base_url}", "teacher.concurrency=2",
            "teacher.timeout=30", "teacher.backoff_initial=0.01", "teacher.backoff_max=0.05",
            "teacher.max_retries=3", f"cot.samples={SAMPLES}", "cot.k_shot=1", "sampling.max_tokens=8", *extra]


def build(served: RealServer, out: Path, *extra: str) -> dict:
    return json.loads(build_dataset(load_build_config(None, overrides(served, out, *extra))).read_text())


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_build_probes_the_real_server_and_asks_one_sample_per_request_without_retries(served, tmp_path, api):
    manifest = build(served, tmp_path / "out", f"teacher.api={api}")
    assert manifest["teacher"]["capabilities"] == {"n": False, "logprobs": None, "seed": True, "samples_vary": True,
                                                   "probed": "this run", "probe_requests": 3}
    cot = manifest["tasks"]["cot"]
    assert (cot["questions"], cot["samples"], cot["missing"]) == (QUESTIONS, QUESTIONS * SAMPLES, 0)
    assert cot["cache"]["samples_per_request"] == 1 and cot["cache"]["requests"] == QUESTIONS * SAMPLES
    assert cot["cache"]["retries"] == {} and cot["cache"]["failed_requests"] == 0
    this_run = manifest["this_run"]
    assert (this_run["requests_sent"], this_run["requests_failed"]) == (QUESTIONS * SAMPLES, 0)
    assert manifest["complete"] is True
    assert [f.name for f in (tmp_path / "out" / "cache").glob("cot-*.jsonl")] == [Path(cot["cache"]["file"]).name]
    lines = [json.loads(line) for line in (tmp_path / "out" / cot["cache"]["file"]).read_text().splitlines()]
    assert sorted(line["seed"] for line in lines) == sorted(list(range(SAMPLES)) * QUESTIONS)
    # The server itself says it ignored n: the probe measured what it does, not what it claims.
    assert "Ignoring unsupported fields" in served.log_text() and "'n'" in served.log_text()


def test_the_real_server_repeats_a_seeded_build_sample_for_sample(served, tmp_path):
    first = build(served, tmp_path / "a")
    second = build(served, tmp_path / "b")

    def texts(out: Path) -> list[str]:
        cache = next((out / "cache").glob("cot-*.jsonl"))
        lines = sorted((json.loads(line) for line in cache.read_text().splitlines()),
                       key=lambda line: (line["qid"], line["indices"]))
        return [sample["text"] for line in lines for sample in line["samples"]]

    assert texts(tmp_path / "a") == texts(tmp_path / "b")
    assert len(set(texts(tmp_path / "a"))) > 1  # sampled, not greedy: the seeds pick different samples
    assert first["files"] == second["files"]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_asking_the_real_server_for_logprobs_stops_at_once_with_one_line_saying_what_to_change(served, tmp_path,
                                                                                                api):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "launchers" / "build_data.py"),
                           *overrides(served, tmp_path / "out", f"teacher.api={api}", "sampling.logprobs=2")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert served.base_url in errors[0] and "does not return token log-probs" in errors[0]
    assert "sampling.logprobs=0" in errors[0]
    assert not (tmp_path / "out").exists()
