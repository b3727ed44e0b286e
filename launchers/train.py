"""Train a student: ``deepspeed launchers/train.py --config recipes/<name>.yaml [key=value ...]``."""

from __future__ import annotations

import argparse

from cotdistill.config import check_launch, describe_config, load_config
from cotdistill.entrypoints import exit_without_teardown, run_or_exit
from cotdistill.report import print_run_summary


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
    run_or_exit(lambda: check_launch(config))
    # Imported once the config, the files it names and the output folder are good: transformers and DeepSpeed take
    # seconds to import, and a mistyped key, data set or recipe should be said at once (--keys, too).
    from cotdistill.train import train

    result = run_or_exit(lambda: train(config))
    print_run_summary(config, result)


if __name__ == "__main__":
    exit_without_teardown(main)
