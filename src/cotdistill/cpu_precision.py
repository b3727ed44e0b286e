"""Whether this CPU computes bf16/fp16 natively, and the one start-up line a run prints when it does not.

A CPU without AMX or AVX512-BF16 runs bf16 through slow fallback kernels. Measured on an AVX2-only AMD EPYC
(docs/BENCHMARKS.md): bf16 matmuls at 1-2 GFLOP/s against 161 for fp32, a step of the demo teacher 2.93 s against
0.48 s in fp32, and the same recipe and seed scored 82/100 where an AMX machine's bf16 scored 91/100 (the kernels
round differently). Neither is an error, so the run goes on as asked; a person should know before waiting hours
for numbers that will not match another machine's.
"""

from __future__ import annotations

import functools

import torch

HALF_PRECISIONS = ("bf16", "fp16")


@functools.cache
def cpu_computes_natively(precision: str) -> bool:
    """True for fp32, and for bf16/fp16 where oneDNN has native kernels on this CPU (AMX, AVX512-BF16/FP16)."""
    if precision not in HALF_PRECISIONS:
        return True
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume the CPU copes, say nothing
        return True


def slow_precision_note(device_type: str, precision: str, key: str) -> str | None:
    """The line to log once (rank 0) when ``precision`` runs on a CPU without native kernels for it; else None.

    ``key`` is the setting a person changes (``train.precision``, ``--precision``)."""
    if device_type != "cpu" or cpu_computes_natively(precision):
        return None
    return (f"{key}={precision} on a CPU without native {precision} kernels (no AMX or AVX512-{precision.upper()}): "
            f"expect steps several times slower than fp32 (bf16: 6x on an AVX2 EPYC) and numbers that differ from "
            f"{precision} on CPUs that have them; {key}=fp32 is faster here")
