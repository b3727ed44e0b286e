"""The DeepSpeed launcher without its start-up chatter: ``python launchers/launch.py --num_gpus 2 launchers/train.py
--config recipes/<name>.yaml [key=value ...]`` takes exactly the arguments of ``deepspeed``.

It runs DeepSpeed's own launcher in this process after ``import cotdistill`` has prepared the environment (the
CPU accelerator named where no GPU exists, so no "Setting accelerator to CPU" warning from the launcher
processes) with ``--log_level error`` (no INFO lines). COTDISTILL_VERBOSE=1 shows all of DeepSpeed's lines;
an explicit --log_level or --quiet wins.
"""

import sys

from cotdistill.runtime_env import launcher_args


def main() -> None:
    from deepspeed.launcher.runner import main as deepspeed_launcher

    deepspeed_launcher(launcher_args(sys.argv[1:]))


if __name__ == "__main__":
    main()
