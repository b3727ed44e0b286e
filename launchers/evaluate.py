"""Evaluate a student across ranks: ``deepspeed launchers/evaluate.py MODEL --datasets gsm8k,svamp [...]``.

The same function as ``cotdistill eval``; under ZeRO-3 each rank holds a slice of the weights, so models
that only fit partitioned can be evaluated.
"""

from cotdistill.cli import evaluate
from cotdistill.entrypoints import fire_under_launcher

if __name__ == "__main__":
    fire_under_launcher(evaluate)
