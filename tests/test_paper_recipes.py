"""Every paper recipe trains as shipped, with only its model swapped for a tiny one and its data for a small
local set of the same kind: teacher CoT samples with top-k log-probs (built from a scripted OpenAI-compatible
teacher) for the FlanT5 specialization recipes, GSM8K's own Socratic test annotations for the GPT-2 Socratic
recipes. Everything else (formats, mixtures, single-format batches, distribution matching, loss, optimizer,
ZeRO stage) is the recipe's own. One rank, three optimizer steps each.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, launch, read_losses
from cotdistill.config import load_build_config, load_config
from cotdistill.teacher.builder import build_dataset, load_build_problems
from fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.distributed

PAPER = REPO / "recipes" / "paper"
SPECIALIZE = sorted(PAPER.glob("specialize-flan-t5-*.yaml"))
SOCRATIC = sorted(PAPER.glob("socratic-gpt2-*.yaml"))
MODERN = sorted((REPO / "recipes" / "modern").glob("specialize-*.yaml"))
STEPS = 3
# The NVMe recipe's nvme_path is a cluster's folder: here it runs with CPU offload (tests/test_nvme_offload.py
# trains with the NVMe template itself).
NVME_STAND_IN = "ds_configs/zero3_offload.json"


def test_the_paper_recipes_cover_every_model_size_of_both_papers():
    models = {load_config(p).model.name_or_path for p in SPECIALIZE + SOCRATIC}
    assert models == {"google/flan-t5-base", "google/flan-t5-large", "google/flan-t5-xl", "google/flan-t5-xxl",
                      "gpt2", "gpt2-medium", "gpt2-large"}


def test_the_modern_recipes_specialize_a_qwen_and_a_llama_with_the_papers_mixture():
    configs = [load_config(p) for p in MODERN]
    assert {c.model.name_or_path for c in configs} == {"Qwen/Qwen2.5-1.5B", "meta-llama/Llama-3.2-1B"}
    paper = load_config(SPECIALIZE[0])
    for config in configs:
        assert (config.data.formats, config.data.k_shot, config.data.split) == \
            (paper.data.formats, paper.data.k_shot, paper.data.split)
        assert config.data.single_format_batches and config.data.per_problem and config.train.kd_weight > 0


@pytest.fixture(scope="module")
def teacher_cot(tmp_path_factory) -> Path:
    """A built teacher_data folder: correct CoT samples with top-5 log-probs for 48 synthetic problems."""
    out = tmp_path_factory.mktemp("paper-recipes") / "teacher-cot"
    build = ["problems.dataset=synthetic", "problems.synthetic.train_size=48", "problems.synthetic.operand_max=9",
             "teacher.model=fake", "cot.samples=2", "cot.k_shot=1", "sampling.logprobs=5", f"output_dir={out}"]
    problems = {p.question: p for p in load_build_problems(load_build_config(None, build).problems)}

    def respond(question: str, prompt: str, sample: int) -> str:
        return f"{problems[question].rationale} The answer is {problems[question].answer}."

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "EMPTY")
        with FakeOpenAIServer(respond) as server:
            build_dataset(load_build_config(None, [*build, f"teacher.base_url={server.base_url}"]))
    return out


# The trainer's "tokens: ..." line (TruncationStats.summary): how many target tokens got a teacher distribution.
TEACHER_TOKENS = re.compile(r"(\d+) of (\d+) target tokens of traced examples carry the teacher's distribution")


def teacher_token_counts(output: str) -> tuple[int, int] | None:
    """(tokens with a teacher distribution, target tokens of examples with teacher tokens) from a run's log."""
    found = TEACHER_TOKENS.search(output)
    return (int(found[1]), int(found[2])) if found else None


def run_recipe(recipe: Path, model: Path, out: Path, *data: str) -> dict[int, float]:
    launch_recipe(recipe, model, out, *data)
    return read_losses(out)


def launch_recipe(recipe: Path, model: Path, out: Path, *data: str) -> str:
    """Train ``recipe`` with its model and data swapped; returns the launcher's output."""
    config = load_config(recipe)
    swaps = [f"model.name_or_path={model}", f"output_dir={out}", *data, f"train.max_steps={STEPS}",
             "train.micro_batch_size=4", "train.gradient_accumulation=1", "train.warmup_steps=1",
             "checkpoint.every=0", "checkpoint.export_final=false", "eval.at_end=false", "eval.datasets=[]"]
    if "nvme" in config.deepspeed_config:
        swaps.append(f"deepspeed_config={NVME_STAND_IN}")
    proc = launch("launchers/train.py", ["--config", str(recipe.relative_to(REPO)), *swaps], ranks=1)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("recipe", SPECIALIZE, ids=lambda p: p.stem)
def test_a_specialization_recipe_trains_its_mixture_with_distribution_matching(recipe, tiny_models, teacher_cot,
                                                                                tmp_path):
    config = load_config(recipe)
    assert config.train.kd_weight > 0 and config.data.single_format_batches and len(config.data.formats) == 3
    output = launch_recipe(recipe, tiny_models["t5"], tmp_path / "run", f"data.path={teacher_cot}")
    # Distribution matching really had teacher distributions to match, not only one-hot targets.
    counts = teacher_token_counts(output)
    assert counts is not None and 0 < counts[0] <= counts[1], counts or output[-3000:]
    losses = read_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(0 < v < 20 for v in losses.values()), losses
    saved = json.loads((tmp_path / "run" / "checkpoints" / f"step-{STEPS:06d}" / "COMPLETE").read_text())
    assert saved["step"] == STEPS


@pytest.mark.parametrize("recipe", SOCRATIC, ids=lambda p: p.stem)
def test_a_socratic_recipe_trains_the_unified_decomposer_and_solver(recipe, tiny_models, tmp_path):
    config = load_config(recipe)
    assert set(config.data.formats) == {"decomposer", "solver"} and config.data.per_problem
    # GSM8K's Socratic annotations stand in for the teacher's decompositions; the tiny GPT-2 has 512 positions.
    losses = run_recipe(recipe, tiny_models["gpt2"], tmp_path / "run", "data.dataset=gsm8k_socratic",
                        "data.split=test", "data.path=", f"data.data_dir={SHARED_DATA}", "data.limit=24",
                        "data.max_source_tokens=384", "data.max_target_tokens=96")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(0 < v < 20 for v in losses.values()), losses


@pytest.mark.parametrize("recipe", MODERN, ids=lambda p: p.stem)
def test_a_modern_recipe_trains_a_llama_student_with_distribution_matching(recipe, tiny_models, teacher_cot,
                                                                           tmp_path):
    """The recipe as shipped with its model swapped for the session's tiny Llama (BOS-first, packed, a tokenizer
    unlike the teacher's), on the scripted teacher's CoT samples."""
    output = launch_recipe(recipe, tiny_models["llama"], tmp_path / "run", f"data.path={teacher_cot}")
    counts = teacher_token_counts(output)
    assert counts is not None and 0 < counts[0] <= counts[1], counts or output[-3000:]
    losses = read_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(0 < v < 20 for v in losses.values()), losses
