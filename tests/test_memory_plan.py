"""The memory planner: exact parameter counts, ZeRO model states, activations, recipes and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cotdistill import memory_plan as mp
from cotdistill.ds_config import BUCKET_FLOOR
from cotdistill.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "cotdistill"

PUBLISHED_SIZES = {
    "flan-t5-small": 76_961_152,
    "flan-t5-base": 247_577_856,
    "flan-t5-large": 783_150_080,
    "flan-t5-xl": 2_849_757_184,
    "flan-t5-xxl": 11_135_332_352,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", list(PUBLISHED_SIZES))
def test_shipped_configs_count_the_published_parameter_numbers(name):
    facts = mp.count_parameters(mp.resolve_model_config(name))
    assert facts.total_params == PUBLISHED_SIZES[name]
    if name.startswith("flan-t5"):  # T5 v1.1: the LM head is its own matrix, as large as the embedding
        assert facts.lm_head_params == facts.embedding_params == 32128 * facts.hidden
    else:  # GPT-2 ties them
        assert facts.lm_head_params == 0 and facts.embedding_params == 50257 * facts.hidden
    assert facts.largest_layer[1] == facts.embedding_params


# Published sizes of the modern shipped configs: (parameters, rounding unit of the published figure). Exact counts
# are the checkpoints' safetensors totals (tied embeddings counted once); the Qwen3 model cards round to 0.1B.
MODERN_PUBLISHED = {
    "qwen2.5-0.5b": (494_032_768, 1), "qwen2.5-1.5b": (1_543_714_304, 1), "qwen2.5-7b": (7_615_616_512, 1),
    "qwen3-0.6b": (0.6e9, 0.1e9), "qwen3-1.7b": (1.7e9, 0.1e9), "qwen3-4b": (4.0e9, 0.1e9),
    "qwen3-8b": (8.2e9, 0.1e9), "llama-3.2-1b": (1_235_814_400, 1), "llama-3.2-3b": (3_212_749_824, 1),
    "smollm2-360m": (361_821_120, 1), "smollm2-1.7b": (1_711_376_384, 1),
}
# The Qwen3 cards' non-embedding counts, which pin the layers down where the totals are rounded.
QWEN3_NON_EMBEDDING = {"qwen3-0.6b": 0.44e9, "qwen3-1.7b": 1.4e9, "qwen3-4b": 3.6e9, "qwen3-8b": 6.95e9}


def _close_to_published(count: float, published: float, unit: float) -> bool:
    """Within 1% of a published figure, or within its rounding where it is rounded coarser than that."""
    return abs(count - published) <= max(0.01 * published, unit / 2)


@pytest.mark.parametrize("name", list(MODERN_PUBLISHED))
def test_modern_shipped_configs_count_their_published_sizes(name):
    facts = mp.count_parameters(mp.resolve_model_config(name))
    published, unit = MODERN_PUBLISHED[name]
    assert _close_to_published(facts.total_params, published, unit), (facts.total_params, published)
    assert facts.block == "llama" and facts.gated_ffn and not facts.fused_qkv and facts.rms_norm
    assert facts.embedding_params == facts.vocab * facts.hidden
    untied = name in ("qwen2.5-7b", "qwen3-8b")  # the larger Qwen checkpoints have their own LM head
    assert facts.lm_head_params == (facts.embedding_params if untied else 0)
    if name in QWEN3_NON_EMBEDDING:
        non_embedding = facts.total_params - facts.embedding_params - facts.lm_head_params
        assert _close_to_published(non_embedding, QWEN3_NON_EMBEDDING[name], 0.01e9), non_embedding


def test_llama_like_shapes_carry_grouped_query_attention_and_head_dim():
    qwen = mp.count_parameters(mp.resolve_model_config("qwen2.5-0.5b"))
    assert (qwen.heads, qwen.kv_heads, qwen.head_dim, qwen.ffn, qwen.vocab) == (14, 2, 64, 4864, 151936)
    assert qwen.qkv_bias and not qwen.out_bias and not qwen.qk_norm and qwen.activation == "silu"
    qwen3 = mp.count_parameters(mp.resolve_model_config("qwen3-0.6b"))
    # Qwen3's head_dim is set, not hidden / heads: Q is 2048 wide on a 1024-wide model
    assert (qwen3.heads, qwen3.kv_heads, qwen3.head_dim, qwen3.hidden) == (16, 8, 128, 1024)
    assert qwen3.qk_norm and not qwen3.qkv_bias
    smol = mp.count_parameters(mp.resolve_model_config("smollm2-1.7b"))
    assert smol.kv_heads == smol.heads == 32 and smol.kv_groups == 1


def _built_parameter_count(config) -> int:
    """Distinct parameters of the model transformers builds on the meta device (tied ones once)."""
    from cotdistill.modeling import build_from_config

    with torch.device("meta"):
        model = build_from_config(config, "seq2seq" if config.is_encoder_decoder else "causal")
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(mp.SHIPPED_CONFIGS))
def test_plan_parameters_equal_the_built_model_and_the_planners_shape(name):
    """The plan's count is the real model's, and the shape the formulas use (GQA widths, gated or plain
    feed-forward, biases, tied head) adds up to exactly that many parameters."""
    result = mp.plan(name)
    assert result.model.total_params == _built_parameter_count(mp.resolve_model_config(name))
    assert mp.shape_parameters(result.model) == result.model.total_params


def test_gqa_narrows_key_value_projections_while_sdpa_keeps_per_head_copies():
    import dataclasses

    gqa = mp.count_parameters(mp.resolve_model_config("qwen2.5-0.5b"))
    mha = dataclasses.replace(gqa, kv_heads=gqa.heads)
    # K and V of 2 heads instead of 14, with their biases, in each of the 24 layers
    assert mp.shape_parameters(mha) - mp.shape_parameters(gqa) == 24 * 2 * (896 + 1) * (14 - 2) * 64
    work = mp.Workload(4, 256, 128, "bf16")
    token_bytes = 2 * 4 * (256 + 128)  # one bf16 element per token of the micro-batch
    kept = mp.estimate_activations(gqa, work).layers
    # with 2 < 14 K/V heads transformers' SDPA keeps per-head copies of K and V, as many as MHA keeps, and the
    # KV cache its own K and V of 2 heads
    assert mp.estimate_activations(mha, work).layers == kept - 24 * token_bytes * 2 * (2 * 64)
    mqa = dataclasses.replace(gqa, kv_heads=1)  # one K/V head: SDPA's copy is a view, the cache is what it keeps
    assert mp.estimate_activations(mqa, work).layers < kept


def test_hardware_doc_has_a_current_row_for_every_shipped_config():
    rows = {line.split(" ", 2)[1].strip("`"): line for line in (REPO / "docs" / "HARDWARE.md").read_text().splitlines()
            if line.startswith("| `") and "` (`" in line}
    assert set(rows) == set(mp.SHIPPED_CONFIGS), "regenerate docs/HARDWARE.md (benchmarks/hardware_table.py)"
    qwen = mp.plan("qwen2.5-0.5b")
    assert f"| {mp.describe_layers(qwen.model)} |" in rows["qwen2.5-0.5b"]
    assert "14/2 KV heads of 64, FFN gated 4864" in rows["qwen2.5-0.5b"]
    assert mp.hardware_line(qwen, 80) in rows["qwen2.5-0.5b"]


def test_every_shipped_config_is_a_package_file():
    shipped = {p.stem for p in (REPO / "src" / "cotdistill" / "model_configs").glob("*.json")}
    assert shipped == set(mp.SHIPPED_CONFIGS)


def test_hub_ids_resolve_to_the_shipped_configs_offline():
    config = mp.resolve_model_config("google/flan-t5-xxl")
    assert (config.name_or_path, config.d_model, config.d_ff, config.num_heads) == ("flan-t5-xxl", 4096, 10240, 64)
    assert mp.resolve_model_config("openai-community/gpt2-large").n_embd == 1280


@pytest.mark.parametrize("model, name", [
    ("Qwen/Qwen2.5-0.5B", "qwen2.5-0.5b"), ("Qwen2.5-0.5B", "qwen2.5-0.5b"), ("Qwen/Qwen3-0.6B", "qwen3-0.6b"),
    ("meta-llama/Llama-3.2-1B", "llama-3.2-1b"), ("HuggingFaceTB/SmolLM2-360M", "smollm2-360m"),
    ("SmolLM2-1.7B", "smollm2-1.7b"), ("qwen3-8b", "qwen3-8b")])
def test_modern_hub_ids_and_short_names_resolve_offline(model, name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = mp.resolve_model_config(model)
    assert config.name_or_path == name
    assert config.model_type == {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama", "smoll": "llama"}[name[:5]]


def test_a_local_folder_or_config_file_is_read(tmp_path):
    values = json.loads((REPO / "src" / "cotdistill" / "model_configs" / "gpt2-medium.json").read_text())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(values))
    (tmp_path / "custom.json").write_text(json.dumps({**values, "n_layer": 2}))
    assert mp.count_parameters(mp.resolve_model_config(str(tmp_path / "model"))).total_params == 354_823_168
    assert mp.resolve_model_config(str(tmp_path / "custom.json")).n_layer == 2


def test_unknown_model_raises_config_error_naming_the_shipped_configs(tmp_path):
    with pytest.raises(ConfigError) as err:
        mp.resolve_model_config(str(tmp_path / "no-such-model"))
    assert "flan-t5-xxl" in str(err.value) and "gpt2-large" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        mp.resolve_model_config(str(tmp_path / "empty"))


def test_zero3_model_states_per_gpu_shrink_with_more_gpus():
    per_gpu = [mp.plan("flan-t5-xl", nodes, 8).row(3, "none").gpu_model_states for nodes in (1, 2, 4)]
    assert per_gpu[0] > per_gpu[1] > per_gpu[2]
    # ZeRO-2 keeps the whole 16-bit model on every GPU, so it never drops below 2 bytes per parameter
    n_params = PUBLISHED_SIZES["flan-t5-xl"]
    assert mp.plan("flan-t5-xl", 64, 8).row(2, "none").gpu_model_states > 2 * n_params


def test_mixed_precision_model_states_are_16_bytes_per_parameter():
    result = mp.plan("gpt2-xl")
    n_params = PUBLISHED_SIZES["gpt2-xl"]
    # on one GPU, ZeRO-3 without offload holds the offloaded setting's working set plus all model states
    resident = result.row(3, "none").gpu_model_states - result.row(3, "cpu").gpu_model_states
    assert resident == 16 * n_params
    # offloaded: fp32 master, Adam m and v, fp32 gradients and the 16-bit partition (DeepSpeed's 18)
    host = result.row(3, "cpu").cpu_bytes_per_node - mp.HOST_PROCESS_OVERHEAD
    assert host == int(18 * n_params * mp.CPU_BUFFER_FACTOR)


def test_nvme_offload_keeps_swap_buffers_and_the_fp32_gradient_partition_in_host_memory():
    result = mp.plan("flan-t5-xl")  # one process: every parameter is in its partition
    n_params = PUBLISHED_SIZES["flan-t5-xl"]
    nvme = result.row(3, "nvme")
    assert nvme.nvme_bytes_per_node == 18 * n_params
    buffers = mp.NVME_PARAM_BUFFERS * 2 + mp.NVME_OPTIMIZER_BUFFERS * 4 * mp.NVME_SUB_GROUP
    host = nvme.cpu_bytes_per_node - mp.HOST_PROCESS_OVERHEAD
    assert host == int((buffers + 4 * n_params) * mp.CPU_BUFFER_FACTOR)


def test_cpu_offload_moves_model_states_from_gpu_to_cpu():
    result = mp.plan("flan-t5-large", 1, 4)
    for stage in (2, 3):
        kept, offloaded = result.row(stage, "none"), result.row(stage, "cpu")
        assert offloaded.gpu_bytes < kept.gpu_bytes
        assert offloaded.cpu_bytes_per_node > kept.cpu_bytes_per_node


def test_nvme_offload_is_planned_for_zero3_only():
    result = mp.plan("flan-t5-xxl", 2, 8)
    assert not result.row(2, "nvme").supported
    nvme, cpu = result.row(3, "nvme"), result.row(3, "cpu")
    assert nvme.nvme_bytes_per_node > 0 and cpu.nvme_bytes_per_node == 0
    # the same GPU states, less the prefetch bucket, which stays at 0.9 h^2 (no floor) for NVMe parameters
    assert cpu.gpu_bytes - nvme.gpu_bytes == 2 * (BUCKET_FLOOR - int(0.9 * 4096**2))
    assert "n/a" in mp.render_plan(result).split("ZeRO-2 + NVMe offload")[1].splitlines()[0]


def test_gradient_checkpointing_reduces_activations():
    for name in ("flan-t5-large", "gpt2-large"):
        result = mp.plan(name, micro_batch_size=16)
        assert result.activations.checkpointed < result.activations.full / 2
        for row in result.rows:
            if row.supported:
                assert row.gpu_bytes_checkpointing < row.gpu_bytes


def test_t5_activations_grow_with_source_length_through_the_encoder():
    short = mp.plan("flan-t5-base", source_tokens=256, target_tokens=128).activations
    long = mp.plan("flan-t5-base", source_tokens=1024, target_tokens=128).activations
    assert long.layers > 2 * short.layers
    assert long.logits == short.logits  # T5's logits cover the target only
    gpt_short = mp.plan("gpt2", source_tokens=256, target_tokens=128).activations
    gpt_long = mp.plan("gpt2", source_tokens=512, target_tokens=128).activations
    assert gpt_long.logits > gpt_short.logits  # GPT-2's cover source and target


def _saved_bytes(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for the backward pass of a forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**inputs)
    return sum(saved.values())


@pytest.mark.parametrize("architecture", ["t5", "gpt2"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_activation_estimate_matches_the_tensors_autograd_saves(architecture, attention, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, GPT2Config, T5Config

    # on CPU, SDPA has no fused dropout (the math fallback stores probabilities) and cannot differentiate a
    # mask, so that path is measured without dropout and with T5's position bias frozen
    dropout = 0.1 if attention == "eager" else 0.0
    if architecture == "t5":
        config = T5Config(vocab_size=200, d_model=64, d_kv=16, d_ff=96, num_layers=3, num_decoder_layers=2,
                          num_heads=6, feed_forward_proj="gated-gelu", dropout_rate=dropout)
        auto = AutoModelForSeq2SeqLM
    else:
        config = GPT2Config(vocab_size=200, n_positions=64, n_embd=64, n_layer=3, n_head=4, bos_token_id=0,
                            eos_token_id=0, attn_pdrop=dropout, resid_pdrop=dropout, embd_pdrop=dropout)
        auto = AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto.from_config(config, dtype=torch.bfloat16, attn_implementation=attention).train()
    for name, param in model.named_parameters():
        param.requires_grad_("relative_attention_bias" not in name or attention == "eager")
    batch, source, target = 2, 24, 16
    length = source if architecture == "t5" else source + target
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -3:] = 0  # padding, so that a mask is built
    inputs = {"input_ids": torch.randint(2, 200, (batch, length)), "attention_mask": mask}
    if architecture == "t5":
        inputs["decoder_input_ids"] = torch.randint(2, 200, (batch, target))
    measured = _saved_bytes(model, inputs)

    facts = mp.count_parameters(config)
    facts = type(facts)(**{**facts.__dict__, "attention": attention})
    monkeypatch.setattr(mp, "DROPOUT_MASK_BYTES", 2)  # CPU dropout keeps its mask in bf16
    estimate = mp.estimate_activations(facts, mp.Workload(batch, source, target, "bf16"))
    assert estimate.layers + estimate.other == pytest.approx(measured, rel=0.02)


def _small_llama_like(family: str, kv_heads: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = {"vocab_size": 200, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": kv_heads, "max_position_embeddings": 128,
              "bos_token_id": 0, "eos_token_id": 0, "use_cache": False}
    if family == "llama":
        return LlamaConfig(**common, head_dim=16)
    if family == "mistral":  # no family of its own: planned from the standard attributes
        return MistralConfig(**common, head_dim=16)
    if family == "qwen2":  # Q/K/V biases
        return Qwen2Config(**common)
    return Qwen3Config(**common, head_dim=24)  # per-head Q/K norms, head_dim != hidden / heads


@pytest.mark.parametrize("family, kv_heads, attention, precision", [
    ("llama", 2, "sdpa", "bf16"), ("llama", 2, "eager", "bf16"), ("llama", 1, "sdpa", "bf16"),
    ("llama", 4, "sdpa", "fp32"), ("mistral", 2, "sdpa", "bf16"), ("qwen2", 2, "sdpa", "bf16"),
    ("qwen3", 2, "sdpa", "bf16"), ("qwen3", 1, "eager", "fp32")])
def test_llama_like_activation_estimate_matches_the_tensors_autograd_saves(family, kv_heads, attention, precision):
    """GQA (per-head K/V copies or not), the gated MLP, Llama's RMSNorm and Qwen3's Q/K norms, tensor by tensor."""
    from transformers import AutoModelForCausalLM

    config = _small_llama_like(family, kv_heads)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention).train()
    batch, source, target = 2, 24, 16
    length = source + target
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -3:] = 0  # padding, so that a mask is built
    inputs = {"input_ids": torch.randint(2, 200, (batch, length)), "attention_mask": mask, "use_cache": False,
              "position_ids": torch.arange(length).repeat(batch, 1)}
    measured = _saved_bytes(model, inputs)

    facts = mp.count_parameters(config)
    facts = type(facts)(**{**facts.__dict__, "attention": attention})
    estimate = mp.estimate_activations(facts, mp.Workload(batch, source, target, precision))
    assert estimate.layers + estimate.other == pytest.approx(measured, rel=0.02)


def test_recipe_values_are_used_and_explicit_arguments_win(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"deepspeed_config: {REPO / 'ds_configs' / 'zero2.json'}\n"
        "model: {name_or_path: gpt2-medium, gradient_checkpointing: true}\n"
        "data: {max_source_tokens: 300, max_target_tokens: 100}\n"
        "train: {micro_batch_size: 4, precision: fp32}\n")
    result = mp.plan(recipe=recipe)
    assert result.model.total_params == PUBLISHED_SIZES["gpt2-medium"]
    assert result.workload == mp.Workload(4, 300, 100, "fp32", True)
    assert result.recipe_setting == (2, "none")
    assert "ZeRO-2 (recipe)" in mp.render_plan(result)
    override = mp.plan("gpt2", recipe=recipe, micro_batch_size=2, precision="bf16", gradient_checkpointing=False)
    assert override.model.total_params == PUBLISHED_SIZES["gpt2"]
    assert override.workload == mp.Workload(2, 300, 100, "bf16", False)


def test_a_recipe_with_a_tiny_llama_like_student_is_planned_as_one(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"deepspeed_config: {REPO / 'ds_configs' / 'zero2.json'}\n"
        f"model: {{name_or_path: {tmp_path / 'not-made-yet'}, make_tiny: qwen3,\n"
        "        tiny: {d_model: 64, num_layers: 2, num_heads: 4, d_ff: 128}}\n")
    facts = mp.plan(recipe=recipe).model
    assert (facts.block, facts.architecture, facts.kv_heads, facts.heads) == ("llama", "Qwen3ForCausalLM", 2, 4)
    assert facts.gated_ffn and facts.qk_norm
    assert mp.shape_parameters(facts) == facts.total_params


def test_defaults_without_a_recipe():
    assert mp.plan("gpt2").workload == mp.Workload(8, 256, 192, "bf16", False)
    with pytest.raises(ConfigError, match="precision"):
        mp.plan("gpt2", precision="fp8")
    with pytest.raises(ConfigError, match="gpus_per_node"):
        mp.plan("gpt2", gpus_per_node=0)


def test_hardware_line_names_the_fewest_gpus_that_fit():
    assert mp.hardware_line(mp.plan("gpt2")).startswith("ZeRO-2: 1 x 80 GiB GPU, 1 node with")
    xxl = mp.plan("flan-t5-xxl", micro_batch_size=8, gradient_checkpointing=True)
    assert mp.hardware_line(xxl, 40).startswith("ZeRO-2 + CPU offload: 1 x 40 GiB GPU,")
    # too little host memory for CPU offload on one node: the optimizer goes to NVMe
    assert mp.hardware_line(xxl, 40, ram_gib=128).startswith("ZeRO-3 + NVMe offload: 1 x 40 GiB GPU,")
    assert mp.hardware_line(mp.plan("flan-t5-xxl"), gpu_gib=1).startswith("does not fit")


def _table_row(rendered: str, label: str) -> list[str]:
    """The cells of one setting's row in a rendered plan's markdown table."""
    return next(line.strip("|").split(" | ") for line in rendered.splitlines() if line.startswith(f"| {label} |"))


def test_recommendation_is_for_the_gpu_count_asked_for_and_matches_its_table_row():
    result = mp.plan("flan-t5-xxl", nodes=2, gpus_per_node=8)
    rendered = mp.render_plan(result, gpu_gib=80)
    lines = rendered.splitlines()
    recommended = next(line for line in lines if line.startswith("recommended on "))
    assert "2 nodes x 8 GPUs of 80 GiB (16 in all): ZeRO-2 (peak " in recommended
    # the peak it names is the table's (computed for 16 GPUs), not a one-GPU layout's
    assert f"peak {_table_row(rendered, 'ZeRO-2')[2]} GiB per GPU" in recommended
    assert lines[-1].startswith("fewest that fit, nodes of 8 GPUs: ")


def test_recommendation_says_when_nothing_fits_the_machines_asked_for():
    result = mp.plan("flan-t5-xxl", nodes=1, gpus_per_node=2)
    recommended = mp.layout_line(result, gpu_gib=16, ram_gib=64)
    assert recommended == ("recommended on 1 node x 2 GPUs of 16 GiB (2 in all) with 64 GiB RAM per node: "
                           "nothing fits (see the next line)")


def test_fewest_gpus_are_counted_on_nodes_of_the_size_asked_for():
    result = mp.plan("flan-t5-xxl", nodes=1, gpus_per_node=4, gradient_checkpointing=True)
    fewest = mp.fewest_line(result, gpu_gib=40, ram_gib=64)
    # eight 4-GPU nodes' worth of memory: two nodes, never one node of eight GPUs
    assert fewest == ("fewest that fit, nodes of 4 GPUs: ZeRO-3: 8 x 40 GiB GPUs, 2 nodes with 15 GiB RAM each "
                      "(peak 26.6 GiB per GPU)")


def test_every_memory_column_of_the_table_names_its_unit():
    rendered = mp.render_plan(mp.plan("gpt2"))
    header = next(line for line in rendered.splitlines() if line.startswith("| setting |"))
    columns = header.strip("|").split(" | ")[1:]
    assert len(columns) == 5
    assert all("GiB per GPU" in c or "GiB per node" in c for c in columns), columns


def test_cli_prints_the_table(tmp_path):
    done = subprocess.run([str(CLI), "plan-memory", "--model", "gpt2-large", "--nodes", "1", "--gpus-per-node", "2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| ZeRO-3 + CPU offload |" in done.stdout and "774,030,080" in done.stdout
    assert "1 node(s) x 2 GPU(s)" in done.stdout


def test_cli_bad_model_exits_2_with_one_error_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(CLI), "plan-memory", "--model", "no-such-model-anywhere"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "flan-t5-small" in lines[0]


@pytest.mark.parametrize("recipe", sorted([*(REPO / "recipes" / "paper").glob("*.yaml"),
                                           *(REPO / "recipes" / "modern").glob("*.yaml")]), ids=lambda p: p.stem)
def test_paper_and_modern_recipes_carry_the_planners_current_hardware_line(recipe):
    from cotdistill.memory_plan import hardware_comment

    assert hardware_comment(recipe) in recipe.read_text().splitlines(), "regenerate the recipe's hardware line"
