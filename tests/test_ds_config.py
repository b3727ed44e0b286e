"""DeepSpeed JSON templates filled from the run config, and refused when they disagree with it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cotdistill.config import RunConfig, TrainConfig
from cotdistill.ds_config import BUCKET_FLOOR, check_precision, read_template, resolve_ds_config, zero_stage
from cotdistill.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((REPO / "ds_configs").glob("*.json"))
HIDDEN = 128


def run_config(**train) -> RunConfig:
    defaults = {"micro_batch_size": 4, "gradient_accumulation": 3, "lr": 3e-4, "weight_decay": 0.01,
                "grad_clip": 1.0, "precision": "bf16"}
    defaults.update(train)
    return RunConfig(train=TrainConfig(**defaults))


def minimal(**extra) -> dict:
    template = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
        "zero_optimization": {"stage": 2},
    }
    template.update(extra)
    return template


def test_all_four_templates_are_shipped():
    assert {p.name for p in TEMPLATES} >= {"zero2.json", "zero3.json", "zero3_offload.json", "zero3_nvme.json"}


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_shipped_template_resolves_with_run_values(path, world):
    config = run_config()
    ds = resolve_ds_config(read_template(path), config, world, hidden_size=HIDDEN, source=str(path))
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * world
    assert ds["gradient_clipping"] == pytest.approx(1.0)
    assert ds["bf16"]["enabled"] is True
    assert ds["fp16"]["enabled"] is False
    assert ds["optimizer"]["params"]["lr"] == pytest.approx(3e-4)
    assert ds["optimizer"]["params"]["weight_decay"] == pytest.approx(0.01)
    assert "auto" not in json.dumps(ds)
    assert "scheduler" not in ds


@pytest.mark.parametrize("path", [p for p in TEMPLATES if p.name not in ("zero2.json", "zero3_nvme.json")],
                         ids=lambda p: p.name)
def test_zero3_bucket_sizes_follow_hidden_size_above_a_floor(path):
    for hidden, reduce, prefetch in [(HIDDEN, BUCKET_FLOOR, BUCKET_FLOOR), (10240, 10240**2, int(0.9 * 10240**2))]:
        ds = resolve_ds_config(read_template(path), run_config(), 2, hidden_size=hidden)
        zero = ds["zero_optimization"]
        assert zero_stage(ds) == 3
        assert zero["reduce_bucket_size"] == reduce
        assert zero["stage3_prefetch_bucket_size"] == prefetch
        assert zero["stage3_param_persistence_threshold"] == 10 * hidden


def test_nvme_parameter_offload_prefetches_without_the_floor_so_swap_buffers_last():
    ds = resolve_ds_config(read_template(REPO / "ds_configs" / "zero3_nvme.json"), run_config(), 1, hidden_size=2048)
    zero = ds["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 2048**2) < BUCKET_FLOOR
    assert zero["reduce_bucket_size"] == BUCKET_FLOOR  # gradients do not go through the swap buffers
    # released after use: FlanT5-XL kept 8 parameters live across the forward/backward turn with reuse
    assert zero["stage3_max_reuse_distance"] == 0
    assert zero["offload_param"]["buffer_count"] >= 8


@pytest.mark.parametrize("path", [p for p in TEMPLATES if p.name != "zero2.json"], ids=lambda p: p.name)
def test_zero3_bucket_auto_without_hidden_size_is_refused(path):
    with pytest.raises(ConfigError, match="reduce_bucket_size|hidden size"):
        resolve_ds_config(read_template(path), run_config(), 1, hidden_size=None)


def test_zero2_keeps_its_concrete_bucket_size():
    template = read_template(REPO / "ds_configs" / "zero2.json")
    ds = resolve_ds_config(template, run_config(), 1, hidden_size=None)
    assert zero_stage(ds) == 2
    assert ds["zero_optimization"]["reduce_bucket_size"] == template["zero_optimization"]["reduce_bucket_size"]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_resolving_does_not_mutate_the_template(path):
    template = read_template(path)
    before = copy.deepcopy(template)
    resolve_ds_config(template, run_config(), 2, hidden_size=HIDDEN)
    assert template == before


@pytest.mark.parametrize("precision, bf16, fp16", [("bf16", True, False), ("fp16", False, True),
                                                  ("fp32", False, False)])
def test_precision_sets_exactly_the_matching_block(precision, bf16, fp16):
    ds = resolve_ds_config(minimal(fp16={"enabled": "auto"}), run_config(precision=precision), 1)
    assert ds["bf16"]["enabled"] is bf16
    assert ds["fp16"]["enabled"] is fp16


def test_missing_optimizer_block_gets_adamw_with_run_values():
    template = minimal()
    del template["optimizer"]
    ds = resolve_ds_config(template, run_config(lr=1e-3, weight_decay=0.1), 1)
    assert ds["optimizer"]["type"] == "AdamW"
    assert ds["optimizer"]["params"]["lr"] == pytest.approx(1e-3)
    assert ds["optimizer"]["params"]["weight_decay"] == pytest.approx(0.1)


@pytest.mark.parametrize("change, json_key, run_key", [
    ({"gradient_clipping": 0.5}, "gradient_clipping", "train.grad_clip"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": "auto"}}},
     "optimizer.params.lr", "train.lr"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.5}}},
     "optimizer.params.weight_decay", "train.weight_decay"),
    ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu", "train.micro_batch_size"),
    ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps", "train.gradient_accumulation"),
    ({"train_batch_size": 999}, "train_batch_size", "train.micro_batch_size"),
    ({"bf16": {"enabled": False}}, "bf16.enabled", "train.precision"),
    ({"fp16": {"enabled": True}}, "fp16.enabled", "train.precision"),
])
def test_conflicting_concrete_value_names_json_key_and_run_key(change, json_key, run_key):
    with pytest.raises(ConfigError) as info:
        resolve_ds_config(minimal(**change), run_config(), 1, source="ds_configs/custom.json")
    message = str(info.value)
    assert json_key in message
    assert run_key in message
    assert "ds_configs/custom.json" in message


def test_conflicting_clipping_error_shows_both_values():
    with pytest.raises(ConfigError) as info:
        resolve_ds_config(minimal(gradient_clipping=0.5), run_config(grad_clip=1.0), 1)
    message = str(info.value)
    assert "0.5" in message
    assert "1.0" in message


@pytest.mark.parametrize("change", [
    {"gradient_clipping": 1.0},
    {"gradient_clipping": 1},
    {"optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.01}}},
    {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3, "train_batch_size": 24},
    {"bf16": {"enabled": True}, "fp16": {"enabled": False}},
])
def test_equal_concrete_value_is_accepted(change):
    ds = resolve_ds_config(minimal(**change), run_config(), 2)
    for key, value in change.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                assert ds[key][inner] == inner_value
        else:
            assert ds[key] == value


def test_concrete_train_batch_size_depends_on_world_size():
    template = minimal(train_batch_size=12)
    assert resolve_ds_config(template, run_config(), 1)["train_batch_size"] == 12
    with pytest.raises(ConfigError, match="train_batch_size"):
        resolve_ds_config(template, run_config(), 2)


def test_scheduler_block_is_refused():
    template = minimal(scheduler={"type": "WarmupLR", "params": {}})
    with pytest.raises(ConfigError, match="scheduler") as info:
        resolve_ds_config(template, run_config(), 1)
    assert "train.schedule" in str(info.value)


def test_auto_without_rule_is_refused_naming_its_path():
    template = minimal(zero_optimization={"stage": 3, "stage3_max_live_parameters": "auto"})
    with pytest.raises(ConfigError, match=r"zero_optimization\.stage3_max_live_parameters"):
        resolve_ds_config(template, run_config(), 1, hidden_size=HIDDEN)


def test_auto_at_top_level_without_rule_is_refused_naming_it():
    with pytest.raises(ConfigError, match="steps_per_print"):
        resolve_ds_config(minimal(steps_per_print="auto"), run_config(), 1)


def test_missing_template_error_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="absent.json"):
        read_template(tmp_path / "absent.json")


def test_invalid_json_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "train_batch_size": "auto",\n  oops\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.json") as info:
        read_template(path)
    assert "line 3" in str(info.value)


def test_non_object_json_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="list.json"):
        read_template(path)


@pytest.mark.parametrize("model_type", ["t5", "mt5", "umt5"])
def test_fp16_is_refused_for_t5_models(model_type):
    with pytest.raises(ConfigError, match="allow_fp16_t5"):
        check_precision(model_type, run_config(precision="fp16"))


def test_fp16_t5_is_allowed_when_forced():
    check_precision("t5", run_config(precision="fp16", allow_fp16_t5=True))


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_non_fp16_precisions_are_allowed_for_t5(precision):
    check_precision("t5", run_config(precision=precision))


def test_fp16_is_allowed_for_gpt2():
    check_precision("gpt2", run_config(precision="fp16"))
