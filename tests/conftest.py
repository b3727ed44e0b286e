"""Session fixtures: tiny models built once, the shared data folder, and a DeepSpeed launch helper."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COTDISTILL_DATA_DIR") or REPO.parent / "shared" / "data")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cotdistill" / "torch_extensions"))

# Small, fast settings on top of the demo recipes for distributed tests.
TINY_RUN = [
    "data.synthetic.train_size=256",
    "data.synthetic.eval_size=6",
    "train.micro_batch_size=4",
    "train.max_steps=6",
    "train.warmup_steps=2",
    "train.lr=2e-3",
    "checkpoint.every=3",
    "checkpoint.keep_last=3",
    "eval.max_new_tokens=24",
    "eval.batch_size=2",
]


def synthetic_texts(architecture: str) -> list[str]:
    """The texts a TINY_RUN trains on, for the tokenizer of the session's tiny models."""
    from cotdistill.config import load_config
    from cotdistill.formats import build_examples
    from cotdistill.run_data import load_run_problems

    config = load_config(REPO / "recipes" / f"demo-{architecture}-synthetic.yaml", TINY_RUN)
    train, _ = load_run_problems(config.data)
    return [e.source + e.target for e in build_examples(train, config.data.formats, seed=config.train.seed)]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny T5, GPT-2 and Llama (random weights, tokenizers trained on synthetic data), made once."""
    from cotdistill.config import TinyModelConfig
    from cotdistill.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    size = TinyModelConfig(d_model=64, num_layers=2, num_heads=2, d_ff=128, vocab_size=320)
    # The Llama trains its tokenizer on the causal demo's texts (there is no Llama demo recipe).
    texts = {"t5": "t5", "gpt2": "gpt2", "llama": "gpt2"}
    return {arch: build_tiny_model(arch, root / arch, synthetic_texts(recipe), size, seed=0)
            for arch, recipe in texts.items()}


def skip_or_fail(reason: str) -> None:
    """A test that cannot run here: skipped, except in CI (``CI=true``), whose machine has everything the
    tests need (root, Slurm, libaio), so there a test that cannot run is a failure rather than a green skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot run in CI (CI=true): {reason}", pytrace=False)
    pytest.skip(reason)


def apt_install(*packages: str) -> None:
    """Install Debian packages a test needs (CI here runs as root with the package registry reachable)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env, capture_output=True, timeout=1200)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(script: str, args: list[str], ranks: int = 2, timeout: int = 600, expect_ok: bool = True,
           deepspeed_cli: bool = False) -> subprocess.CompletedProcess:
    """Run a script on ``ranks`` CPU processes; fail with its log tail.

    By default the ranks are started the way DeepSpeed's launcher starts them on one node (the same
    environment: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, MASTER_ADDR/PORT, CROSS_RANK/SIZE, PYTHONPATH; the
    same ``--local_rank=<r>`` flag; every rank stopped once one fails, its exit code returned), but directly:
    the ``deepspeed`` command adds two Python processes that import torch and DeepSpeed one after the other,
    about 5 s per launch here, and polls its ranks once a second. ``deepspeed_cli=True`` runs the real
    ``deepspeed`` command (the tests that check what users run keep it).
    """
    port = free_port()
    if deepspeed_cli:
        deepspeed = Path(sys.executable).parent / "deepspeed"
        cmd = [str(deepspeed), "--num_gpus", str(ranks), "--master_port", str(port), script, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    else:
        cmd = [sys.executable, "-u", script, *args]
        proc = _run_ranks(cmd, ranks, port, timeout)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} ({ranks} ranks) exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                    f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def kill_job_when(script: str, args: list[str], log_path: Path, condition: Callable[[], bool],
                  timeout: float = 400) -> None:
    """Start ``script`` as a user does (the real ``deepspeed`` command, 2 ranks), wait until ``condition`` holds,
    then ``kill -9`` the whole job: the launcher and every rank (its process group), nothing given time to tidy up.
    The job's output is appended to ``log_path``; a job that ends first, or a condition not met in ``timeout``
    seconds, fails the test."""
    deepspeed = Path(sys.executable).parent / "deepspeed"
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(free_port()), script, *args]
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        try:
            while not condition():
                if proc.poll() is not None:
                    pytest.fail(f"the job ended ({proc.returncode}) before the kill point; see {log_path}")
                if time.monotonic() > deadline:
                    pytest.fail(f"kill point not reached in {timeout} s; see {log_path}")
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run_ranks(cmd: list[str], ranks: int, port: int, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` once per rank with DeepSpeed's per-rank environment; outputs merged as the launcher's are."""
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path, "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "WORLD_SIZE": str(ranks), "LOCAL_SIZE": str(ranks), "CROSS_RANK": "0",
           "CROSS_SIZE": "1"}
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        procs = [subprocess.Popen([*cmd[:3], f"--local_rank={rank}", *cmd[3:]], cwd=REPO, stdout=out, stderr=err,
                                  env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(ranks)]
        deadline = time.monotonic() + timeout
        code = 0
        try:
            while any(p.poll() is None for p in procs):
                failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
                if failed:
                    code = failed[0]
                    break
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout)
                time.sleep(0.05)
        finally:
            _stop(procs)
        code = code or next((p.returncode for p in procs if p.returncode != 0), 0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, code, out.read(), err.read())


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate the ranks still running (as DeepSpeed's launcher does once one fails), then kill them."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def read_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from a run's train_log.jsonl."""
    lines = (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}
