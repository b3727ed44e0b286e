"""Checkpoint selection across ranks: ``deepspeed launchers/eval_checkpoints.py RUN_DIR --datasets gsm8k,svamp``.

The same function as ``cotdistill eval-checkpoints``; ``--help`` lists every flag.
"""

import sys

from cotdistill.cli import asks_for_help, command_help, eval_checkpoints
from cotdistill.entrypoints import fire_under_launcher

if __name__ == "__main__":
    if asks_for_help(sys.argv[1:]):
        print(command_help("eval-checkpoints", prog="deepspeed launchers/eval_checkpoints.py"))
    else:
        fire_under_launcher(eval_checkpoints)
