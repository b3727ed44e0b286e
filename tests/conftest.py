"""Session fixtures: tiny models built once, the shared data folder, and a DeepSpeed launch helper."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


def launch(script: str, args: list[str], ranks: int = 2, timeout: int = 600,
           expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run a script under the DeepSpeed launcher on ``ranks`` CPU processes; fail with its log tail."""
    deepspeed = Path(sys.executable).parent / "deepspeed"
    cmd = [str(deepspeed), "--num_gpus", str(ranks), "--master_port", str(free_port()), script, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                    f"--- stderr\n{proc.stderr[-6000:]}")
    return proc


def read_losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from a run's train_log.jsonl."""
    lines = (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}
