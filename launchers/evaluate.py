"""Evaluate a student across ranks: ``deepspeed launchers/evaluate.py MODEL --datasets gsm8k,svamp [...]``.

The same function as ``cotdistill eval``; under ZeRO-3 each rank holds a slice of the weights, so models
that only fit partitioned can be evaluated. ``--help`` lists every flag.
"""

import sys

from cotdistill.cli import asks_for_help, command_help, evaluate
from cotdistill.entrypoints import fire_under_launcher

if __name__ == "__main__":
    if asks_for_help(sys.argv[1:]):
        print(command_help("eval", prog="deepspeed launchers/evaluate.py"))
    else:
        fire_under_launcher(evaluate)
