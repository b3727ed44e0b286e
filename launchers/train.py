"""Train a student: ``deepspeed launchers/train.py --config recipes/<name>.yaml [key=value ...]``."""

from __future__ import annotations

import argparse
import os

from cotdistill.config import describe_config, load_config, validate_run
from cotdistill.entrypoints import run_or_exit
from cotdistill.export import META_DIR
from cotdistill.outputs import removed_on_failure
from cotdistill.report import print_run_summary
from cotdistill.runs import RUN_CONFIG
from cotdistill.train import train

# What a run writes before its first logged step (train_log.jsonl is not among them): a folder holding only these
# is removed when the run fails, since nothing in it can be resumed.
STARTUP_FILES = (META_DIR, META_DIR + ".tmp", RUN_CONFIG, "tensorboard")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, epilog="Keys: run with --keys to list every config key.")
    parser.add_argument("--config", help="YAML recipe (recipes/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=20")
    parser.add_argument("--keys", action="store_true", help="list every config key with its default and exit")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = parser.parse_args()
    if args.keys:
        print("\n".join(describe_config()))
        return
    config = run_or_exit(lambda: load_config(args.config, args.overrides))
    run_or_exit(lambda: validate_run(config))  # what show-config checks, before any folder or model exists
    # A run that fails before its first logged step leaves no run folder of its own making behind.
    writer = int(os.environ.get("RANK", "0")) == 0
    with removed_on_failure(config.output_dir, scratch=STARTUP_FILES, enabled=writer):
        result = run_or_exit(lambda: train(config))
    print_run_summary(config, result)


if __name__ == "__main__":
    main()
