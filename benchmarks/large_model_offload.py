"""Full-size students on this machine: ZeRO-3 with CPU offload, measured against the memory planner.

For each model (a shipped config: gpt2-large, flan-t5-large, flan-t5-xl ...) a random-init copy with a
tokenizer trained on the demo data is written once (`cotdistill make-random`), then trained for a few
optimizer steps by the real trainer on `--ranks` CPU ranks:

    deepspeed --num_gpus R launchers/train.py --config recipes/demo-<arch>-synthetic.yaml \\
        model.name_or_path=<random model> deepspeed_config=<ds config> train.max_steps=S ...

Measured: peak RSS of the launcher's whole process tree (polled every 0.2 s from /proc), the time of each
optimizer step (train_log.jsonl), the first and last losses. Predicted: `cotdistill plan-memory` for the
same model, ranks, micro-batch, sequence lengths and precision. On a CPU-only machine every "GPU" tensor
lives in host memory too, so the prediction compared is the planner's host RAM per node plus, per rank,
its GPU peak less the CUDA runtime allowance (no CUDA here). Without --margin the planner's safety terms
(DeepSpeed's 1.5x buffer factor) are left out, since the measurement is of what is really allocated.

Usage:
    python benchmarks/large_model_offload.py --models gpt2-large flan-t5-large --ranks 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import RssPoller  # noqa: E402

from cotdistill.entrypoints import run_or_exit  # noqa: E402
from cotdistill.outputs import check_output_file  # noqa: E402

GIB = 2**30
QUIET = ["checkpoint.every=0", "checkpoint.export_final=false", "eval.at_end=false", "train.log_every=1",
         "train.lr=1e-4"]  # the demo recipes' 2e-3 suits tiny models; full sizes diverge with it


def prepare(model: str, arch: str, folder: Path) -> Path:
    """The random-init model folder (kept between runs: writing gpt2-large takes a minute)."""
    if (folder / "config.json").is_file():
        return folder
    cli = Path(sys.executable).parent / "cotdistill"
    subprocess.run([str(cli), "make-random", model, str(folder), "--config", f"recipes/demo-{arch}-synthetic.yaml"],
                   cwd=REPO, check=True)
    return folder


def run(model_dir: Path, arch: str, out: Path, args) -> dict:
    """Train under the DeepSpeed launcher while polling the process tree's RSS."""
    shutil.rmtree(out, ignore_errors=True)
    deepspeed = Path(sys.executable).parent / "deepspeed"
    overrides = [f"model.name_or_path={model_dir}", "model.make_tiny=", f"output_dir={out}",
                 f"deepspeed_config={args.ds_config}", f"train.max_steps={args.steps}", "train.warmup_steps=1",
                 f"train.micro_batch_size={args.micro_batch_size}", "train.gradient_accumulation=1",
                 f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}", *QUIET, *args.extra]
    cmd = [str(deepspeed), "--num_gpus", str(args.ranks), "launchers/train.py",
           "--config", f"recipes/demo-{arch}-synthetic.yaml", *overrides]
    log_file = out.with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_file, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        poller = RssPoller(proc.pid)
        poller.start()
        code = proc.wait()
        poller.stop()
    if code != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"training {model_dir.name} failed with exit code {code}; log {log_file}:\n{tail}")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {"rows": rows, "peak_rss": poller.peak(), "wall_s": time.monotonic() - started, "command": cmd,
            "log": str(log_file), "rss_timeline": poller.samples[::5]}


def predicted(model_dir: Path, arch: str, args) -> dict:
    """The planner's figures for this run, and the host total a CPU-only machine should see."""
    from cotdistill.config import load_config
    from cotdistill.memory_plan import CPU_BUFFER_FACTOR, GPU_RUNTIME_OVERHEAD, plan, zero_setting

    recipe = load_config(REPO / f"recipes/demo-{arch}-synthetic.yaml", [])
    result = plan(model=str(model_dir), nodes=1, gpus_per_node=args.ranks, micro_batch_size=args.micro_batch_size,
                  source_tokens=recipe.data.max_source_tokens, target_tokens=recipe.data.max_target_tokens,
                  precision=recipe.train.precision, gradient_checkpointing=args.gradient_checkpointing)
    stage, offload = zero_setting(REPO / args.ds_config)
    row = result.row(stage, offload)
    device = row.gpu_for(args.gradient_checkpointing) - GPU_RUNTIME_OVERHEAD
    host = row.cpu_bytes_per_node
    host_no_margin = host / CPU_BUFFER_FACTOR if not args.margin else host
    return {"label": row.label, "params": result.model.total_params, "gpu_per_rank": device,
            "host_per_node": host, "host_per_node_no_margin": host_no_margin,
            "total": host_no_margin + args.ranks * device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gpt2-large", "flan-t5-large"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--micro_batch_size", type=int, default=2)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--ds_config", default="ds_configs/zero3_offload.json")
    parser.add_argument("--margin", action="store_true", help="keep the planner's 1.5x buffer factor")
    parser.add_argument("--work", default="runs/bench-large", help="folder for random models and runs")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("extra", nargs="*", help="more key=value overrides for the trainer")
    args = parser.parse_args()
    if args.out:  # checked now: a missing folder must not cost the whole run
        run_or_exit(lambda: check_output_file(args.out))

    from cotdistill.memory_plan import resolve_model_config
    from cotdistill.report import markdown_table

    work = REPO / args.work
    results = []
    for model in args.models:
        arch = "t5" if resolve_model_config(model).is_encoder_decoder else "gpt2"
        model_dir = prepare(model, arch, work / f"random-{model.replace('/', '--')}")
        print(f"{model}: training {args.steps} steps on {args.ranks} ranks ...", flush=True)
        measured = run(model_dir, arch, work / f"run-{model.replace('/', '--')}", args)
        plan = predicted(model_dir, arch, args)
        steps = [row["step_time_s"] for row in measured["rows"]]
        results.append({"model": model, "measured": measured, "predicted": plan, "step_times": steps})
        print(f"{model}: peak RSS {measured['peak_rss'] / GIB:.1f} GiB (planner {plan['total'] / GIB:.1f} GiB), "
              f"steps {', '.join(f'{s:.1f}' for s in steps)} s", flush=True)

    header = ["model", "parameters", "setting", "ranks x micro-batch", "peak RSS (GiB)", "planner (GiB)",
              "planner / measured", "step time (s), steps 2..", "first step (s)", "loss first -> last"]
    rows = []
    for r in results:
        m, p, steps = r["measured"], r["predicted"], r["step_times"]
        later = steps[1:] or steps
        rows.append([r["model"], f"{p['params'] / 1e6:.0f}M", p["label"], f"{args.ranks} x {args.micro_batch_size}",
                     f"{m['peak_rss'] / GIB:.1f}", f"{p['total'] / GIB:.1f}", f"{p['total'] / m['peak_rss']:.2f}",
                     f"{sum(later) / len(later):.1f}", f"{steps[0]:.1f}",
                     f"{m['rows'][0]['loss']:.2f} -> {m['rows'][-1]['loss']:.2f}"])
    print()
    print(markdown_table(header, rows))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
