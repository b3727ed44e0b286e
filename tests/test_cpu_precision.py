"""The start-up line for half precision on a CPU that has no kernels for it (cotdistill.cpu_precision)."""

from __future__ import annotations

import logging

import pytest

from cotdistill import cpu_precision
from cotdistill.cpu_precision import cpu_computes_natively, slow_precision_note


@pytest.fixture
def cpu_without(monkeypatch):
    """Pretend this CPU has no native kernels for the half precisions named."""
    def patch(*precisions: str) -> None:
        monkeypatch.setattr(cpu_precision, "cpu_computes_natively", lambda p: p not in precisions)
    return patch


def test_fp32_is_native_everywhere_and_the_probe_matches_torchs_own():
    import torch

    assert cpu_computes_natively("fp32")
    assert cpu_computes_natively("bf16") == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_bf16_on_a_cpu_without_its_kernels_names_the_key_the_cost_and_the_way_out(cpu_without):
    cpu_without("bf16")
    note = slow_precision_note("cpu", "bf16", "train.precision")
    assert note is not None
    assert note.startswith("train.precision=bf16 on a CPU without native bf16 kernels")
    assert "slower than fp32" in note and note.endswith("train.precision=fp32 is faster here")


@pytest.mark.parametrize(("device", "precision"), [("cpu", "fp32"), ("cuda", "bf16"), ("cpu", "fp16")])
def test_nothing_is_said_for_fp32_an_accelerator_or_a_precision_the_cpu_has(cpu_without, device, precision):
    cpu_without("bf16")
    assert slow_precision_note(device, precision, "--precision") is None


def test_a_local_teacher_in_bf16_on_such_a_cpu_logs_the_line_once(cpu_without, tiny_models):
    from cotdistill.teacher.hf_local import HFTeacher

    cpu_without("bf16")
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("cotdistill")
    logger.addHandler(handler)
    try:
        HFTeacher(str(tiny_models["gpt2"]), device="cpu", precision="bf16", batch_size=2)
    finally:
        logger.removeHandler(handler)
    lines = [line for line in seen if "without native bf16" in line]
    assert len(lines) == 1 and lines[0].startswith("teacher.precision=bf16")
