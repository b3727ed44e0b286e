"""Process settings that must be in place before DeepSpeed is imported.

* Compiled ops: DeepSpeed JIT-builds its CPU Adam (and NVMe I/O) ops into ``TORCH_EXTENSIONS_DIR``. Without a
  fixed folder a plain ``deepspeed launchers/train.py`` would rebuild them in a fresh default place and look
  hung for a minute; the project's cache folder is the default everywhere (Makefile, Slurm scripts, package).
* Accelerator: on a machine without a GPU device DeepSpeed warns "Setting accelerator to CPU" on every rank
  when it guesses; naming the CPU accelerator up front keeps that line out of a normal run. A machine with
  NVIDIA, AMD or other accelerator devices is left to DeepSpeed's own detection, and an explicit
  ``DS_ACCELERATOR`` always wins.
* DeepSpeed's own lines: inside the ranks its logger stays at WARNING (no engine configuration dump); the
  launcher process (``deepspeed``, or ``python launchers/launch.py``, which wraps it) is not our code: its
  INFO lines (``cmd = ...``, ``WORLD INFO DICT``, ``process ... spawned``, ``exits successfully``) go only
  with ``--log_level error``, which ``launcher_args`` adds for ``launchers/launch.py`` and ``make demo``.
  ``COTDISTILL_VERBOSE=1`` brings all of them back: DeepSpeed's INFO lines in the ranks and the launcher, and
  its own accelerator detection (with its warning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "cotdistill" / "torch_extensions"
# Device files of the accelerators DeepSpeed detects (NVIDIA, AMD ROCm, Intel/other DRM, Habana/other accel).
_ACCELERATOR_DEVICES = ("nvidia*", "kfd", "dri", "accel", "hl[0-9]*")
# The ops a run builds by its optimizer placement: Adam on CPU (offloaded to CPU or NVMe), NVMe swapping.
CPU_ADAM, ASYNC_IO = "cpu_adam", "async_io"
VERBOSE_ENV = "COTDISTILL_VERBOSE"  # 1: show DeepSpeed's own start-up lines (launcher INFO, engine config, ...)
_LAUNCHER_QUIET = ("--log_level", "-q", "--quiet")  # a user's own choice of the launcher's level wins


def is_verbose(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether COTDISTILL_VERBOSE asks for DeepSpeed's own lines (1, true, yes or on)."""
    return environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def has_accelerator_devices(dev: Path = Path("/dev")) -> bool:
    return any(next(dev.glob(pattern), None) is not None for pattern in _ACCELERATOR_DEVICES)


def prepare_environment(environ: MutableMapping[str, str] = os.environ, dev: Path = Path("/dev")) -> None:
    """Default the compiled-ops folder and, on a machine with no accelerator device, the CPU accelerator
    (unless COTDISTILL_VERBOSE asks to see DeepSpeed detect it)."""
    environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    if "DS_ACCELERATOR" not in environ and not is_verbose(environ) and not has_accelerator_devices(dev):
        environ["DS_ACCELERATOR"] = "cpu"


def deepspeed_log_level(environ: Mapping[str, str] = os.environ) -> int:
    """The level of DeepSpeed's logger inside the ranks: INFO (its configuration dumps) only when verbose."""
    return logging.INFO if is_verbose(environ) else logging.WARNING


def set_deepspeed_log_level(environ: Mapping[str, str] = os.environ) -> None:
    """Apply ``deepspeed_log_level`` to DeepSpeed's logger and to its handlers, which filter on their own (set
    to WARNING when DeepSpeed creates them), after DeepSpeed is imported."""
    from deepspeed.utils import logger

    level = deepspeed_log_level(environ)
    logger.setLevel(level)
    for handler in logger.handlers:
        handler.setLevel(level)


def launcher_args(args: list[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The DeepSpeed launcher's arguments with its log level chosen: ``error`` (no INFO lines, no hostfile
    warning; a rank's failure is still logged at error) or ``info`` when verbose; a level given to the
    launcher (before the script) wins, and the script's own arguments are not read."""
    own = args[:next((i for i, arg in enumerate(args) if arg.endswith(".py")), len(args))]
    if any(arg.split("=", 1)[0] in _LAUNCHER_QUIET for arg in own):
        return list(args)
    return ["--log_level", "info" if is_verbose(environ) else "error", *args]


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
