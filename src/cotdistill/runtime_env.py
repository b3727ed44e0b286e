"""Process settings that must be in place before DeepSpeed is imported.

* Compiled ops: DeepSpeed JIT-builds its CPU Adam (and NVMe I/O) ops into ``TORCH_EXTENSIONS_DIR``. Without a
  fixed folder a plain ``deepspeed launchers/train.py`` would rebuild them in a fresh default place and look
  hung for a minute; the project's cache folder is the default everywhere (Makefile, Slurm scripts, package).
* Accelerator: on a machine without a GPU device DeepSpeed warns "Setting accelerator to CPU" on every rank
  when it guesses; naming the CPU accelerator up front keeps that line out of a normal run. A machine with
  NVIDIA, AMD or other accelerator devices is left to DeepSpeed's own detection, and an explicit
  ``DS_ACCELERATOR`` always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "cotdistill" / "torch_extensions"
# Device files of the accelerators DeepSpeed detects (NVIDIA, AMD ROCm, Intel/other DRM, Habana/other accel).
_ACCELERATOR_DEVICES = ("nvidia*", "kfd", "dri", "accel", "hl[0-9]*")
# The ops a run builds by its optimizer placement: Adam on CPU (offloaded to CPU or NVMe), NVMe swapping.
CPU_ADAM, ASYNC_IO = "cpu_adam", "async_io"


def has_accelerator_devices(dev: Path = Path("/dev")) -> bool:
    return any(next(dev.glob(pattern), None) is not None for pattern in _ACCELERATOR_DEVICES)


def prepare_environment(environ: MutableMapping[str, str] = os.environ, dev: Path = Path("/dev")) -> None:
    """Default the compiled-ops folder and, on a machine with no accelerator device, the CPU accelerator."""
    environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    if "DS_ACCELERATOR" not in environ and not has_accelerator_devices(dev):
        environ["DS_ACCELERATOR"] = "cpu"


def ops_to_build(ds_config: dict, extensions_dir: str | Path | None = None) -> list[str]:
    """The DeepSpeed ops this config needs that are not compiled yet (their ``<op>/<op>.so`` is missing)."""
    zero = ds_config.get("zero_optimization", {}) or {}
    devices = {str((zero.get(key) or {}).get("device", "none")) for key in ("offload_optimizer", "offload_param")}
    needed = []
    if str((zero.get("offload_optimizer") or {}).get("device", "none")) in ("cpu", "nvme"):
        needed.append(CPU_ADAM)
    if "nvme" in devices:
        needed.append(ASYNC_IO)
    folder = Path(extensions_dir or os.environ.get("TORCH_EXTENSIONS_DIR") or DEFAULT_EXTENSIONS_DIR)
    return [op for op in needed if not any(folder.glob(f"**/{op}/{op}*.so"))]
