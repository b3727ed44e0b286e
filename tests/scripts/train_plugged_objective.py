"""launchers/train.py with one more objective registered, as a user's own module would add it (for tests).

deepspeed --num_gpus 2 tests/scripts/train_plugged_objective.py --config RECIPE train.objective=sft_logged ...

``sft_logged`` is supervised fine-tuning that also reports its summed NLL as a metric ("nll"), so the test can
check that a plugged-in objective is used and that its metrics reach the logs summed over ranks and micro-batches
and divided by the step's target tokens.
"""

import sys

from cotdistill.training_objectives import OBJECTIVES, MicroLoss, SupervisedFineTuning


class LoggedSFT(SupervisedFineTuning):
    name = "sft_logged"

    def loss(self, engine, batch, causal) -> MicroLoss:
        micro = super().loss(engine, batch, causal)
        return MicroLoss(micro.loss, micro.tokens, {"nll": float(micro.loss.detach()) * micro.tokens})


OBJECTIVES[LoggedSFT.name] = LoggedSFT

if __name__ == "__main__":
    sys.path.insert(0, "launchers")
    from train import main

    main()
