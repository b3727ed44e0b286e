"""One rank dies while the other is generating under ZeRO-3 (for tests): the job must fail, not hang.

deepspeed --num_gpus 2 tests/scripts/rank_dies.py MODEL
"""

import os
import sys

from cotdistill.config import EvalSpec
from cotdistill.engine import Engine
from cotdistill.evaluate import evaluate_problems
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems
from cotdistill.student import open_student


def main() -> None:
    model = [a for a in sys.argv[1:] if not a.startswith("--local_rank")][0]
    engine = Engine(timeout_minutes=10)
    student = open_student(engine, model)
    if engine.rank == 1:
        os._exit(3)  # a crash: no exception handling, no collective goodbye
    problems = generate_problems(SyntheticSpec(n=8, seed=1))
    evaluate_problems(engine, student, problems, EvalSpec(strategy="zero_shot_cot", max_new_tokens=64, batch_size=2))


if __name__ == "__main__":
    main()
