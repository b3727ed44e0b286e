"""Socratic evaluation with gold sub-questions through the Python API, world size 1 (for tests).

python tests/scripts/socratic_gold.py MODEL OUT.json

Calls ``evaluate_socratic`` directly (no launcher: the Engine makes a world of one) on synthetic
problems with 1-3 steps and saves the problems' steps, the predictions and the metrics as JSON.
"""

import json
import sys
from dataclasses import asdict

from cotdistill.engine import Engine
from cotdistill.entrypoints import exit_without_teardown
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems
from cotdistill.socratic_eval import SocraticSettings, evaluate_socratic

PROBLEMS = SyntheticSpec(n=8, seed=2024, min_steps=1, max_steps=3, operand_max=9)


def main() -> None:
    model, out = sys.argv[1:3]
    problems = generate_problems(PROBLEMS)
    settings = SocraticSettings(model, model, subquestions="gold", max_new_tokens=48, max_step_tokens=24,
                                batch_size=4, precision="fp32")
    engine = Engine()
    try:
        report = evaluate_socratic(engine, problems, settings, name="synthetic")
        found = {"steps": [[s.question for s in p.steps] for p in problems],
                 "predictions": [asdict(p) for p in report.predictions], "metrics": report.metrics(),
                 "engine_released": engine.ds is None}
    finally:
        engine.close()
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(found, fh)


if __name__ == "__main__":
    exit_without_teardown(main)
