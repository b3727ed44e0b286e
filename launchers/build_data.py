"""Build a teacher dataset: ``python launchers/build_data.py --config recipes/data/<name>.yaml [key=value ...]``."""

from __future__ import annotations

import argparse

from cotdistill.config import BuildConfig, describe_config, load_build_config
from cotdistill.entrypoints import run_or_exit
from cotdistill.logs import setup_logging
from cotdistill.teacher.builder import build_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, epilog="Keys: run with --keys to list every config key.")
    parser.add_argument("--config", help="YAML recipe (recipes/data/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cot.samples=8")
    parser.add_argument("--keys", action="store_true", help="list every config key with its default and exit")
    args = parser.parse_args()
    if args.keys:
        print("\n".join(describe_config(BuildConfig)))
        return
    setup_logging()
    config = run_or_exit(lambda: load_build_config(args.config, args.overrides))
    print(run_or_exit(lambda: build_dataset(config)))


if __name__ == "__main__":
    main()
