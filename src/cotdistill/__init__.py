"""cotdistill: distill multi-step reasoning from large teachers into small students with DeepSpeed."""

__version__ = "0.1.0"
