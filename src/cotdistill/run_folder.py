"""The layout of a run folder, in one place: every path a run writes and every reader of a run goes through it.

::

    RUN/run_config.yaml          the resolved config training ran with (not config.json: a run folder must
                                 never look like a Hugging Face model)
    RUN/train_log.jsonl          one row per logged optimizer step
    RUN/tensorboard/             TensorBoard events
    RUN/hf_meta/                 the model config and tokenizer, so any checkpoint can be exported or loaded
    RUN/checkpoints/step-NNNNNN/ ZeRO checkpoints (complete when they hold COMPLETE)
    RUN/final/                   the exported Hugging Face weights of the last step
    RUN/eval/step-NNNNNN/SET/    dev evaluations during training; RUN/eval/SET/ at the end
    RUN/checkpoint_selection/    eval-checkpoints' table, plot and choice
    RUN/profile/                 step profiles when asked for
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    CONFIG = "run_config.yaml"
    TRAIN_LOG = "train_log.jsonl"
    META = "hf_meta"
    TENSORBOARD = "tensorboard"
    # What a run writes before its first logged step: a folder holding only these is removed when the run
    # fails, since nothing in it can be resumed.
    STARTUP = (META, META + ".tmp", CONFIG, TENSORBOARD)

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config_file(self) -> Path:
        return self.root / self.CONFIG

    @property
    def train_log(self) -> Path:
        return self.root / self.TRAIN_LOG

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def hf_meta(self) -> Path:
        return self.root / self.META

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    @property
    def final(self) -> Path:
        return self.root / "final"

    def eval_dir(self, step: int | None = None) -> Path:
        """Dev evaluations: of step ``step`` during training, or the end-of-training one (None)."""
        return self.root / "eval" if step is None else self.root / "eval" / f"step-{step:06d}"

    @property
    def selection(self) -> Path:
        return self.root / "checkpoint_selection"

    @property
    def profile(self) -> Path:
        return self.root / "profile"

    def is_run(self) -> bool:
        """Whether training wrote this folder (it holds the resolved config)."""
        return self.config_file.is_file()

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a checkpoint folder (RUN/checkpoints/step-N) belongs to."""
        return cls(Path(checkpoint).parent.parent)

    @classmethod
    def containing(cls, target: str | Path) -> RunFolder | None:
        """The run holding ``target``: the run itself, one of its checkpoints, ``final/`` or another folder in it."""
        path = Path(target)
        for candidate in (path, path.parent, path.parent.parent):
            if cls(candidate).is_run():
                return cls(candidate)
        return None
