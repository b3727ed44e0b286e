"""Evaluate a student across ranks: ``deepspeed launchers/evaluate.py MODEL --datasets gsm8k,svamp [...]``.

The same function as ``cotdistill eval``; under ZeRO-3 each rank holds a slice of the weights, so models
that only fit partitioned can be evaluated.
"""

from __future__ import annotations

import os
import sys

import fire

from cotdistill.cli import evaluate


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # set by the deepspeed launcher
    table = fire.Fire(evaluate, command=args, serialize=lambda _: None)
    if int(os.environ.get("RANK", "0")) == 0 and table:
        print(table, flush=True)


if __name__ == "__main__":
    main()
