"""Packaging for cotdistill. Install torch first on CPU-only machines (see README)."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="cotdistill",
    version="0.1.0",
    description="Distill multi-step reasoning from large teachers into small T5/GPT-2 students with DeepSpeed",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"cotdistill": ["model_configs/*.json", "resources/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3,<3",
        "deepspeed>=0.16,<0.20",
        "transformers>=5.0,<6",
        "accelerate>=1.1,<2",
        "datasets>=3.0,<6",
        "sentencepiece>=0.2,<0.3",
        "tokenizers>=0.20,<0.30",
        "safetensors>=0.4,<1",
        "tensorboard>=2.15,<3",
        "fire>=0.6,<0.8",
        "pyyaml>=6,<7",
        "tqdm>=4.66,<5",
        "numpy>=1.26,<3",
        "matplotlib>=3.7,<4",
        "openai>=1.40,<4",
    ],
    extras_require={
        "dev": ["pytest>=8,<10", "ruff>=0.6,<1"],
        # EleutherAI's lm-evaluation-harness, the peer evaluator that `--protocol lm-eval` is checked against
        # (tests/test_lm_eval_peer.py, benchmarks/lm_eval_compare.py). Pinned: the check compares with the
        # GSM8K task of exactly this release. Its HF backend needs only torch/transformers/accelerate, which
        # are already required; the "hf" extra would add peft, which is only needed for adapters.
        "peer": ["lm_eval==0.4.13"],
        # `transformers serve`, a real OpenAI-compatible server on CPU, which the teacher-data builder is tested
        # against (tests/test_teacher_real_server.py). Held to the minor release installed: the tests assert what
        # this release's server honours (seed) and ignores (n, logprobs), and a newer one may change that.
        "serving": ["transformers[serving]>=5.25,<5.26"],
        # TRL's GKD trainer, the peer that cotdistill's on-policy distillation is measured against
        # (benchmarks/on_policy_vs_trl.py, tests/test_on_policy_vs_trl.py). Pinned: the baseline script uses
        # trl.experimental.gkd, which TRL marks unstable, and the comparison is of exactly this release.
        "gkd-peer": ["trl==1.16.0"],
    },
    entry_points={"console_scripts": ["cotdistill=cotdistill.cli:console_main"]},
)
