"""The experiment harness: named arms (a recipe, overrides, evaluations) x N seeds, one results file, a report.

    python benchmarks/experiment.py socratic-vs-cot [--arms cot,socratic] [--seeds 3] [--ranks 2]
    python benchmarks/experiment.py socratic-vs-cot --arms cot --only_seeds 2,3           # just these seeds
    python benchmarks/experiment.py recipes/experiments/socratic-vs-cot.yaml --report     # report only
    python benchmarks/experiment.py socratic-vs-cot --dry_run                             # the plan, no run

EXPERIMENT is a file or a name in recipes/experiments/. The (arm, seed) pairs run one after another; each is
appended to RUN_ROOT/results.json as it finishes, so a killed harness started again runs only what is missing.
RUN_ROOT/report.md and report.png are written at the end: per arm and evaluation the per-seed accuracies, mean,
sample standard deviation and a 95% Wilson interval over the evaluation problems. The file format, seeds and
statistics are described in src/cotdistill/experiments.py. `make experiment EXP=name ARMS=a,b SEEDS=N` runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cotdistill.entrypoints import run_or_exit
from cotdistill.experiments import (
    LaunchRunner,
    ResultStore,
    check_eval_sizes,
    find_experiment,
    load_experiment,
    plan_runs,
    resolve_prepare,
    run_experiment,
    select_arms,
    select_seeds,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]


def log(line: str) -> None:
    print(f"[experiment] {line}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment file, or a name in recipes/experiments/")
    parser.add_argument("--arms", default="", help="comma-separated arms to run ('': all, in file order)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the file's, else 3)")
    parser.add_argument("--only_seeds", default="",
                        help="comma-separated seeds to run instead of the first N (e.g. 2,3), for seeds run elsewhere "
                             "or whose results were lost")
    parser.add_argument("--ranks", type=int, default=2, help="DeepSpeed ranks per run")
    parser.add_argument("--report", action="store_true", help="only write the report from the results so far")
    parser.add_argument("--dry_run", action="store_true", help="print the runs and their state; run nothing")
    parser.add_argument("--allow_small_eval", action="store_true",
                        help="warn instead of refusing evaluation sets below the file's min_eval_problems")
    args = parser.parse_args()

    def work() -> str:
        experiment = load_experiment(find_experiment(args.experiment))
        store = ResultStore(experiment.results_file, experiment.name, str(experiment.source))
        if not args.report:
            arms, seeds = select_arms(experiment, args.arms), select_seeds(experiment, args.seeds, args.only_seeds)
            if args.dry_run:
                runs = plan_runs(experiment, arms, seeds)
                done = store.done()
                steps = [resolve_prepare(experiment, step) for step in experiment.prepare]
                lines = [f"prepare {p.step.name}: {'made' if p.done() else 'to make'} -> {p.folder} ({p.step.kind} "
                         f"--config {p.step.recipe} {' '.join(p.overrides)})" for p in steps]
                def state(r) -> str:
                    if r.key not in done:
                        return "to run"
                    return "done" if done[r.key].get("fingerprint") == r.fingerprint else "stale (other config)"

                lines += [f"{r.arm.name} seed {r.seed}: {state(r)} -> {r.run_dir} "
                         f"(--config {r.arm.recipe} {' '.join(r.overrides)}; evals "
                         f"{', '.join(e.name for e in r.arm.evals)})" for r in runs]
                lines += [f"warning: {line}" for line in check_eval_sizes(runs, experiment.min_eval_problems)]
                return "\n".join(lines)
            try:
                run_experiment(experiment, arms, seeds, LaunchRunner(args.ranks, REPO, log=log), store,
                               allow_small_eval=args.allow_small_eval, log=log)
            finally:  # what has finished is reported even when a run failed
                if store.path.is_file():
                    write_report(experiment, store)
        written = write_report(experiment, store)
        if written is None:
            return f"no finished runs in {store.path} yet"
        return written[0].read_text(encoding="utf-8") + f"\n{written[0]}\n{written[1]}"

    print(run_or_exit(work))


if __name__ == "__main__":
    main()
