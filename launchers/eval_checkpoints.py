"""Checkpoint selection across ranks: ``deepspeed launchers/eval_checkpoints.py RUN_DIR --datasets gsm8k,svamp``.

The same function as ``cotdistill eval-checkpoints``.
"""

from __future__ import annotations

import os
import sys

import fire

from cotdistill.cli import eval_checkpoints


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # set by the deepspeed launcher
    table = fire.Fire(eval_checkpoints, command=args, serialize=lambda _: None)
    if int(os.environ.get("RANK", "0")) == 0 and table:
        print(table, flush=True)


if __name__ == "__main__":
    main()
