"""Fill a DeepSpeed JSON template from the run config, refusing values that disagree.

Batch sizes, learning rate, weight decay, clipping and precision live in the run config; the JSON
templates in ``ds_configs/`` say ``"auto"`` for them. A template that sets one of them to a concrete
value that differs from the run config is an error naming both places, so nobody trains with a
learning rate they did not mean.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cotdistill.config import RunConfig
from cotdistill.errors import ConfigError

AUTO = "auto"


def read_template(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON file with errors that name it."""
    template = Path(path)
    if not template.is_file():
        raise ConfigError(f"DeepSpeed config not found: {template} (set deepspeed_config=ds_configs/<name>.json)")
    try:
        data = json.loads(template.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{template}: not valid JSON (line {err.lineno}): {err.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{template}: the top level must be a JSON object")
    return data


def check_precision(model_type: str, config: RunConfig) -> None:
    """Families whose activations overflow fp16 (T5: above 65504, `cotdistill.families`) are refused fp16 unless
    forced; ``model_type`` may also be a family name (a recipe's ``model.make_tiny``)."""
    from cotdistill.families import find_family

    family = find_family(model_type)
    if config.train.precision == "fp16" and family is not None and not family.fp16_safe \
            and not config.train.allow_fp16_t5:
        raise ConfigError(
            f"train.precision=fp16 with a {family.label} model: {family.label}'s activations overflow fp16 and "
            "training produces NaN. Use train.precision=bf16 (default) or fp32; set train.allow_fp16_t5=true to "
            "force fp16.")


def _fill(section: dict[str, Any], key: str, value: Any, label: str, source: str, run_key: str) -> None:
    current = section.get(key, AUTO)
    if current == AUTO:
        section[key] = value
        return
    same = current == value
    if isinstance(current, (int, float)) and isinstance(value, (int, float)) and not isinstance(current, bool):
        same = abs(float(current) - float(value)) <= 1e-12 * max(1.0, abs(float(value)))
    if not same:
        raise ConfigError(
            f"{source} sets {label}={current!r} but the run config has {run_key}={value!r}; "
            f"set it in one place (use \"auto\" in the JSON)")


# ZeRO sizes filled for "auto", in elements. The buckets are at least BUCKET_FLOOR: with the usual h^2 a
# small model's gradients go out in hundreds of reduce-scatters per step, each paying a collective's fixed
# cost (t5-small, h=512: 142 per step, 11% of the step's CPU time on 2 ranks; a 5e7 bucket cut its step time
# by 15% with identical losses). 5e7 bf16 elements are 100 MB, double-buffered on a GPU.
BUCKET_FLOOR = 50_000_000
ZERO_SIZE_AUTOS = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")


def zero_auto_size(key: str, hidden_size: int, nvme_params: bool = False) -> int:
    """What "auto" becomes for a ZeRO size setting, from the model's hidden size.

    With parameters offloaded to NVMe the prefetch bucket stays at 0.9 h^2, without the floor: every
    parameter read back from NVMe holds one of ``offload_param.buffer_count`` pinned buffers until it is
    released, and a 5e7-element prefetch of FlanT5-XL's 4-10M-element matrices ran out of them in the second
    step ("Not enough buffers 0 for swapping 1", DeepSpeed issue #3062).
    """
    h = hidden_size
    if key == "reduce_bucket_size":
        return max(h * h, BUCKET_FLOOR)
    if key == "stage3_prefetch_bucket_size":
        return int(0.9 * h * h) if nvme_params else max(int(0.9 * h * h), BUCKET_FLOOR)
    if key == "stage3_param_persistence_threshold":
        return 10 * h
    raise KeyError(key)


def resolve_ds_config(
    template: dict[str, Any],
    config: RunConfig,
    world_size: int,
    hidden_size: int | None = None,
    source: str = "the DeepSpeed config",
) -> dict[str, Any]:
    """Return a complete DeepSpeed config for this run and world size (the template is not modified)."""
    ds = copy.deepcopy(template)
    t = config.train
    if "scheduler" in ds:
        raise ConfigError(f"{source} has a 'scheduler' block: the schedule is set by train.schedule, "
                          "train.warmup_steps and train.min_lr_ratio; remove the block")
    _fill(ds, "train_micro_batch_size_per_gpu", t.micro_batch_size, "train_micro_batch_size_per_gpu", source,
          "train.micro_batch_size")
    _fill(ds, "gradient_accumulation_steps", t.gradient_accumulation, "gradient_accumulation_steps", source,
          "train.gradient_accumulation")
    _fill(ds, "train_batch_size", t.micro_batch_size * t.gradient_accumulation * world_size, "train_batch_size",
          source, f"train.micro_batch_size x train.gradient_accumulation x world size {world_size}")
    _fill(ds, "gradient_clipping", float(t.grad_clip), "gradient_clipping", source, "train.grad_clip")

    for name in ("bf16", "fp16"):
        block = ds.setdefault(name, {})
        _fill(block, "enabled", t.precision == name, f"{name}.enabled", source, "train.precision")

    optimizer = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = optimizer.setdefault("params", {})
    _fill(params, "lr", float(t.lr), "optimizer.params.lr", source, "train.lr")
    _fill(params, "weight_decay", float(t.weight_decay), "optimizer.params.weight_decay", source,
          "train.weight_decay")

    zero = ds.get("zero_optimization", {})
    for key in ZERO_SIZE_AUTOS:
        if zero.get(key) == AUTO:
            if hidden_size is None:
                raise ConfigError(f"{source}: zero_optimization.{key} is 'auto' but the model's hidden size "
                                  "is unknown; set a number")
            zero[key] = zero_auto_size(key, hidden_size, nvme_params=offload_device(zero, "offload_param") == "nvme")
    leftovers = sorted(_auto_paths(ds))
    if leftovers:
        raise ConfigError(f"{source}: no rule fills 'auto' at {', '.join(leftovers)}; set numbers there")
    return ds


def offload_device(zero: dict[str, Any], block: str) -> str:
    """Where a ZeRO config offloads to ("cpu", "nvme" or "none"); block is offload_param or offload_optimizer."""
    return str((zero.get(block) or {}).get("device", "none"))


def _auto_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            found.extend(_auto_paths(value, f"{prefix}{key}."))
        return found
    return [prefix.rstrip(".")] if node == AUTO else []


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
