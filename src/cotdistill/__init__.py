"""cotdistill: distill multi-step reasoning from large teachers into small students with DeepSpeed."""

from cotdistill.runtime_env import prepare_environment

__version__ = "0.1.0"

prepare_environment()  # before anything imports DeepSpeed: the compiled-ops cache and the accelerator
