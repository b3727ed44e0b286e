"""DeepSpeed's CPU Adam kernels resume exactly: a fresh process that loads the optimizer state after step 5 and
runs steps 6-12 ends with the weights, bit for bit, of the process that ran every step.

Each run is its own process because the kernel's running beta^t lives in the C++ extension, one per process
(for FusedAdam on CPU, one per process and AdamW mode): only a new process starts it over, as a resume does.
"""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

SCRIPT = str(REPO / "tests" / "scripts" / "adam_steps.py")


def weights(mode: str, folder) -> dict[str, str]:
    proc = subprocess.run([sys.executable, SCRIPT, mode, str(folder)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("cpu_adam", "fused_adam"))]
    return dict(rows)


def test_a_resumed_adam_kernel_continues_bit_for_bit(tmp_path):
    uninterrupted = weights("full", tmp_path)
    assert set(uninterrupted) == {"cpu_adam", "fused_adam"}
    assert weights("resume", tmp_path) == uninterrupted
    # Without the replay the kernels recompute beta^t with pow and the weights drift (what the replay fixes).
    drifted = weights("resume-noreplay", tmp_path)
    assert all(drifted[kernel] != uninterrupted[kernel] for kernel in uninterrupted), drifted
