"""Training throughput of cotdistill's trainer against the Hugging Face Trainer, with MFU.

For each workload the model is prepared once (random init saved with save_pretrained, tokenizer trained on
the workload's data: `cotdistill make-tiny`'s code with the workload's size), then the two trainers run one
after the other, never at the same time, with the same recipe and overrides:

    deepspeed --num_gpus 2 launchers/train.py --config <recipe> <overrides>           (ours; no eval)
    deepspeed --num_gpus 2 benchmarks/hf_trainer_baseline.py --config <recipe> <overrides>   (HF Trainer)

and then both trainers' final weights and the initial model are scored on the same held-out examples
(benchmarks/heldout_loss.py, see "Held-out loss" below).

Workloads: tiny-gpt2 and tiny-t5 (the demo recipes' tiny sizes, synthetic problems), t5-small (d_model 512,
d_ff 2048, 6+6 layers, 8 heads, gated-GELU as FlanT5) and gpt2-small (768, 12 layers, 12 heads) on the
GSM8K teacher traces (`data.dataset=traces`, LLaMA-3-70B's file in shared/data/teacher_traces).

Measured from each trainer's per-step log (train_log.jsonl), in steady state: the first --skip optimizer
steps are dropped, and rates are totals over the remaining steps divided by the wall time from the end of
step `skip` to the end of the last step (so every per-step cost counts: data, logging, collectives):
samples/s, non-padding tokens/s (cotdistill.batching.padding_stats: encoder + decoder positions for T5),
padding fraction (1 - real / slots over the window), train loss (the mean of the last --loss_window steps'
logged losses: each the token-weighted mean over both ranks of that step's batch, in both trainers; JSON
"final_loss"). Peak RSS: the sum of RSS (/proc/<pid>/statm) over the launcher's whole process tree, polled
every 0.2 s the same way for both, up to the end of the last training step (after it both export their final
weights and our trainer writes a checkpoint, which is not training; "wall s" includes them).
MFU: useful training FLOPs (cotdistill.flops: 3 x forward over each example's real tokens) of the window's
steps per second, over the machine's bf16 (or fp32) matmul peak measured by benchmarks/matmul_peak.py in
the training layout (one single-thread process per rank). HFU counts what the padded batches computed
instead (padding and a causal model's logits at prompt positions included). The HF baseline logs each
step's examples and padded shapes; ours is replayed from cotdistill's deterministic batch order and checked
against its logged token counts (if they ever disagree, the dataset's mean FLOPs per token is used, a warning
is printed and the JSON says "flops_source": "dataset mean"). The learning rates both trainers applied are
compared step by step (warmup is 0 so that they are identical).

Same batches (default, --same_batches). The Trainer trains on exactly the per-rank micro-batches our trainer
trains on (benchmarks/hf_trainer_baseline.py --batch_order cotdistill: our deterministic batch order laid out
for accelerate's dealing of batches to ranks), so the two runs differ only in the trainers. Which examples the
first steps happen to draw moves a short run's loss by more than the tolerance: llama-100m at 20 steps,
our order against the Trainer's own random sampler, ended 0.09-0.16 nats apart over three seeds (in the
Trainer's favour each time), yet on the same batches the two trainers' per-step losses agree within 0.003 nats
at every step and the held-out losses within 0.001 (docs/BENCHMARKS.md). --no-same_batches gives the Trainer
its own random sampler (the comparison of defaults; its padding then comes from random batches, as with ours
packed or with train.group_by_length=false).

Held-out loss. The train loss above does not compare the two trainers on its own: with --no-same_batches their
last steps see different examples, and a per-step token mean over short examples differs from one over a mixed
batch even for the same weights. So both trainers export their final weights after the last step (outside the
measured window): ours with checkpoint.export_final=true, the baseline the same way (its ZeRO-3 partitions
gathered parameter by parameter to rank 0, written with save_pretrained; see benchmarks/hf_trainer_baseline.py), both to
<run>/final; these are the bf16 weights each model trained with (equal, bit for bit, to its fp32 master weights
rounded to bf16). Then one plain CPU process (benchmarks/heldout_loss.py, no DeepSpeed) scores the initial
model and both final models on the same --heldout_size (256) held-out problems that no training run saw,
built and tokenized exactly like the training examples (build_examples, tokenize_examples, the run's tokenizer
and truncation):
- synthetic workloads: the generator's held-out problems (load_run_problems: a disjoint seed, no question
  equal to a training question), with data.synthetic.eval_size=256 and data.synthetic.eval_steps=0 (the
  training range of 1-3 steps rather than the recipe's 3-step evaluation set); neither changes the training
  problems. Both trainers get the two overrides.
- traces workloads: training uses the first N - 256 problems of the traces file (data.limit; N = 7442 problems
  read from LLaMA's GSM8K file, so 7186 train), the last 256 are held out (the file has no duplicate questions;
  its order shows no trend in length).
Held-out loss = sum over the held-out batches of cotdistill.objectives.mean_token_nll x its target tokens,
over all target tokens: the mean NLL per target token, as our trainer's loss is defined (a causal model's
prompt positions excluded), in eval mode (no dropout), with the weights in the training precision (bf16; the
initial model rounded as both trainers load it) upcast to fp32, the forward pass in fp32. Its table column shows
initial -> final; a warning is printed if a final model equals the initial one or does not beat it.
The ">= 1.3x at equal or lower loss" verdict compares the held-out losses: ours must be at most HF's +
--loss_tolerance (0.02 nats). Run-to-run noise: tiny-t5, 80 steps, the same initial model trained with
train.seed 42 and 43 (different batch orders): held-out loss 2.5990 / 2.5935 (ours) and 2.5230 / 2.5064 (HF),
so one trainer's seed-to-seed spread was up to 0.017 nats (0.65%), while the train loss (last 5 steps) moved by
0.04. The tolerance covers that spread; it is an absolute one, measured on a tiny workload only.

Usage:
    python benchmarks/train_throughput.py [--workloads tiny-gpt2,tiny-t5,t5-small,gpt2-small]
        [--steps 40 | --steps tiny-gpt2=60 t5-small=10] [--skip 4] [--loss_window 5] [--heldout_size 256]
        [--loss_tolerance 0.02] [--out result.json]
Prints a Markdown table (and the matmul peaks); --out writes everything as JSON. Runs stay in
runs/bench-train/<workload>/ (model/, ours/, hf/, heldout.json, and each launch's log).
On a CUDA machine both trainers train on the GPUs (the baseline with NCCL, not `use_cpu`) and MFU is over one
GPU's measured matmul peak: `--ranks 1` for the one-GPU comparison of issue 7. Not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import RssPoller  # noqa: E402

from cotdistill.entrypoints import run_or_exit  # noqa: E402
from cotdistill.outputs import check_output_file  # noqa: E402

ROOT = REPO / "runs" / "bench-train"
TRACES = "teacher_traces/gsm8k_llama_level2_ranked.json"
# Off in both trainers' runs: no evaluation, no periodic checkpoints (ours still writes one at the end, after the
# last logged step, outside every measurement). Both export their final weights to <output_dir>/final after the
# last step (outside the measured window too) for the held-out loss.
QUIET = ("checkpoint.every=0", "checkpoint.export_final=true", "eval.at_end=false", "model.make_tiny=")


@dataclass(frozen=True)
class Workload:
    arch: str  # t5 | gpt2, as `cotdistill make-tiny`
    recipe: str
    steps: int
    size: tuple[str, ...] = ()  # model.tiny.* overrides ('': the recipe's tiny size)
    traces: bool = False  # GSM8K teacher traces instead of the recipe's synthetic problems
    overrides: tuple[str, ...] = ()  # training settings of this workload, for both trainers
    notes: str = ""


WORKLOADS = {
    "tiny-gpt2": Workload("gpt2", "recipes/demo-gpt2-synthetic.yaml", 80, overrides=("train.lr=1e-3",)),
    "tiny-t5": Workload("t5", "recipes/demo-t5-synthetic.yaml", 80, overrides=("train.lr=1e-3",)),
    "t5-small": Workload(
        "t5", "recipes/demo-t5-synthetic.yaml", 20, traces=True,
        size=("model.tiny.vocab_size=32128", "model.tiny.d_model=512", "model.tiny.d_ff=2048",
              "model.tiny.num_layers=6", "model.tiny.num_heads=8"),
        overrides=("train.micro_batch_size=8", "train.lr=3e-4")),
    "gpt2-small": Workload(
        "gpt2", "recipes/demo-gpt2-synthetic.yaml", 20, traces=True,
        size=("model.tiny.vocab_size=50257", "model.tiny.d_model=768", "model.tiny.d_ff=3072",
              "model.tiny.num_layers=12", "model.tiny.num_heads=12", "model.tiny.n_positions=1024"),
        overrides=("train.micro_batch_size=8", "train.lr=3e-4")),
    # A modern decoder-only student (issue 16): RoPE, RMSNorm, gated MLP, grouped-query attention (6 key/value
    # heads for 12 query heads), tied embeddings, BOS-prefixed sequences; ~100M parameters at GPT-2 small's
    # width and depth with Llama's 2048-wide gated MLP.
    "llama-100m": Workload(
        "llama", "recipes/demo-gpt2-synthetic.yaml", 20, traces=True,
        size=("model.tiny.vocab_size=32000", "model.tiny.d_model=768", "model.tiny.d_ff=2048",
              "model.tiny.num_layers=12", "model.tiny.num_heads=12", "model.tiny.n_positions=1024"),
        overrides=("train.micro_batch_size=8", "train.lr=3e-4")),
}
TRAINERS = {"cotdistill": "launchers/train.py", "HF Trainer": "benchmarks/hf_trainer_baseline.py"}
TAGS = {"cotdistill": "ours", "HF Trainer": "hf"}  # run folders under runs/bench-train/<workload>/
LOSS_TOLERANCE = 0.02  # nats: held-out losses closer than this count as equal (see the module docstring)


def log(message: str) -> None:
    print(f"[bench-train] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- memory -------------------------------------------------------------------------------------------------

# -- preparing and running ------------------------------------------------------------------------------------


def run_overrides(workload: Workload, data_dir: Path, steps: int, extra: list[str], heldout: int) -> list[str]:
    # Held-out problems (benchmarks/heldout_loss.py): synthetic data keeps its training problems and draws
    # `heldout` held-out ones from the generator's disjoint seed with the training range of steps; the traces
    # file is cut: training gets all but its last `heldout` problems (data.limit), which are held out.
    data = [f"data.data_dir={data_dir}", f"data.synthetic.eval_size={heldout}", "data.synthetic.eval_steps=0"]
    if workload.traces:
        data = ["data.dataset=traces", f"data.path={data_dir / TRACES}",
                f"data.limit={trace_problems(data_dir / TRACES) - heldout}"]
    # No warmup: then both trainers apply the very same learning rate at every step (the Trainer's warmup starts
    # one step later than ours, so any warmup would differ by a step; the cosine decay is the same formula).
    # Without warmup the workloads use lower peak rates than the demo recipes (3e-3 with 30 warmup steps spiked).
    return [*data, *workload.overrides, f"train.max_steps={steps}", "train.warmup_steps=0", *QUIET, *extra]


def trace_problems(path: Path) -> int:
    """Problems cotdistill reads from a traces file (records without an extractable answer are dropped)."""
    from cotdistill.problems.loaders import load_problems

    return len(load_problems("traces", path=path))


def prepare_model(name: str, workload: Workload, overrides: list[str], folder: Path, keep: bool) -> None:
    """`cotdistill make-tiny` with the workload's size: tokenizer trained on its texts, random init saved."""
    if keep and (folder / "config.json").is_file():
        log(f"{name}: keeping the model in {folder}")
        return
    from cotdistill.config import load_config
    from cotdistill.run_data import load_run_problems, run_examples
    from cotdistill.tiny import build_tiny_model

    shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    run = load_config(REPO / workload.recipe, [*overrides, *workload.size])
    problems, _ = load_run_problems(run.data)
    build_tiny_model(workload.arch, folder, [e.source + e.target for e in run_examples(run, problems)],
                     run.model.tiny, seed=run.train.seed)
    log(f"{name}: model and tokenizer prepared in {time.monotonic() - started:.0f} s ({folder})")


@dataclass
class Launch:
    rows: list[dict[str, Any]]
    wall_s: float
    rss: RssPoller
    log_file: Path


def launch(trainer: str, workload: Workload, overrides: list[str], out: Path, ranks: int, log_file: Path,
           flags: tuple[str, ...] = ()) -> Launch:
    """One 2-rank training run under the DeepSpeed launcher, with its process tree's RSS polled."""
    shutil.rmtree(out, ignore_errors=True)  # never resume an earlier run's checkpoint
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port",
           str(free_port()), TRAINERS[trainer], *flags, "--config", workload.recipe, *overrides, f"output_dir={out}"]
    log("+ " + " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log_file, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        poller = RssPoller(proc.pid)
        poller.start()
        code = proc.wait()
        poller.stop()
    wall = time.monotonic() - started
    if code != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{trainer} exited with {code}; see {log_file}\n{tail}")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return Launch(sorted(rows, key=lambda r: r["step"]), wall, poller, log_file)


# -- FLOPs ----------------------------------------------------------------------------------------------------


def tokenized_run(recipe: str, overrides: list[str]):
    """(config, tokenized examples, causal) exactly as both trainers build them."""
    from cotdistill.batching import tokenize_examples
    from cotdistill.config import load_config
    from cotdistill.modeling import detect_kind, load_tokenizer
    from cotdistill.run_data import load_run_problems, run_examples

    config = load_config(REPO / recipe, overrides)
    problems, _ = load_run_problems(config.data)
    examples = run_examples(config, problems)
    causal = detect_kind(config.model.name_or_path) == "causal"
    tokenizer = load_tokenizer(config.model.name_or_path)
    tokenized, _ = tokenize_examples(examples, tokenizer, causal, config.data.max_source_tokens,
                                     config.data.max_target_tokens)
    return config, tokenized, causal


def example_lengths(example, causal: bool) -> tuple[int, int]:
    """(source, target) tokens of a tokenized example; a causal example's source is its unlabelled prompt."""
    if causal:
        target = sum(1 for label in example.labels if label != -100)
        return len(example.input_ids) - target, target
    return len(example.input_ids), len(example.labels)


def replay_our_steps(config, tokenized, causal: bool, ranks: int, steps: int) -> list[dict[str, Any]]:
    """Our trainer's batches for steps 1..steps, from cotdistill's deterministic batch order (no resume).

    Padded micro-batches are listed in `shapes` ([rows, input width, label width]); packed ones in `packed`
    ([example lengths, logit positions, target lengths]: what `cotdistill.flops.packed_forward_flops` needs).
    """
    from transformers import AutoConfig

    from cotdistill.batching import run_batch_order
    from cotdistill.packed_attention import can_pack

    t = config.train
    pack = t.pack_sequences and can_pack(AutoConfig.from_pretrained(config.model.name_or_path))
    order = run_batch_order(tokenized, causal, ranks, t, config.data.single_format_batches, pack)
    streams = [order.iterate(rank) for rank in range(ranks)]
    replay = []
    for _ in range(steps):
        examples, shapes, packed = [], [], []
        for _ in range(t.gradient_accumulation):
            for stream in streams:
                batch = [tokenized[i] for i in next(stream)]
                examples += [example_lengths(e, causal) for e in batch]
                widths = [len(e.input_ids) for e in batch]
                if pack and causal:
                    packed.append([widths, sum(example_lengths(e, causal)[1] for e in batch), []])
                elif pack:
                    packed.append([widths, 0, [len(e.labels) for e in batch]])
                else:
                    shapes.append([len(batch), max(widths), 0 if causal else max(len(e.labels) for e in batch)])
        replay.append({"examples": examples, "shapes": shapes, "packed": packed,
                       "real_tokens": sum(s + t for s, t in examples)})
    return replay


def step_flops(shape, step: dict[str, Any]) -> tuple[float, float]:
    """(useful, hardware) training FLOPs of one optimizer step from its examples and batch shapes."""
    from cotdistill.flops import forward_flops, packed_forward_flops, padded_forward_flops, training_flops

    useful = sum(training_flops(forward_flops(shape, s, t)) for s, t in step["examples"])
    hardware = sum(training_flops(padded_forward_flops(shape, rows, width, labels))
                   for rows, width, labels in step["shapes"])
    hardware += sum(training_flops(packed_forward_flops(shape, lengths, logits, targets or None))
                    for lengths, logits, targets in step.get("packed", []))
    return float(useful), float(hardware)


# -- metrics --------------------------------------------------------------------------------------------------


def normalise_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Counts per step for both logs: ours logs rates and the step time, the baseline logs counts too."""
    out = []
    for row in rows:
        row = dict(row)
        if "real_tokens" not in row:
            row["real_tokens"] = row["tokens_per_s"] * row["step_time_s"]
            row["samples"] = row["samples_per_s"] * row["step_time_s"]
            real_share = 1.0 - row["padding_fraction"]
            row["token_slots"] = row["real_tokens"] / real_share if real_share > 0 else 0.0
        out.append(row)
    return out


def rss_timeline(poller: RssPoller, every: int = 5) -> list[tuple[float, float]]:
    """(seconds since the first sample, GiB) of every `every`-th RSS sample (1 s apart at the 0.2 s poll)."""
    if not poller.samples:
        return []
    start = poller.samples[0][0]
    return [(round(t - start, 2), round(rss / 2 ** 30, 3)) for t, rss in poller.samples[::every]]


def summarise(run: Launch, skip: int, loss_window: int, per_step_flops, peak_flops: float,
              mean_flops_per_token: float) -> dict[str, Any]:
    """Steady-state figures of one run: the steps after `skip`, timed from the end of step `skip`."""
    rows = normalise_rows(run.rows)
    if len(rows) <= skip + 1:
        raise RuntimeError(f"only {len(rows)} steps logged; need more than --skip {skip} + 1")
    window = rows[skip:]  # skip >= 1: the window starts when step `skip` ended
    seconds = window[-1]["time"] - rows[skip - 1]["time"]
    real = sum(r["real_tokens"] for r in window)
    slots = sum(r["token_slots"] for r in window)
    samples = sum(r["samples"] for r in window)
    if per_step_flops is not None:
        useful = sum(per_step_flops[r["step"] - 1][0] for r in window)
        hardware = sum(per_step_flops[r["step"] - 1][1] for r in window)
        flops_source = "per step"
    else:
        useful, hardware, flops_source = real * mean_flops_per_token, float("nan"), "dataset mean"
    losses = [r["loss"] for r in rows[-loss_window:]]
    return {
        "steps": len(rows), "measured_steps": len(window), "measured_seconds": seconds,
        "samples_per_s": samples / seconds, "tokens_per_s": real / seconds,
        "padding_fraction": 1.0 - real / slots if slots else 0.0,
        "real_tokens_per_sample": real / samples,
        "final_loss": sum(losses) / len(losses), "first_loss": rows[0]["loss"],
        "mean_step_s": seconds / len(window),
        "step_time_s": [round(r["step_time_s"], 4) for r in rows],
        "peak_rss_gib": run.rss.peak(until=rows[-1]["time"]) / 2 ** 30,
        "peak_rss_whole_run_gib": run.rss.peak() / 2 ** 30, "wall_s": run.wall_s,
        "rss_timeline_gib": rss_timeline(run.rss), "training_ended_s": rows[-1]["time"] - run.rss.samples[0][0],
        "model_tflops_per_s": useful / seconds / 1e12, "hardware_tflops_per_s": hardware / seconds / 1e12,
        "mfu": useful / seconds / peak_flops, "hfu": hardware / seconds / peak_flops, "flops_source": flops_source,
        "losses": [round(r["loss"], 5) for r in rows], "lrs": [r.get("lr") for r in rows],
    }


def measure_peak(args) -> dict[str, Any]:
    out = ROOT / "matmul_peak.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "matmul_peak.py"), "--seconds", str(args.peak_seconds),
           "--out", str(out)]
    log("+ " + " ".join(cmd))
    subprocess.run(cmd, cwd=REPO, check=True, stdout=sys.stderr)
    return json.loads(out.read_text(encoding="utf-8"))


def bench_workload(name: str, args, peaks: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoConfig

    from cotdistill.flops import forward_flops, model_shape, training_flops

    workload = WORKLOADS[name]
    folder = ROOT / name
    folder.mkdir(parents=True, exist_ok=True)
    steps = args.steps.get(name, workload.steps)
    base = run_overrides(workload, args.data_dir, steps, args.override, args.heldout_size)
    prepare_model(name, workload, base, folder / "model", args.keep_models)
    overrides = [*base, f"model.name_or_path={folder / 'model'}"]

    config, tokenized, causal = tokenized_run(workload.recipe, overrides)
    model_config = AutoConfig.from_pretrained(folder / "model")
    shape = model_shape(model_config)
    lengths = [example_lengths(e, causal) for e in tokenized]
    mean_flops_per_token = (sum(training_flops(forward_flops(shape, s, t)) for s, t in lengths)
                            / sum(s + t for s, t in lengths))
    precision = config.train.precision if config.train.precision in ("bf16", "fp32") else "bf16"
    layout = peaks["training_layout"]
    peak_flops = peaks[precision][layout]["gflops"] * 1e9

    results: dict[str, Any] = {}
    for trainer in args.trainers:
        tag = TAGS[trainer]
        flags = ("--batch_order", "cotdistill") if args.same_batches and trainer == "HF Trainer" else ()
        run = launch(trainer, workload, overrides, folder / tag, args.ranks, folder / f"{tag}.log", flags)
        if trainer == "cotdistill":
            replay = replay_our_steps(config, tokenized, causal, args.ranks, len(run.rows))
            logged = [r["real_tokens"] for r in normalise_rows(run.rows)]
            matches = all(abs(a["real_tokens"] - b) < 0.5 for a, b in zip(replay, logged, strict=True))
            if not matches:
                log(f"{name}: our replayed batches disagree with the logged token counts; using mean FLOPs/token")
            per_step = [step_flops(shape, step) for step in replay] if matches else None
        else:
            per_step = [step_flops(shape, row) for row in run.rows]
        results[trainer] = summarise(run, args.skip, args.loss_window, per_step, peak_flops, mean_flops_per_token)
        log(f"{name} {trainer}: {results[trainer]['tokens_per_s']:.0f} tokens/s, "
            f"train loss (last {args.loss_window} steps) {results[trainer]['final_loss']:.4f}, wall {run.wall_s:.0f} s")
    heldout = heldout_losses(name, workload, overrides, folder, args.trainers, args.heldout_size)
    for trainer in args.trainers:
        results[trainer]["heldout_initial"] = heldout["models"]["initial"]["loss"]
        results[trainer]["heldout_loss"] = heldout["models"][TAGS[trainer]]["loss"]
    params = saved_parameters(folder / "model" / "model.safetensors")
    lr_gap = None
    if len(results) == len(TRAINERS):
        # Ours logs the lr an update used, the Trainer the lr after its scheduler stepped (the next update's).
        ours_lr, hf_lr = results["cotdistill"]["lrs"][1:], results["HF Trainer"]["lrs"][:-1]
        lr_gap = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(ours_lr, hf_lr, strict=False))
        log(f"{name}: largest relative difference between the two trainers' learning rates: {lr_gap:.2e}")
    t = config.train
    return {"workload": name, "arch": workload.arch, "data": "GSM8K teacher traces" if workload.traces else "synthetic",
            "examples": len(tokenized), "vocab": model_config.vocab_size, "parameters": params,
            "micro_batch": t.micro_batch_size, "gradient_accumulation": t.gradient_accumulation, "ranks": args.ranks,
            "steps": steps, "skip": args.skip, "loss_window": args.loss_window, "precision": t.precision,
            "peak_gflops": peak_flops / 1e9, "peak_layout": f"{precision}, {layout}",
            "train_flops_per_real_token": mean_flops_per_token,
            "dataset_real_tokens_per_sample": sum(map(sum, lengths)) / len(lengths),
            "lr_max_relative_difference": lr_gap, "same_batches": args.same_batches, "heldout": heldout,
            "overrides": overrides, "trainers": results}


def heldout_losses(name: str, workload: Workload, overrides: list[str], folder: Path, trainers: list[str],
                   size: int) -> dict[str, Any]:
    """benchmarks/heldout_loss.py in its own CPU process: the initial model and each trainer's final export."""
    out = folder / "heldout.json"
    out.unlink(missing_ok=True)
    models = [f"--model=initial={folder / 'model'}"]
    models += [f"--model={TAGS[t]}={folder / TAGS[t] / 'final'}" for t in trainers]
    cmd = [sys.executable, str(REPO / "benchmarks" / "heldout_loss.py"), "--config", workload.recipe,
           "--size", str(size), "--out", str(out), *models, *overrides]
    log("+ " + " ".join(cmd))
    started = time.monotonic()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=sys.stderr)
    result = json.loads(out.read_text(encoding="utf-8"))
    initial = result["models"]["initial"]["loss"]
    for trainer in trainers:
        entry = result["models"][TAGS[trainer]]
        if not entry["tensors_changed"]:
            log(f"WARNING {name} {trainer}: the exported weights equal the initial model's")
        if entry["loss"] >= initial:
            log(f"WARNING {name} {trainer}: held-out loss {entry['loss']:.4f} is not below the initial {initial:.4f}")
        log(f"{name} {trainer}: held-out loss {initial:.4f} -> {entry['loss']:.4f} "
            f"({entry['tensors_changed']}/{entry['tensors_compared']} weight tensors changed)")
    log(f"{name}: held-out loss over {result['examples']} examples, {result['target_tokens']} target tokens, "
        f"in {time.monotonic() - started:.0f} s")
    return result


def saved_parameters(path: Path) -> int:
    """Parameters stored in a safetensors file (tied weights once), read from the header only."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), "pt") as weights:
        names = weights.keys()
        for key in names:
            count = 1
            for dim in weights.get_slice(key).get_shape():
                count *= int(dim)
            total += count
    return total


def tables(results: list[dict[str, Any]], tolerance: float) -> str:
    """The per-trainer table and the ours/HF table; "equal or lower loss" is judged on the held-out loss."""
    from cotdistill.report import markdown_table

    rows, ratios = [], []
    window = results[0]["loss_window"] if results else 0
    for result in results:
        ours, hf = result["trainers"]["cotdistill"], result["trainers"]["HF Trainer"]
        for trainer, m in result["trainers"].items():
            rows.append([result["workload"], trainer, f"{m['measured_steps']} ({result['skip']} skipped)",
                         f"{m['samples_per_s']:.1f}", f"{m['tokens_per_s']:.0f}", f"{m['real_tokens_per_sample']:.0f}",
                         f"{100 * m['padding_fraction']:.1f}%",
                         f"{m['peak_rss_gib']:.2f}", f"{m['final_loss']:.4f}",
                         f"{m['heldout_initial']:.4f} -> {m['heldout_loss']:.4f}", f"{100 * m['mfu']:.1f}%",
                         f"{100 * m['hfu']:.1f}%" if m["hfu"] == m["hfu"] else "n/a", f"{m['wall_s']:.0f}"])
        speed = ours["tokens_per_s"] / hf["tokens_per_s"]
        met = speed >= 1.3 and ours["heldout_loss"] <= hf["heldout_loss"] + tolerance
        ratios.append([result["workload"], f"{speed:.2f}x", f"{ours['samples_per_s'] / hf['samples_per_s']:.2f}x",
                       f"{ours['peak_rss_gib'] / hf['peak_rss_gib']:.2f}x",
                       f"{ours['heldout_loss']:.4f} vs {hf['heldout_loss']:.4f}",
                       f"{ours['final_loss']:.4f} vs {hf['final_loss']:.4f}", "yes" if met else "no"])
    main = markdown_table(["workload", "trainer", "steps measured", "samples/s", "non-pad tokens/s",
                           "non-pad tokens/sample", "padding", "peak RSS GiB", f"train loss (last {window} steps)",
                           "held-out loss (initial -> final)", "MFU", "HFU", "wall s"], rows)
    ratio = markdown_table(["workload", "tokens/s ours/HF", "samples/s ours/HF", "peak RSS ours/HF",
                            "held-out loss ours vs HF", f"train loss (last {window} steps) ours vs HF",
                            f">= 1.3x at equal or lower held-out loss (+{tolerance:g} nats)"], ratios)
    return main + "\n\n" + ratio


def parse_steps(items: list[str]) -> dict[str, int]:
    """`--steps 40` (every workload) or `--steps tiny-gpt2=60 t5-small=20`."""
    steps: dict[str, int] = {}
    for item in items:
        if "=" in item:
            name, value = item.split("=", 1)
            if name not in WORKLOADS:
                raise SystemExit(f"unknown workload {name!r} in --steps; known: {', '.join(WORKLOADS)}")
            steps[name] = int(value)
        else:
            steps.update(dict.fromkeys(WORKLOADS, int(item)))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--steps", nargs="*", default=[], help="optimizer steps: N for all, or workload=N")
    parser.add_argument("--skip", type=int, default=4, help="first optimizer steps left out of the rates (>= 1)")
    parser.add_argument("--loss_window", type=int, default=5,
                        help="train loss column: mean of the last N steps' logged losses")
    parser.add_argument("--heldout_size", type=int, default=256, help="held-out problems for the held-out loss")
    parser.add_argument("--loss_tolerance", type=float, default=LOSS_TOLERANCE,
                        help="held-out losses within this many nats count as equal in the verdict")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated, for development: "
                        + ", ".join(TRAINERS) + " (the tables need both)")
    parser.add_argument("--override", nargs="*", default=[], help="extra key=value overrides for both trainers")
    parser.add_argument("--data_dir", type=Path,
                        default=Path(os.environ.get("COTDISTILL_DATA_DIR") or REPO.parent / "shared" / "data"))
    parser.add_argument("--same_batches", action=argparse.BooleanOptionalAction, default=True,
                        help="the HF Trainer trains on our trainer's exact per-rank batches (default), which takes "
                             "batch-order luck out of the loss comparison; --no-same_batches: its own random order")
    parser.add_argument("--keep_models", action="store_true", help="reuse prepared models in runs/bench-train")
    parser.add_argument("--peak_seconds", type=float, default=1.0, help="matmul peak: seconds per size and layout")
    parser.add_argument("--out", help="write every figure as JSON to this file")
    args = parser.parse_args()
    if args.out:  # checked now: a missing folder must not cost the whole run
        run_or_exit(lambda: check_output_file(args.out))
    args.steps = parse_steps(args.steps)
    args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    if not args.trainers or any(t not in TRAINERS for t in args.trainers):
        raise SystemExit(f"--trainers: choose from {', '.join(TRAINERS)}")
    if args.skip < 1 or args.loss_window < 1 or args.heldout_size < 1:
        raise SystemExit("--skip, --loss_window and --heldout_size must be at least 1 (the window starts at a "
                         "logged step's end)")
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cotdistill" / "torch_extensions"))
    ROOT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    peaks = measure_peak(args)
    results = [bench_workload(name, args, peaks) for name in names]
    minutes = (time.monotonic() - started) / 60
    from cotdistill.report import markdown_table

    layout = peaks["training_layout"]
    print(markdown_table(["matmul peak (" + layout + ")", "GFLOP/s"],
                         [[d, f"{peaks[d][layout]['gflops']:.0f}"] for d in ("fp32", "bf16")]))
    print()
    if len(args.trainers) == len(TRAINERS):
        print(tables(results, args.loss_tolerance))
    else:
        print(json.dumps([{k: v for k, v in r.items() if k != "overrides"} for r in results], indent=1))
    print(f"\n{minutes:.1f} minutes in all")
    if args.out:
        Path(args.out).write_text(json.dumps({"peaks": peaks, "results": results, "minutes": minutes}, indent=1) + "\n",
                                  encoding="utf-8")


if __name__ == "__main__":
    main()
