"""On-policy distillation, cotdistill against TRL's GKD trainer, side by side (issue 18 item 7).

    python benchmarks/on_policy_vs_trl.py --teacher runs/demo-gpt2/final [--steps 200] [--lmbda 1.0]

The pair shares one tokenizer (TRL's requirement): the teacher is a trained causal model (the demo's GPT-2,
`make demo`), the student a smaller GPT-2 over the teacher's tokenizer, drawn at random with --seed and saved
once. A student that starts from random weights cannot sample anything a teacher could grade usefully, so
both trainers start from the same warm start: the student first trained --sft_steps steps on the recipe's
problems by cotdistill (plain SFT; skipped with --sft_steps 0). Then, one after the other and never at the
same time, with the same recipe and overrides on --ranks DeepSpeed ranks (ZeRO-3 from the recipe's template):

    launchers/train.py --config <recipe> <overrides> train.objective=on_policy ...      (ours)
    benchmarks/trl_gkd_baseline.py --config <recipe> <same overrides>                  (TRL 1.16 GKDTrainer)

on the same per-rank micro-batches, with the same lambda, beta, temperature and max_new_tokens. Measured from
each run's train_log.jsonl after the first --skip steps: samples/s (samples over the summed step times) and
the mean logged step time; then both final models are evaluated by the same command (launchers/evaluate.py
--datasets synthetic, greedy zero-shot CoT) on the recipe generator's --eval_problems held-out problems, with
a 95% Wilson interval. The goal (issue 18): at least TRL's accuracy at >= 1.3x its samples/s.

What differs between the two is listed in benchmarks/trl_gkd_baseline.py. Results: --out (JSON) and a
Markdown table printed and written beside it.
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
from pathlib import Path
from typing import Any

from cotdistill.entrypoints import run_or_exit
from cotdistill.outputs import check_output_file

REPO = Path(__file__).resolve().parents[1]
TRAINERS = {"cotdistill": "launchers/train.py", "TRL GKD": "benchmarks/trl_gkd_baseline.py"}


def log(message: str) -> None:
    print(f"[on-policy-vs-trl] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_student(teacher: Path, out: Path, d_model: int, layers: int, heads: int, seed: int) -> Path:
    """A random GPT-2 of the given size over the teacher's own tokenizer (same vocabulary, same special ids)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from cotdistill.config import TinyModelConfig
    from cotdistill.families import family_named

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    size = TinyModelConfig(vocab_size=len(tokenizer), d_model=d_model, num_layers=layers, num_heads=heads,
                           d_ff=4 * d_model, n_positions=512)
    config = family_named("gpt2").tiny_config(size, tokenizer)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run(script: str, recipe: str, overrides: list[str], ranks: int, log_file: Path,
        script_args: tuple[str, ...] = ()) -> float:
    """One training launch; returns its wall seconds (the log is kept, its tail raised on failure)."""
    cmd = [sys.executable, "launchers/launch.py", "--num_gpus", str(ranks), "--master_port", str(free_port()),
           script, *script_args, "--config", recipe, *overrides]
    log("+ " + " ".join(cmd))
    started = time.monotonic()
    with open(log_file, "w", encoding="utf-8") as sink:
        code = subprocess.call(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1"})
    if code != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{script} exited with {code}; see {log_file}\n{tail}")
    return time.monotonic() - started


WARM_START_MARK = "warm_start.json"


def warm_start_reusable(warm: Path, settings: dict[str, Any]) -> bool:
    """Whether ``warm`` holds a finished warm start made with exactly ``settings`` (its SFT launch's arguments). A
    folder made with other settings (another seed, other steps) or by an older script without the mark is not
    reused: the comparison would start both trainers from a student nobody asked for."""
    mark = warm / WARM_START_MARK
    if not (warm / "final" / "config.json").is_file() or not mark.is_file():
        return False
    try:
        return json.loads(mark.read_text(encoding="utf-8")) == settings
    except ValueError:
        return False


def step_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return sorted(rows, key=lambda r: r["step"])


def throughput(rows: list[dict[str, Any]], skip: int) -> dict[str, float]:
    """Samples per second over the steps after the first ``skip`` (summed samples / summed step times)."""
    window = [r for r in rows if r["step"] > skip]
    if not window:
        raise ValueError(f"no step after the first {skip} to measure (the run logged {len(rows)})")
    seconds = sum(float(r["step_time_s"]) for r in window)
    # the TRL baseline logs each step's samples; our trainer logs samples/s and the step's seconds
    samples = sum(float(r["samples"]) if "samples" in r else float(r["samples_per_s"]) * float(r["step_time_s"])
                  for r in window)
    return {"steps_measured": len(window), "samples": samples, "seconds": seconds,
            "samples_per_s": samples / seconds if seconds else 0.0, "step_time_s": seconds / len(window)}


def evaluate(final: Path, recipe_config: Any, out: Path, ranks: int, log_file: Path, problems: int) -> dict:
    """Greedy zero-shot CoT accuracy of ``final`` on the recipe generator's held-out problems."""
    from cotdistill.experiments import read_eval, wilson_interval

    s = recipe_config.data.synthetic
    synthetic = [f"--synthetic.{key}={value}" for key, value in
                 (("train_size", s.train_size), ("eval_size", problems), ("seed", s.seed),
                  ("min_steps", s.min_steps), ("max_steps", s.max_steps), ("eval_steps", s.eval_steps),
                  ("operand_min", s.operand_min), ("operand_max", s.operand_max))]
    ops = ",".join(s.operations)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "launchers/launch.py", "--num_gpus", str(ranks), "--master_port", str(free_port()),
           "launchers/evaluate.py", str(final), "--datasets=synthetic", "--strategy=zero_shot_cot",
           f"--max_new_tokens={recipe_config.eval.max_new_tokens}", f"--batch_size={recipe_config.eval.batch_size}",
           f"--synthetic.operations=[{ops}]", *synthetic, f"--output_dir={out}"]
    log("+ " + " ".join(cmd))
    with open(log_file, "w", encoding="utf-8") as sink:
        if subprocess.call(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT) != 0:
            raise RuntimeError(f"evaluation of {final} failed; see {log_file}")
    result = read_eval(out / "synthetic")
    low, high = wilson_interval(result["accuracy"], result["total"])
    return {"correct": result["correct"], "total": result["total"], "accuracy": result["accuracy"],
            "interval": [low, high]}


def markdown(results: dict[str, Any]) -> str:
    from cotdistill.report import markdown_table

    rows = []
    for name, r in results["trainers"].items():
        t, e = r["throughput"], r["eval"]
        rows.append([name, f"{t['samples_per_s']:.2f}", f"{t['step_time_s']:.2f}", f"{100 * e['accuracy']:.1f}",
                     f"[{100 * e['interval'][0]:.1f}, {100 * e['interval'][1]:.1f}]", f"{r['wall_s']:.0f}"])
    ours, trl = results["trainers"]["cotdistill"], results["trainers"]["TRL GKD"]
    speed = ours["throughput"]["samples_per_s"] / trl["throughput"]["samples_per_s"]
    met = speed >= 1.3 and ours["eval"]["accuracy"] >= trl["eval"]["accuracy"]
    start = results.get("start_eval")
    if start:
        rows.insert(0, ["(warm start, before on-policy)", "", "", f"{100 * start['accuracy']:.1f}",
                        f"[{100 * start['interval'][0]:.1f}, {100 * start['interval'][1]:.1f}]", ""])
    return (markdown_table(["trainer", "samples/s", "s per step", "held-out accuracy %", "95% interval", "wall s"],
                           rows)
            + f"\n\nsamples/s ours / TRL: {speed:.2f}x; goal (>= 1.3x at no lower accuracy): "
              f"{'met' if met else 'not met'}\n")


def summarize_seeds(works: list[Path]) -> str:
    """The accuracy half over several seeds (one --work folder per seed, each a finished run of this script): per
    seed the warm start's, ours and TRL's held-out accuracy, then the mean and sd over seeds and the paired
    differences on the same problems (`cotdistill.experiments.paired_difference`, seed-averaged per problem; the
    interval is over problems and does not carry the seed-to-seed spread, which the sd shows)."""
    from cotdistill.experiments import paired_difference, read_eval, sample_sd
    from cotdistill.report import markdown_table

    names = {"warm start": "start-eval", "cotdistill": "cotdistill-eval", "TRL GKD": "trl-gkd-eval"}
    outcomes: dict[str, list[str]] = {name: [] for name in names}
    sets: set[str] = set()
    for work in works:
        for name, folder in names.items():
            result = read_eval(work / folder / "synthetic")
            outcomes[name].append(result["per_problem"])
            sets.add(result["problems_text_sha"])
    if len(sets) != 1:
        raise SystemExit(f"the seeds were evaluated on different problems ({len(sets)} problem sets): not comparable")
    rows = []
    for name, per_seed in outcomes.items():
        accs = [o.count("1") / len(o) for o in per_seed]
        sd = sample_sd(accs)
        rows.append([name, ", ".join(f"{100 * a:.1f}" for a in accs), f"{100 * sum(accs) / len(accs):.1f}",
                     "" if sd is None else f"{100 * sd:.1f}"])
    table = markdown_table(["model", "held-out accuracy per seed (%)", "mean (%)", "sd (points)"], rows)
    lines = []
    for a, b in (("cotdistill", "TRL GKD"), ("cotdistill", "warm start"), ("TRL GKD", "warm start")):
        d, low, high = paired_difference(outcomes[a], outcomes[b])
        lines.append(f"- {a} minus {b}: {100 * d:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], paired over "
                     f"{len(outcomes[a][0])} problems, {len(works)} seeds")
    return table + "\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=REPO / "runs/demo-gpt2/final",
                        help="a trained causal teacher folder (make demo writes runs/demo-gpt2/final)")
    parser.add_argument("--recipe", default="recipes/demo-gpt2-synthetic.yaml",
                        help="the recipe both trainers read (problems, prompts, optimizer, DeepSpeed template)")
    parser.add_argument("--work", type=Path, default=REPO / "runs/bench-on-policy/trl")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: WORK/results.json)")
    parser.add_argument("--steps", type=int, default=200, help="on-policy optimizer steps, both trainers")
    parser.add_argument("--sft_steps", type=int, default=600, help="the shared warm start's SFT steps (0: none)")
    parser.add_argument("--lmbda", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--max_new_tokens", type=int, default=120)
    parser.add_argument("--micro_batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--student", default="128,2,4", help="student d_model,layers,heads")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the throughput window")
    parser.add_argument("--eval_problems", type=int, default=300)
    parser.add_argument("--precision", default="fp32", choices=["bf16", "fp32"])
    parser.add_argument("--trl_positions_from_mask", action="store_true",
                        help="TRL's loss forwards count positions from each row's first real token "
                             "(trl_gkd_baseline.py --positions_from_mask); off: TRL as it ships")
    parser.add_argument("--summarize", type=Path, nargs="+", default=None,
                        help="only summarize finished runs: their --work folders, one per seed")
    args = parser.parse_args()
    if args.summarize:
        print(summarize_seeds(args.summarize))
        return
    args.out = args.out or args.work / "results.json"
    run_or_exit(lambda: check_output_file(args.out, make_parent=True))  # now, not after half an hour of training

    from cotdistill.config import load_config

    if not (args.teacher / "config.json").is_file():
        raise SystemExit(f"no teacher at {args.teacher}: train one first (make demo writes runs/demo-gpt2/final)")
    d_model, layers, heads = (int(x) for x in args.student.split(","))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    student = make_student(args.teacher, work / "student-init", d_model, layers, heads, args.seed)
    common = ["model.make_tiny=", "checkpoint.every=0", "eval.at_end=false", "checkpoint.export_final=true",
              f"train.seed={args.seed}", f"train.precision={args.precision}",
              f"train.micro_batch_size={args.micro_batch_size}", "train.gradient_accumulation=1"]
    if args.sft_steps:
        warm = work / "sft"
        sft = [*common, f"model.name_or_path={student}", f"output_dir={warm}", f"train.max_steps={args.sft_steps}"]
        settings = {"recipe": args.recipe, "overrides": sft, "ranks": args.ranks, "teacher": str(args.teacher),
                    "student": args.student}
        if warm_start_reusable(warm, settings):
            log(f"warm start: {warm} was made with these settings before")
        else:
            shutil.rmtree(warm, ignore_errors=True)
            run(TRAINERS["cotdistill"], args.recipe, sft, args.ranks, work / "sft.log")
            (warm / WARM_START_MARK).write_text(json.dumps(settings, indent=2), encoding="utf-8")
        student = warm / "final"
    recipe_config = load_config(REPO / args.recipe, [])
    start = evaluate(student, recipe_config, work / "start-eval", args.ranks, work / "start-eval.log",
                     args.eval_problems)  # where both trainers start from
    on_policy = [*common, f"model.name_or_path={student}", f"train.max_steps={args.steps}", f"train.lr={args.lr}",
                 "train.warmup_steps=0", "train.objective=on_policy", f"train.on_policy.lmbda={args.lmbda}",
                 f"train.on_policy.beta={args.beta}", f"train.on_policy.max_new_tokens={args.max_new_tokens}",
                 f"train.on_policy.teacher.model={args.teacher}", f"train.on_policy.teacher.precision={args.precision}"]
    results: dict[str, Any] = {"teacher": str(args.teacher), "recipe": args.recipe, "argv": sys.argv[1:],
                               "trl_positions_from_mask": args.trl_positions_from_mask,
                               "student": {"d_model": d_model, "layers": layers, "heads": heads},
                               "warm_start": str(student), "start_eval": start, "ranks": args.ranks, "trainers": {}}
    for name, script in TRAINERS.items():
        run_dir = work / name.replace(" ", "-").lower()
        shutil.rmtree(run_dir, ignore_errors=True)
        extra = ("--positions_from_mask",) if script == TRAINERS["TRL GKD"] and args.trl_positions_from_mask else ()
        wall = run(script, args.recipe, [*on_policy, f"output_dir={run_dir}"], args.ranks, work / f"{run_dir.name}.log",
                   extra)
        rows = step_rows(run_dir)
        results["trainers"][name] = {
            "wall_s": wall, "steps": len(rows), "throughput": throughput(rows, args.skip),
            "eval": evaluate(run_dir / "final", recipe_config, work / f"{run_dir.name}-eval", args.ranks,
                             work / f"{run_dir.name}-eval.log", args.eval_problems)}
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    table = markdown(results)
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
