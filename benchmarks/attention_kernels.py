"""Causal SDPA forward + backward on this machine's CPU, bf16 against fp32 inputs, at students' shapes.

Why it exists: a torch.profiler run of tiny-gpt2 training (packed micro-batches) put 51% of rank 0's CPU time
in `aten::_scaled_dot_product_flash_attention_for_cpu` and its backward, in bf16. This measures what
`cotdistill.packed_attention` does about it (fp32 SDPA on CPU). Command (docs/BENCHMARKS.md):

    python benchmarks/attention_kernels.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# (examples, heads, longest example, head dim): tiny-gpt2's micro-batch of 16, gpt2-small's of 8
SHAPES = {"tiny-gpt2": (16, 4, 200, 32), "gpt2-small": (8, 12, 250, 64)}


def step_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, compute: torch.dtype, repeats: int) -> float:
    """Mean milliseconds of one causal attention forward and backward, computed in `compute`."""
    def once() -> None:
        out = F.scaled_dot_product_attention(q.to(compute), k.to(compute), v.to(compute), is_causal=True)
        out.to(q.dtype).float().sum().backward()

    for _ in range(2):
        once()
    started = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a training rank here has 1)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| shape | inputs | bf16 SDPA ms | fp32 SDPA ms | bf16 / fp32 |")
    print("|---|---|---:|---:|---:|")
    for name, shape in SHAPES.items():
        q, k, v = (torch.randn(*shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        bf16 = step_ms(q, k, v, torch.bfloat16, args.repeats)
        fp32 = step_ms(q, k, v, torch.float32, args.repeats)
        print(f"| {name} {list(shape)} | bf16 | {bf16:.1f} | {fp32:.1f} | {bf16 / fp32:.2f}x |")


if __name__ == "__main__":
    main()
