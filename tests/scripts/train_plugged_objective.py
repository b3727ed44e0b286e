"""launchers/train.py with one more objective registered, as a user's own module would add it (for tests).

deepspeed --num_gpus 2 tests/scripts/train_plugged_objective.py --config RECIPE train.objective=sft_logged ...

``sft_logged`` is supervised fine-tuning that also reports its summed NLL per target token ("nll") and the mean
index of its micro-batches' first examples ("first_example"), so the test can check that a plugged-in objective
is used and that its metrics reach the logs as sums over ranks and micro-batches divided by their counts.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "launchers"))

from train import main  # noqa: E402  (launchers/train.py, imported as the launcher imports its modules)

from cotdistill.entrypoints import exit_without_teardown  # noqa: E402
from cotdistill.training_objectives import OBJECTIVES, MicroLoss, SupervisedFineTuning  # noqa: E402


class LoggedSFT(SupervisedFineTuning):
    name = "sft_logged"

    def loss(self, engine, micro) -> MicroLoss:
        found = super().loss(engine, micro)
        nll = float(found.loss.detach()) * found.tokens
        return MicroLoss(found.loss, found.tokens, found.real, found.slots,
                         {"nll": (nll, found.tokens), "first_example": (float(micro.indices[0]), 1.0)})


OBJECTIVES[LoggedSFT.name] = LoggedSFT

if __name__ == "__main__":
    exit_without_teardown(main)
