"""launchers/train.py with the checkpoint-size estimate forced to 0 (for tests).

The space check then lets every checkpoint through, so a full disk is met by DeepSpeed's write itself, as
when the estimate is wrong or another job fills the disk meanwhile (tests/test_full_disk.py).

deepspeed --num_gpus 2 tests/scripts/train_size_unknown.py --config recipes/<name>.yaml [key=value ...]
"""

import runpy
import sys
from pathlib import Path

from cotdistill import checkpoints

checkpoints.expected_size = lambda output_dir, fallback: 0
launcher = Path(__file__).resolve().parents[2] / "launchers" / "train.py"
sys.argv[0] = str(launcher)
runpy.run_path(str(launcher), run_name="__main__")
