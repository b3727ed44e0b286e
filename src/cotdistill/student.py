"""Open a trained student for inference: an exported folder, a hub id, or a run's DeepSpeed checkpoint.

A checkpoint is loaded partitioned (no consolidation first), so a model that only fits under ZeRO-3 can
still be evaluated: the model skeleton comes from the run's ``hf_meta`` folder, the weights from the
checkpoint's shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cotdistill import checkpoints as ckpt
from cotdistill.cpu_precision import slow_precision_note
from cotdistill.engine import Engine
from cotdistill.modeling import detect_kind, load_model, load_tokenizer, model_skeleton
from cotdistill.targets import model_folder

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Student:
    tokenizer: Any
    causal: bool
    model_path: str
    checkpoint: Path | None
    zero_stage: int | None = None  # the inference engine's stage (None: a training engine lent for evaluation)
    label: str = ""  # what reports name as the model ('': the checkpoint, else model_path)

    @property
    def name(self) -> str:
        """The weights behind a report: the label, the checkpoint, or the model folder or hub id."""
        return self.label or (str(self.checkpoint) if self.checkpoint is not None else self.model_path)


# A replicated model needs its weights plus room for generation (KV cache, logits, allocator slack): the
# weights again on top of a fixed 1 GiB, and only 80% of the budget is spent.
GENERATION_ROOM_FACTOR = 2.0
GENERATION_ROOM_BYTES = 1 << 30
BUDGET_SHARE = 0.8
BYTES_PER_WEIGHT = {"bf16": 2, "fp16": 2, "fp32": 4}


def choose_zero_stage(model_path: str, precision: str, budget_bytes: int) -> tuple[int, str]:
    """(stage, why) for ``zero_stage=auto``: replicate (0) when the model fits one device with room for
    generation, else partition (3). Replicated generation does not wait on parameter gathers at every token
    (the ``make demo`` model: 28.9 vs 6.3 examples/s on 2 CPU ranks)."""
    from cotdistill.memory_plan import count_parameters, resolve_model_config

    params = count_parameters(resolve_model_config(model_path)).total_params
    need = int(params * BYTES_PER_WEIGHT[precision] * GENERATION_ROOM_FACTOR) + GENERATION_ROOM_BYTES
    gib = 1 << 30
    if need <= BUDGET_SHARE * budget_bytes:
        return 0, f"replicated on every rank ({params / 1e6:.1f}M parameters need ~{need / gib:.1f} GiB of " \
                  f"{budget_bytes / gib:.1f} GiB per device)"
    return 3, f"ZeRO-3 partitioned ({params / 1e6:.1f}M parameters need ~{need / gib:.1f} GiB replicated, " \
              f"{budget_bytes / gib:.1f} GiB per device)"


def inference_ds_config(precision: str = "bf16", zero_stage: int = 3, offload: bool = False) -> dict[str, Any]:
    """A DeepSpeed config for forward/generate only: partitioned weights, no optimizer."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "bf16": {"enabled": precision == "bf16"}, "fp16": {"enabled": precision == "fp16"},
            "zero_optimization": zero, "steps_per_print": 10**9}


def open_student(engine: Engine, target: str | Path, precision: str = "bf16", zero_stage: int | str = 3,
                 offload: bool = False) -> Student:
    """Collective: load ``target`` into ``engine`` for inference and return its tokenizer and kind.

    ``zero_stage`` "auto" replicates the model when it fits one device (``choose_zero_stage``), else ZeRO-3;
    the choice is logged in one line. Offload implies ZeRO-3.
    """
    model_path, checkpoint = model_folder(target)
    kind = detect_kind(model_path)
    tokenizer = load_tokenizer(model_path)
    if str(zero_stage) == "auto":
        if offload:
            zero_stage, why = 3, "ZeRO-3 (offload asked for)"
        else:
            zero_stage, why = choose_zero_stage(model_path, precision, engine.device_memory_budget())
        if engine.is_main:
            log.info("inference engine: %s; --zero_stage chooses another", why)
    zero_stage = int(zero_stage)
    slow = slow_precision_note(engine.device.type, precision, "--precision")
    if slow and engine.is_main:
        log.warning("%s", slow)
    ds = inference_ds_config(precision, zero_stage, offload)
    dtype = DTYPES[precision]
    if checkpoint is None:
        model = engine.load_model(ds, lambda: load_model(model_path, kind, dtype=dtype))
    else:
        model = engine.load_model(ds, lambda: model_skeleton(model_path, kind, dtype=dtype))
    engine.initialize_inference(model, ds)
    if checkpoint is not None:
        engine.load_weights_only(checkpoint.path, ckpt.TAG)
    engine.eval()
    return Student(tokenizer, kind == "causal", model_path, checkpoint.path if checkpoint else None, zero_stage)
