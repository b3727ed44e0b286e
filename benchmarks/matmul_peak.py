"""This machine's dense matmul peak in FLOP/s, fp32 and bf16: the denominator of MFU.

Square matmuls (n x n times n x n, 2 n^3 FLOPs each) of a few sizes, repeated for a fixed time; the best
size counts. Two layouts over all usable cores: `processes x 1 thread` (how training runs: one DeepSpeed rank
per core, each with one thread, see cotdistill.engine.share_cpu_threads), and `1 process x cores threads`.
In the multi-process layout every process starts at a barrier and runs for the same time, so the reported
rate is the sum of rates measured concurrently. On CPUs with AMX (this machine's Xeon), torch's bf16 matmul
goes through oneDNN's AMX kernels and is several times the fp32 rate. Where CUDA is available, the peak is
that of one GPU (layout "1 GPU: <name>"; fp32 with TF32 off, as PyTorch's default), which is then the
training layout. Usage:
    python benchmarks/matmul_peak.py [--sizes 1024 2048 4096] [--seconds 1.5] [--out peak.json]
Prints a Markdown table; --out writes JSON (GFLOP/s per dtype and layout).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

from cotdistill.entrypoints import run_or_exit
from cotdistill.outputs import check_output_file

DTYPES = ("fp32", "bf16")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _rate(dtype_name: str, size: int, seconds: float, threads: int, barrier=None) -> float:
    """FLOP/s of repeated n x n matmuls in this process with `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    for _ in range(2):  # warm-up: oneDNN picks and caches its kernel on the first calls
        torch.matmul(a, b, out=out)
    if barrier is not None:
        barrier.wait()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.matmul(a, b, out=out)
        count += 1
    return 2.0 * size ** 3 * count / elapsed


def gpu_rate(dtype_name: str, size: int, seconds: float) -> float:
    """FLOP/s of repeated n x n matmuls on the current CUDA device, timed between synchronizations."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, device="cuda").to(dtype)
    b = torch.randn(size, size, device="cuda").to(dtype)
    out = torch.empty(size, size, dtype=dtype, device="cuda")
    for _ in range(3):  # warm-up: cuBLAS picks its kernel on the first calls
        torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    count, start, batch = 0, time.perf_counter(), 10
    while time.perf_counter() - start < seconds:
        for _ in range(batch):
            torch.matmul(a, b, out=out)
        torch.cuda.synchronize()
        count += batch
    return 2.0 * size ** 3 * count / (time.perf_counter() - start)


def _worker(dtype_name: str, size: int, seconds: float, barrier, results) -> None:
    results.put(_rate(dtype_name, size, seconds, 1, barrier))


def multi_process_rate(dtype_name: str, size: int, seconds: float, processes: int) -> float:
    """Summed FLOP/s of `processes` single-thread processes running at the same time."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no OpenMP pool inherited through fork
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(dtype_name, size, seconds, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def measure_peaks(sizes: list[int], seconds: float, cores: int | None = None) -> dict:
    """{"fp32"|"bf16": {layout: {"gflops": best, "by_size": {n: gflops}}}} over both CPU layouts, or one GPU."""
    import torch

    cores = cores or usable_cpus()
    layouts = {f"{cores} processes x 1 thread": lambda d, n: multi_process_rate(d, n, seconds, cores),
               f"1 process x {cores} threads": lambda d, n: _rate(d, n, seconds, cores)}
    if torch.cuda.is_available():  # training runs on the GPUs: their peak is the denominator
        layouts = {f"1 GPU: {torch.cuda.get_device_name(0)}": lambda d, n: gpu_rate(d, n, seconds)}
    peaks: dict = {"cores": cores, "sizes": sizes, "seconds": seconds, "training_layout": next(iter(layouts))}
    for dtype_name in DTYPES:
        peaks[dtype_name] = {}
        for layout, measure in layouts.items():
            by_size = {n: measure(dtype_name, n) / 1e9 for n in sizes}
            peaks[dtype_name][layout] = {"gflops": max(by_size.values()), "by_size": by_size}
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per size and layout")
    parser.add_argument("--cores", type=int, default=0, help="cores to use (0: all usable)")
    parser.add_argument("--out", help="write the peaks as JSON to this file")
    args = parser.parse_args()
    if args.out:  # checked now: a missing folder must not cost the whole run
        run_or_exit(lambda: check_output_file(args.out))
    from cotdistill.report import markdown_table

    peaks = measure_peaks(args.sizes, args.seconds, args.cores or None)
    rows = []
    for dtype_name in DTYPES:
        for layout, found in peaks[dtype_name].items():
            sizes = ", ".join(f"{n}: {g:.0f}" for n, g in found["by_size"].items())
            rows.append([dtype_name, layout, f"{found['gflops']:.0f}", sizes])
    print(markdown_table(["dtype", "layout", "peak GFLOP/s", "GFLOP/s by n"], rows))
    if args.out:
        Path(args.out).write_text(json.dumps(peaks, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
