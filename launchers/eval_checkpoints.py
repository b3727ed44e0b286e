"""Checkpoint selection across ranks: ``deepspeed launchers/eval_checkpoints.py RUN_DIR --datasets gsm8k,svamp``.

The same function as ``cotdistill eval-checkpoints``.
"""

from cotdistill.cli import eval_checkpoints
from cotdistill.entrypoints import fire_under_launcher

if __name__ == "__main__":
    fire_under_launcher(eval_checkpoints)
