"""Everything downstream of training works for a modern decoder-only student (issue 16, item 5).

A tiny Llama (RoPE, RMSNorm, gated MLP, grouped-query attention, a BOS-prefixed byte-level tokenizer) on 2 CPU
ranks under ZeRO-3 + CPU offload (ds_configs/zero3_offload.json, the demo recipes' default): distribution
matching on a teacher whose tokenizer differs from the student's, an exact resume, the export read back by
plain transformers, evaluation on 1 and 2 ranks, Socratic training and inference with an untied LM head.
A tiny Qwen2 (no BOS, q/k/v biases), a tiny Qwen3 (no BOS, q/k norms) and a tiny Gemma 3 (BOS, q/k norms,
scaled embeddings, a sliding-window layer) go through the same distillation, resume, export and 1/2-rank
evaluation on fewer launches (`family_runs`), and through the in-process checks.

Few launches, many assertions, as tests/test_train_distributed.py: module fixtures train once.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, TINY_RUN, launch, read_losses, synthetic_texts
from cotdistill.alignment import StudentVocab, teacher_targets
from cotdistill.batching import prompt_prefix_ids, tokenize_examples
from cotdistill.checkpoints import complete_checkpoints
from cotdistill.config import TinyModelConfig, load_build_config, load_config
from cotdistill.formats import build_examples
from cotdistill.generation import encode_prompts
from cotdistill.objectives import IGNORE_INDEX
from cotdistill.run_data import load_run_problems
from cotdistill.teacher.builder import build_dataset, load_build_problems
from cotdistill.tiny import build_tiny_model
from fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.distributed

RECIPE = "recipes/demo-gpt2-synthetic.yaml"  # the causal demo; only its model is swapped
# Long enough (at this rate) that greedy generation says something ("After 1 = 1 ..."), so the 1- and 2-rank
# evaluations compare real text rather than 48 spaces; a step takes ~0.2 s here, the launches dominate.
STEPS, EVERY, LR = 60, 30, "3e-3"
# The teacher data: the fake OpenAI teacher's tokens are whitespace-led words ("After", " losing", " 6,"), its
# alternatives strings like " 6,#1": another tokenizer than the student's byte-level BPE.
TEACHER_PROBLEMS = 64
KD = ["data.dataset=teacher_data", "data.split=cot", "train.kd_weight=0.5"]
EVAL_PROBLEMS, EVAL_BATCH, MAX_NEW = 6, 2, 48
# The held-out synthetic problems, as cotdistill eval flags (the demo recipe's operand range).
SYNTHETIC = ["--datasets", "synthetic", "--synthetic.train_size", "256", "--synthetic.eval_size",
             str(EVAL_PROBLEMS), "--synthetic.operand_max", "9", "--batch_size", str(EVAL_BATCH)]
TEACHER_TOKENS = re.compile(r"(\d+) of (\d+) target tokens of traced examples carry the teacher's distribution")
PROBE_TEXTS = ["Question: Ann has 3 apples. Ann finds 4 more apples.", "After buying 2 more, Bob has 5 + 2 = 7."]
# The families besides Llama that go through training, resume, export and evaluation on 2 ranks (family ->
# model_type). A step takes ~0.1 s here and a launch ~12 s, so their steps are many and their launches few:
# after 80 steps both generate text that differs from problem to problem (Qwen3's was the same for all at 60).
FAMILIES = {"qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
FAMILY_STEPS, FAMILY_EVERY = 80, 40
# The Llama trains, exports and evaluates in bf16, the demo's precision; the other families and the Socratic Llama
# in fp32, which this CPU computes about 2.5x faster than bf16 (no native bf16 kernels): what they test is each
# architecture's and the unified mixture's path through ZeRO-3, not the 16-bit rounding the Llama and the
# GPT-2/T5 tests already cover.
FP32 = ["train.precision=fp32"]
# Resuming is the trainer's and the engine's, the same for every family: the Llama resumes in bf16 and Qwen2 (whose
# q/k/v projections have biases) in fp32; Qwen3 and Gemma 3 are not resumed again (two launches fewer).
RESUMED_FAMILIES = ("qwen2",)
# The unified Socratic Llama trains long enough that, asked for its own sub-questions, it writes some ("Q1: ...").
SOCRATIC_STEPS = 100


def train_args(model: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--config", RECIPE, *TINY_RUN, f"model.name_or_path={model}", "model.make_tiny=",
            f"output_dir={output_dir}", *extra]


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_process(script: str, args: list[str]) -> None:
    """Run a launcher as a world of one without the DeepSpeed launcher (the engine makes its own process group),
    as ``python launchers/evaluate.py`` does: ~5 s less start-up than ``launch(..., ranks=1)``."""
    launcher_env = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {**{k: v for k, v in os.environ.items() if k not in launcher_env}, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def evaluate(target: Path, out: Path, ranks: int, *extra: str) -> list[dict]:
    args = [str(target), *SYNTHETIC, "--output_dir", str(out), *extra]
    if ranks == 1:
        one_process("launchers/evaluate.py", args)
    else:
        launch("launchers/evaluate.py", args, ranks=ranks)
    return rows(out / "synthetic" / "predictions.jsonl")


def build_teacher_data(out: Path, problems: int) -> Path:
    """A teacher_data folder built by the data builder from the fake OpenAI teacher: the gold rationale as
    its chain of thought, with top-4 log-probs for every (word) token."""
    build = ["problems.dataset=synthetic", f"problems.synthetic.train_size={problems}",
             "problems.synthetic.operand_max=9", "teacher.model=fake", "cot.samples=1", "cot.k_shot=1",
             "sampling.logprobs=4", f"output_dir={out}"]
    by_question = {p.question: p for p in load_build_problems(load_build_config(None, build).problems)}

    def respond(question: str, prompt: str, sample: int) -> str:
        return f"{by_question[question].rationale} The answer is {by_question[question].answer}."

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", "EMPTY")
        with FakeOpenAIServer(respond) as server:
            build_dataset(load_build_config(None, [*build, f"teacher.base_url={server.base_url}"]))
    return out


@pytest.fixture(scope="module")
def teacher_data(tmp_path_factory) -> Path:
    return build_teacher_data(tmp_path_factory.mktemp("modern-teacher") / "teacher-data", TEACHER_PROBLEMS)


@pytest.fixture(scope="module")
def students(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The session's tiny Llama and a tiny Qwen2, Qwen3 and Gemma 3 of the same size, tokenizers trained on the
    same texts."""
    size = TinyModelConfig(d_model=64, num_layers=2, num_heads=2, d_ff=128, vocab_size=320)
    texts = synthetic_texts("gpt2")
    built = {family: build_tiny_model(family, tmp_path_factory.mktemp(f"modern-{family}") / family, texts, size,
                                      seed=0) for family in ("qwen2", "qwen3", "gemma3")}
    return {"llama": tiny_models["llama"], **built}


@pytest.fixture(scope="module")
def llama_runs(tiny_models, teacher_data, tmp_path_factory) -> dict:
    """A Llama distilled from the teacher's distribution: once uninterrupted, and a copy of it at its first
    checkpoint resumed to the end; then its final/ evaluated on 1 rank (replicated) and on 2 ZeRO-3 ranks."""
    root = tmp_path_factory.mktemp("llama-runs")
    model = tiny_models["llama"]
    common = [*KD, f"data.path={teacher_data}", f"train.max_steps={STEPS}", f"checkpoint.every={EVERY}",
              f"train.lr={LR}"]
    full = launch("launchers/train.py", train_args(model, root / "full", *common))
    # The interrupted run: the uninterrupted one as it stood at its first checkpoint (how a run stops there,
    # train.stop_after_steps or a signal, is the T5's and the Slurm tests' business).
    resumed = copy_at_checkpoint(root / "full", root / "resumed", EVERY)
    launch("launchers/train.py", train_args(model, resumed, *common, "eval.at_end=false"))
    evals = {"one": evaluate(root / "full" / "final", root / "eval-1", 1, "--strategy", "zero_shot_cot",
                             "--max_new_tokens", str(MAX_NEW)),
             "two": evaluate(root / "full" / "final", root / "eval-2", 2, "--strategy", "zero_shot_cot",
                             "--max_new_tokens", str(MAX_NEW), "--zero_stage", "3")}
    return {"model": model, "root": root, "full": root / "full", "resumed": root / "resumed",
            "output": full.stdout + full.stderr, "evals": evals}


def untied_llama(source: Path, out: Path) -> Path:
    """The tiny Llama with an LM head of its own (as Llama 3.1 8B, unlike the small tied sizes)."""
    config = AutoConfig.from_pretrained(source)
    config.tie_word_embeddings = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def socratic_run(tiny_models, tmp_path_factory) -> dict:
    """An untied Llama trained on the unified decomposer + solver mixture, evaluated Socratically at its end on
    the data set's own sub-questions (so the solver answers several rounds of them) on its 2 ZeRO-3 ranks."""
    root = tmp_path_factory.mktemp("llama-socratic")
    model = untied_llama(tiny_models["llama"], root / "untied-llama")
    run = root / "unified"
    # Also gradient accumulation and gradient checkpointing over packed rows (RoPE positions restart per
    # example) under ZeRO-3.
    launch("launchers/train.py", train_args(model, run, *FP32, "data.formats={decomposer: 1, solver: 1}",
                                            "data.per_problem=true", "data.single_format_batches=true",
                                            "checkpoint.every=0", "train.gradient_accumulation=2",
                                            "train.micro_batch_size=2", "model.gradient_checkpointing=true",
                                            "eval.subquestions=gold", "eval.max_step_tokens=16",
                                            f"train.max_steps={SOCRATIC_STEPS}", f"train.lr={LR}"))
    # Then the full Socratic inference: the model asks its own sub-questions and answers them, on 1 rank and
    # on 2 ZeRO-3 ranks (two generation stages per round, every rank in lockstep).
    own = ["--strategy", "socratic", "--subquestions", "model", "--max_new_tokens", "48", "--max_step_tokens",
           "16", "--precision", "fp32"]
    evals = {1: evaluate(run / "final", root / "own-1", 1, *own),
             2: evaluate(run / "final", root / "own-2", 2, *own, "--zero_stage", "3")}
    return {"model": model, "run": run, "own": evals, "own_dir": root / "own-2"}


# --- training, distribution matching, resume ------------------------------------------------------------


def test_first_loss_is_near_ln_vocab_and_loss_falls(llama_runs):
    losses = read_losses(llama_runs["full"])
    expected = math.log(len(AutoTokenizer.from_pretrained(str(llama_runs["model"]))))
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    assert abs(losses[1] - expected) / expected < 0.10, (losses[1], expected)
    assert losses[STEPS] < losses[1] - 1.5, losses


def test_the_teachers_word_tokens_give_llama_target_tokens_the_teachers_distribution(llama_runs):
    found = TEACHER_TOKENS.search(llama_runs["output"])
    assert found, "the trainer did not report how many target tokens carry the teacher's distribution"
    carried, total = int(found[1]), int(found[2])
    assert 0 < carried <= total, (carried, total)
    assert carried >= total // 20, "only a handful of target tokens were aligned with the teacher's"
    assert "64 training problems -> 64 examples" in llama_runs["output"]


def test_the_llama_run_says_once_how_its_packed_rows_are_attended(llama_runs):
    """On CPU ranks the examples of a packed row are re-padded (a varlen flash kernel needs CUDA)."""
    lines = [line for line in llama_runs["output"].splitlines() if "packed attention:" in line]
    assert len(lines) == 1 and lines[0].endswith("examples re-padded inside each attention call (SDPA)"), lines


def test_resumed_run_matches_the_uninterrupted_losses_exactly(llama_runs):
    full, resumed = read_losses(llama_runs["full"]), read_losses(llama_runs["resumed"])
    assert logged_steps(llama_runs["resumed"]) == list(range(1, STEPS + 1)), "every step logged once, in order"
    # Exact on CPU: same ranks, kernels and inputs; the teacher distributions, data position and RNGs carry over.
    assert resumed == full
    lrs = [[row["lr"] for row in rows(run / "train_log.jsonl")] for run in (llama_runs["full"], llama_runs["resumed"])]
    assert lrs[0] == lrs[1]
    assert [c.step for c in complete_checkpoints(llama_runs["resumed"])] == [EVERY, STEPS]
    exported = [load_file(str(run / "final" / "model.safetensors")) for run in (llama_runs["full"],
                                                                                 llama_runs["resumed"])]
    assert sorted(exported[0]) == sorted(exported[1])
    assert all(torch.equal(exported[1][name], tensor) for name, tensor in exported[0].items())


# --- export -------------------------------------------------------------------------------------------


# The run's precision on both sides (the Llama's bf16, the other families' fp32): the engine computes with its
# copy of the fp32 master weights in that precision, which is exactly what the export writes, through the same
# CPU kernels. Measured difference in bf16: exactly 0 for Llama, Qwen3 and Gemma 3; for Qwen2 one bf16 step
# (0.03125 at |logit| in [4, 8)): its q/k/v projections have biases, which ZeRO-3's linear adds after the matmul
# (two roundings) where plain transformers' addmm adds them in one, and the rounding differences carry through the
# layers. The tolerance is two steps of the precision at the largest logit's magnitude (|logit| < 8 here: 0.0625
# in bf16, 1e-6 in fp32); a lost or untied head, a transposed or missing projection moves logits by more than 0.1.
ROUNDING_STEPS = 2


@pytest.fixture(scope="module")
def engine_logits(llama_runs, family_runs, tmp_path_factory) -> dict[str, dict]:
    """The Llama's and each family's engine (its run's last checkpoint, partitioned on 2 ranks) on the probes,
    each starting as that student's training sequences do: one launch for all."""
    root = tmp_path_factory.mktemp("engine-logits")
    runs = {"llama": llama_runs, **family_runs}
    args = []
    for family, run in runs.items():
        tokenizer = AutoTokenizer.from_pretrained(str(run["full"] / "final"))
        prefix = tokenizer.decode(prompt_prefix_ids(tokenizer))  # <bos> for Llama and Gemma, nothing for Qwen
        precision = "bf16" if family == "llama" else "fp32"
        args += [*(["::"] if args else []), f"--precision={precision}", str(run["full"]), str(root / f"{family}.pt"),
                 *[prefix + text for text in PROBE_TEXTS]]
    launch("tests/scripts/engine_logits.py", args)
    return {family: torch.load(root / f"{family}.pt", weights_only=False) for family in runs}


def assert_export_has_the_engines_logits(model: torch.nn.Module, untrained_path: Path, engine: dict,
                                        dtype: torch.dtype) -> None:
    """The export, loaded by plain transformers in ``dtype``, gives the engine's logits on the engine's
    (left-padded) batch, and training moved them."""
    assert engine["dtype"] == str(dtype)
    assert (engine["batch"]["attention_mask"] == 0).any(), "one probe is left-padded"
    with torch.no_grad():
        logits = model(**engine["batch"]).logits.float()
    untrained = AutoModelForCausalLM.from_pretrained(str(untrained_path), dtype=dtype).eval()
    with torch.no_grad():
        before = untrained(**engine["batch"]).logits.float()
    assert logits.shape == engine["logits"].shape
    assert (before - engine["logits"]).abs().max() > 0.1, "training should have changed the logits"
    largest = engine["logits"].abs().max().clamp(min=1)
    tolerance = ROUNDING_STEPS * torch.finfo(dtype).eps * 2 ** largest.log2().floor().item()
    difference = (logits - engine["logits"]).abs().max().item()
    assert difference <= tolerance, f"{difference} > {ROUNDING_STEPS} {dtype} steps at |logit| {largest.item():.2f}"


def test_exported_llama_keeps_its_tied_head_and_reloads_without_deepspeed_with_the_engines_logits(llama_runs,
                                                                                                 engine_logits):
    final = llama_runs["full"] / "final"
    exported = load_file(str(final / "model.safetensors"))
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}, "a bf16 run exports bf16 weights"
    assert "lm_head.weight" not in exported and "model.embed_tokens.weight" in exported  # tied, stored once
    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.bfloat16).eval()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight

    tokenizer = AutoTokenizer.from_pretrained(str(final))
    ids = engine_logits["llama"]["batch"]["input_ids"]
    assert ((ids == tokenizer.bos_token_id).sum(dim=1) == 1).all(), "each probe holds exactly one BOS"
    assert_export_has_the_engines_logits(model, llama_runs["model"], engine_logits["llama"], torch.bfloat16)


def test_a_llama_checkpoint_exports_offline_to_the_same_weights_as_the_final_export(llama_runs, tmp_path):
    checkpoint = complete_checkpoints(llama_runs["full"])[-1].path
    proc = subprocess.run([sys.executable, "-m", "cotdistill.cli", "export", str(checkpoint), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    final = load_file(str(llama_runs["full"] / "final" / "model.safetensors"))
    assert sorted(exported) == sorted(final)
    for name, tensor in final.items():
        assert torch.equal(exported[name], tensor), name


# --- evaluation ---------------------------------------------------------------------------------------


def test_greedy_predictions_are_identical_on_one_replicated_rank_and_two_zero3_ranks(llama_runs):
    one, two = llama_runs["evals"]["one"], llama_runs["evals"]["two"]
    metrics = {n: json.loads((llama_runs["root"] / f"eval-{n}" / "metrics.json").read_text()) for n in (1, 2)}
    assert (metrics[1]["world_size"], metrics[1]["zero_stage"]) == (1, 0)
    assert (metrics[2]["world_size"], metrics[2]["zero_stage"]) == (2, 3)  # generate gathers partitioned weights
    assert [r["index"] for r in two] == list(range(EVAL_PROBLEMS))
    assert all(r["generated"].strip() for r in one), "the student should generate text, not only whitespace"
    assert [(r["generated"], r["generated_tokens"], r["extracted"], r["correct"]) for r in two] == \
        [(r["generated"], r["generated_tokens"], r["extracted"], r["correct"]) for r in one]
    assert metrics[2]["datasets"]["synthetic"]["total"] == EVAL_PROBLEMS


def test_evaluation_prompts_start_as_the_llamas_training_sequences_do(llama_runs):
    """The evaluator's prompt ids start with Llama's BOS, as every training sequence does, and the question
    text follows it without a second BOS."""
    tokenizer = AutoTokenizer.from_pretrained(str(llama_runs["full"] / "final"))
    prompts = [r["prompt"] for r in llama_runs["evals"]["one"]]
    encoded = encode_prompts(tokenizer, True, prompts, 1024)
    assert prompt_prefix_ids(tokenizer) == (tokenizer.bos_token_id,)
    assert all(ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1 for ids in encoded)


# --- Qwen2, Qwen3 and Gemma 3 on 2 ranks -----------------------------------------------------------------

# Fewer launches than the Llama's: the interrupted run is a copy of the uninterrupted one as it stood at its first
# checkpoint (what a stopped run leaves is the Llama's and T5's tests' business), and the 2-rank evaluation is the
# training run's own at its end (the same evaluation code, on the live ZeRO-3 engine), compared with
# `cotdistill eval` of the export on 1 rank.


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory) -> Path:
    """The held-out synthetic problems as a question/answer file, a dev set the KD runs (whose teacher data has
    no held-out split) and the 1-rank evaluator both read."""
    _, held_out = load_run_problems(load_config(RECIPE, TINY_RUN).data)
    assert len(held_out) == EVAL_PROBLEMS
    path = tmp_path_factory.mktemp("modern-eval") / "probe-set.jsonl"
    path.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in held_out))
    return path


def copy_at_checkpoint(run: Path, out: Path, step: int) -> Path:
    """``run`` as it stood once its checkpoint at ``step`` was complete: its later checkpoints, export and
    evaluation left out. Its log keeps the later steps' rows, as a run killed after logging them would: the
    trainer must drop them itself."""
    shutil.copytree(run, out)
    for checkpoint in complete_checkpoints(out):
        if checkpoint.step > step:
            shutil.rmtree(checkpoint.path)
    for folder in ("final", "eval"):
        if (out / folder).exists():
            shutil.rmtree(out / folder)
    return out


@pytest.fixture(scope="module")
def family_runs(students, teacher_data, eval_file, tmp_path_factory) -> dict[str, dict]:
    """Per family: a student distilled from the teacher's distribution on 2 ZeRO-3 ranks and evaluated there at
    its end; for RESUMED_FAMILIES a copy of it at its first checkpoint resumed to the end; its final/ evaluated on
    1 rank."""
    runs = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(f"{family}-runs")
        model = students[family]
        common = [*KD, *FP32, f"data.path={teacher_data}", f"train.max_steps={FAMILY_STEPS}",
                  f"checkpoint.every={FAMILY_EVERY}", f"train.lr={LR}", f"eval.datasets=[{eval_file}]",
                  f"eval.max_new_tokens={MAX_NEW}", f"eval.batch_size={EVAL_BATCH}"]
        full = launch("launchers/train.py", train_args(model, root / "full", *common))
        resumed = None
        if family in RESUMED_FAMILIES:
            resumed = copy_at_checkpoint(root / "full", root / "resumed", FAMILY_EVERY)
            launch("launchers/train.py", train_args(model, resumed, *common, "eval.at_end=false"))
        one = root / "eval-1"
        one_process("launchers/evaluate.py", [str(root / "full" / "final"), "--datasets", str(eval_file),
                                              "--strategy", "zero_shot_cot", "--max_new_tokens", str(MAX_NEW),
                                              "--batch_size", str(EVAL_BATCH), "--precision", "fp32",
                                              "--output_dir", str(one)])
        runs[family] = {"model": model, "full": root / "full", "resumed": resumed, "output": full.stdout + full.stderr,
                        "evals": {1: one, 2: root / "full" / "eval"}}
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_modern_families_distill_from_the_teachers_word_tokens_and_their_loss_falls(family_runs, family):
    losses = read_losses(family_runs[family]["full"])
    assert sorted(losses) == list(range(1, FAMILY_STEPS + 1))
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    assert losses[FAMILY_STEPS] < losses[1] - 1.5, losses
    found = TEACHER_TOKENS.search(family_runs[family]["output"])
    assert found, "the trainer did not report how many target tokens carry the teacher's distribution"
    carried, total = int(found[1]), int(found[2])
    assert 0 < carried <= total and carried >= total // 20, found[0]


@pytest.mark.parametrize("family", RESUMED_FAMILIES)
def test_modern_families_resume_from_a_checkpoint_with_the_uninterrupted_losses_and_weights(family_runs, family):
    full, resumed = family_runs[family]["full"], family_runs[family]["resumed"]
    assert logged_steps(resumed) == list(range(1, FAMILY_STEPS + 1)), "every step logged once, in order"
    assert read_losses(resumed) == read_losses(full)  # exact, as the Llama's
    assert [row["lr"] for row in rows(resumed / "train_log.jsonl")] == \
        [row["lr"] for row in rows(full / "train_log.jsonl")]
    assert [c.step for c in complete_checkpoints(resumed)] == [FAMILY_EVERY, FAMILY_STEPS]
    exported = [load_file(str(run / "final" / "model.safetensors")) for run in (full, resumed)]
    assert sorted(exported[0]) == sorted(exported[1])
    for name, tensor in exported[0].items():
        assert torch.equal(exported[1][name], tensor), name


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_modern_families_reload_without_deepspeed_with_the_engines_logits(family_runs, engine_logits,
                                                                                    family):
    final = family_runs[family]["full"] / "final"
    exported = load_file(str(final / "model.safetensors"))
    assert {t.dtype for t in exported.values()} == {torch.float32}, "an fp32 run exports fp32 weights"
    assert "lm_head.weight" not in exported and "model.embed_tokens.weight" in exported  # tied, stored once
    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()
    assert model.config.model_type == FAMILIES[family]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    engine = engine_logits[family]
    ids = engine["batch"]["input_ids"]
    if family == "gemma3":
        assert ((ids == tokenizer.bos_token_id).sum(dim=1) == 1).all(), "each probe holds exactly one BOS"
    else:
        assert tokenizer.bos_token_id is None or not (ids == tokenizer.bos_token_id).any()
    assert_export_has_the_engines_logits(model, family_runs[family]["model"], engine, torch.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_modern_families_greedy_predictions_are_identical_on_one_rank_and_two_zero3_ranks(family_runs, family):
    """The export evaluated by `cotdistill eval` on 1 replicated rank says what the live engine said on its 2
    ZeRO-3 ranks at the end of training."""
    found = {n: sorted(folder.glob("*/predictions.jsonl")) for n, folder in family_runs[family]["evals"].items()}
    assert [len(paths) for paths in found.values()] == [1, 1], found
    metrics = {n: json.loads((paths[0].parent / "metrics.json").read_text()) for n, paths in found.items()}
    assert metrics[1]["world_size"] == 1 and metrics[2]["world_size"] == 2
    assert metrics[1]["strategy"] == metrics[2]["strategy"] == "zero_shot_cot"
    one, two = rows(found[1][0]), rows(found[2][0])
    assert [r["index"] for r in two] == list(range(EVAL_PROBLEMS))
    assert [r["prompt"] for r in two] == [r["prompt"] for r in one]
    assert all(r["generated"].strip() for r in one), "the student should generate text, not only whitespace"
    assert len({r["generated"] for r in one}) > 1, "the student should answer each problem, not say one text"
    assert [(r["generated"], r["generated_tokens"], r["extracted"], r["correct"]) for r in two] == \
        [(r["generated"], r["generated_tokens"], r["extracted"], r["correct"]) for r in one]


# --- Socratic -----------------------------------------------------------------------------------------


def test_a_unified_untied_llama_trains_on_both_tasks_and_answers_every_gold_subquestion(socratic_run):
    losses = read_losses(socratic_run["run"])
    assert sorted(losses) == list(range(1, SOCRATIC_STEPS + 1))
    assert all(math.isfinite(v) and v > 0 for v in losses.values()) and losses[SOCRATIC_STEPS] < losses[1]
    folder = socratic_run["run"] / "eval" / "held-out"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["strategy"] == "socratic" and metrics["subquestions"] == "gold"
    assert metrics["total"] == 6 and metrics["world_size"] == 2
    predictions = rows(folder / "predictions.jsonl")
    assert [p["index"] for p in predictions] == list(range(6))
    assert max(len(p["subquestions"]) for p in predictions) > 1, "several solver rounds"
    for prediction in predictions:
        assert prediction["subquestions"], prediction
        assert len(prediction["subanswers"]) == len(prediction["subquestions"])


def test_a_unified_llama_asks_its_own_subquestions_and_answers_each_identically_on_one_and_two_ranks(socratic_run):
    one, two = socratic_run["own"][1], socratic_run["own"][2]
    metrics = json.loads((socratic_run["own_dir"] / "synthetic" / "metrics.json").read_text())
    assert metrics["strategy"] == "socratic" and metrics["subquestions"] == "model" and metrics["world_size"] == 2
    assert [p["index"] for p in two] == list(range(EVAL_PROBLEMS))
    asked = [p for p in two if p["subquestions"]]
    assert asked, "the decomposer asked no sub-question the solver could answer"
    for prediction in two:
        assert len(prediction["subanswers"]) == len(prediction["subquestions"]), prediction
    keys = ("index", "subquestions", "subanswers", "prediction", "output")
    assert [{k: p.get(k) for k in keys} for p in one] == [{k: p.get(k) for k in keys} for p in two]


def test_an_untied_llama_head_stays_its_own_through_zero3_training_and_export(socratic_run):
    """Loaded partitioned under ZeRO-3, trained and exported, the head is still the checkpoint's own matrix:
    not the embedding (tied by mistake), and still close to where it started."""
    final = load_file(str(socratic_run["run"] / "final" / "model.safetensors"))
    original = load_file(str(socratic_run["model"] / "model.safetensors"))
    head, embedding = final["lm_head.weight"].float(), final["model.embed_tokens.weight"].float()
    assert not torch.equal(head, embedding)
    assert not AutoConfig.from_pretrained(socratic_run["run"] / "final").tie_word_embeddings

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()

    # Still nearer its own start than the embedding's (after SOCRATIC_STEPS at a high rate it moved a lot).
    assert cosine(head, original["lm_head.weight"].float()) > 0.2
    assert abs(cosine(head, original["model.embed_tokens.weight"].float())) < 0.1
    assert cosine(embedding, original["model.embed_tokens.weight"].float()) > 0.5


# --- in-process checks for both modern families -------------------------------------------------------


# Alternatives a teacher offers in other tokenizers' spellings ("▁": sentencepiece, "Ġ": byte-level) of words
# the tiny students have as one token, and strings no student token spells.
IN_VOCAB = [" has", "Ġ=", "▁more", "Ġ+", ","]
OUT_OF_VOCAB = ["▁zqxj", "<nope>"]


def with_alternatives(records: list, rng: random.Random) -> list:
    """The fake teacher's records with their made-up alternatives replaced by in- and out-of-vocab ones."""
    out = []
    for text, logprob, _ in records:
        alternatives = [[rng.choice(IN_VOCAB), logprob - 0.7], [rng.choice(OUT_OF_VOCAB), logprob - 1.1]]
        out.append([text, logprob, [[text, logprob], *alternatives]])
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3"])
def test_teacher_tokens_map_into_the_modern_students_vocabulary(students, teacher_data, family):
    """The teacher data as training tokenizes it: a Llama's and a Gemma's sequences start with BOS and a Qwen3's
    with the prompt; either way the targets end with EOS, and the teacher's word tokens give aligned target tokens a
    distribution over student ids (never a special one) whose strict argmax is the student's own token."""
    tokenizer = AutoTokenizer.from_pretrained(str(students[family]))
    config = load_config(RECIPE, [*KD, f"data.path={teacher_data}"])
    train, _ = load_run_problems(config.data)
    examples = build_examples(train, config.data.formats, seed=config.train.seed)
    rng = random.Random(5)
    examples = [replace(e, teacher_tokens=with_alternatives(e.teacher_tokens, rng)) for e in examples[:16]]
    vocab = StudentVocab(tokenizer)
    assert all(vocab.lookup(text) is not None for text in IN_VOCAB)
    assert all(vocab.lookup(text) is None for text in OUT_OF_VOCAB)
    tokenized, stats = tokenize_examples(examples, tokenizer, True, 192, 160,
                                         teacher_fn=lambda t, ids: teacher_targets(t, ids, tokenizer, vocab))
    prefix = prompt_prefix_ids(tokenizer)
    assert prefix == ((tokenizer.bos_token_id,) if family in ("llama", "gemma3") else ())
    special = set(tokenizer.all_special_ids)
    spread = 0
    for example in tokenized:
        assert tuple(example.input_ids[:len(prefix)]) == prefix
        assert example.input_ids[len(prefix)] not in special
        targets = [label for label in example.labels if label != IGNORE_INDEX]
        assert targets[-1] == tokenizer.eos_token_id and len(example.teacher) == len(targets)
        assert example.teacher[-1] is None  # EOS learns one-hot
        for token_id, target in zip(targets, example.teacher, strict=True):
            if target is None:
                continue
            ids, probs = target
            assert ids[0] == token_id and all(p < probs[0] for p in probs[1:])
            assert math.isclose(sum(probs), 1.0, rel_tol=1e-9)
            assert not special & set(ids)
            spread += len(ids) > 1
    assert stats.teacher_tokens > stats.target_tokens_with_teacher // 10, stats.summary()
    assert spread > stats.teacher_tokens // 4, "the in-vocab alternatives should reach the targets"
