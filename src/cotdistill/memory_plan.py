"""Plan GPU, CPU and NVMe memory for a training run from the model config alone, before renting machines.

Parameters are counted exactly by building the model on PyTorch's meta device (shapes, no weights).
Everything else is arithmetic, so a FlanT5-XXL plan takes a second on a laptop. Three layer layouts are
known (``BLOCKS``): T5, GPT-2 and Llama-like, the last being any decoder-only config with
``num_key_value_heads`` and ``intermediate_size`` (Llama, SmolLM2, Mistral, Qwen2/2.5, Qwen3, Gemma-like):
grouped-query attention (K and V projections of num_key_value_heads x head_dim), a gated feed-forward of three
matrices (SwiGLU: gate, up, down), RMSNorm, RoPE, and an LM head tied to the embedding or not, over the
config's vocabulary. ``shape_parameters`` recounts the parameters from that shape alone, and the tests check
it equals the built model for every shipped config.

Model states (per GPU, per node CPU, per node NVMe) follow DeepSpeed's own estimators,
``estimate_zero2_model_states_mem_needs`` (deepspeed/runtime/zero/stage_1_and_2.py) and
``estimate_zero3_model_states_mem_needs`` / ``..._all_cold`` (deepspeed/runtime/zero/stage3.py), read in
deepspeed 0.19.8. With N parameters, G GPUs in all, g per node and n nodes, in bf16/fp16:

* resident model states are 16 bytes per parameter: 2-byte weights and gradients, an fp32 master copy and
  Adam's fp32 m and v. ZeRO-2 keeps the 16-bit weights whole on every GPU (2N) and partitions the rest
  (14N/G); ZeRO-3 partitions all of it (16N/G). DeepSpeed's estimators charge 18 bytes per partitioned
  parameter: they also count the fp32 copy of the gradient partition that the optimizer step makes. Here
  that copy is a step-time transient on the GPU (4 bytes per partitioned parameter, per ZeRO-3 sub-group
  of at most 1e9 elements), which peaks when the activations are already freed, so a GPU needs
  states + max(activations, that copy); with offload it is a persistent CPU buffer.
* ZeRO-3 also holds one gathered layer: its 16-bit weights and its full gradient before the
  reduce-scatter, 4 bytes per parameter of the largest layer as in DeepSpeed (a layer is one module's own
  parameters, which is what ZeRO-3 gathers at a time; for T5 and GPT-2 it is the embedding or LM head).
  Added here, and not in DeepSpeed's estimator: the prefetch bucket and the gradient reduce bucket
  (0.9 h^2 and h^2 elements, at least 5e7 each: ``ds_config.zero_auto_size``, what "auto" becomes), and the
  small parameters below the persistence threshold (10 h elements), which stay whole on every GPU.
  ``stage3_max_live_parameters`` (1e9 in ds_configs/) only caps prefetching, and parameters are kept
  gathered for reuse only within ``stage3_max_reuse_distance``; in practice that is the shared T5
  embedding or a checkpointed layer being recomputed, both no larger than the largest layer.
* ZeRO-2 holds two gradient reduce buckets on the GPU (``reduce_bucket_size`` 2e8 elements in
  ds_configs/zero2.json, double-buffered because ``overlap_comm`` is on); DeepSpeed's estimator leaves
  them out.
* CPU offload moves the partitions to host memory: 4 (master) + 8 (Adam) + 4 (fp32 gradients) bytes per
  parameter, plus the 2-byte weight partition (ZeRO-3 ``offload_param``; ZeRO-2's pinned bit16 staging
  buffer), so 18N/n per node, DeepSpeed's ZeRO-3 figure. DeepSpeed's ZeRO-2 estimator uses 16N without
  dividing by the number of nodes.
* NVMe offload (ZeRO-3 only; ZeRO-2 cannot offload to NVMe) puts those 18N/n bytes on the node's NVMe
  and keeps pinned swap buffers in host memory: ``buffer_count`` x ``buffer_size`` 16-bit elements for
  parameters (8 x 1e8 in ds_configs/zero3_nvme.json) and ``buffer_count`` (4) fp32 buffers of the
  largest optimizer sub-group per process: up to ``sub_group_size`` elements (1e8 in
  ds_configs/zero3_nvme.json, 1.6 GB per process; DeepSpeed's default of 1e9 would pin 16 GB). The fp32
  gradient partition stays in host memory as well (DeepSpeed's ``grad_partitions_flat_buffer``, 4 bytes per
  partitioned parameter), besides its swapped copy: FlanT5-XL on one process measured 18.4 GiB of host
  memory and 48.0 GiB of NVMe against 18.8 and 47.8 GiB planned (docs/BENCHMARKS.md).
* Host memory while loading: without ZeRO-3, every process materialises the whole model through
  ``from_pretrained`` in the training dtype (g x 2N per node, where DeepSpeed assumes 4 bytes per
  parameter and counts all GPUs, not those of a node); with ZeRO-3 (``zero.Init``) a process holds about
  one layer in fp32 (DeepSpeed's 4 x largest layer). The CPU figure is the larger of loading and
  training, times DeepSpeed's ``additional_buffer_factor`` of 1.5, its allowance for temporary copies and
  for pinned allocations (PyTorch rounds pinned host blocks up to a power of two), plus a per-process host
  overhead.
* fp32 training: 4-byte weights and gradients and Adam's 8 bytes; an fp32 master copy only where DeepSpeed
  still clones one (ZeRO-2, and offloaded partitions), and no fp32 gradient copy on the GPU.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models"), 34 s b h + 5 a s^2 b bytes per layer in 16 bit with a 4h feed-forward. That count is redone
here tensor by tensor for the layers transformers actually runs, because they differ from a fused
implementation: the feed-forward width is d_ff, T5's attention width is heads x d_kv, T5's RMSNorm keeps an
fp32 copy of its input, the FlanT5 feed-forward is gated (two projections), ``gelu_new`` is written as
Python operations that keep four tensors of the feed-forward width, and under SDPA (transformers'
default attention) the s^2 attention probabilities are not stored: the kernel keeps its output, an fp32
log-sum-exp and the additive mask (per head for T5, whose position bias is the mask). Without
checkpointing the training forward also fills a KV cache (the configs say ``use_cache``), which under SDPA
costs GPT-2 a copy of K and V per layer. The test suite checks this count against the tensors autograd
saves on CPU (within 1% for small T5 and GPT-2 models, 2% for Llama, Qwen2 and Qwen3). T5 runs its encoder
layers over the source tokens and its decoder layers (self-attention over the target, cross-attention onto
the source) over the target tokens; GPT-2 and Llama-like models run all layers over source + target.
A Llama-like layer keeps each RMSNorm's fp32 copy of its input and the normalised tensor (6 bytes per element
in bf16; Qwen3's per-head Q/K norms too), the projections' inputs, Q after RoPE, K and V (copied to every
query head when 1 < num_key_value_heads < heads, as transformers does for a padded batch; the KV cache then
keeps its own K and V), the SDPA output, log-sum-exp and mask as GPT-2 does, and four tensors of the
feed-forward width (SiLU's input and output, the up projection, down's input); RoPE keeps only cos and sin.
The logits cost b x s x vocab x (2 + 4 + 4 + 4) bytes at the start of the backward pass: the model's 16-bit
logits, the fp32 log-probabilities the loss keeps, their gradient and the gradient of the log-softmax input
(a vocabulary of 152k makes this the largest activation of a Qwen student). With gradient checkpointing
only each layer's input (2 b s h bytes) is kept, plus one layer recomputed in the backward pass.

Not modelled: the backward pass's own activation gradients (a layer's worth at a time), NCCL's and the
CUDA context's memory (the fixed GPU_RUNTIME_OVERHEAD below stands for them) and allocator fragmentation.
Gemma's RMSNorm also keeps its fp32 output (2 more bytes per element and norm in bf16): a tiny Gemma's
activations measured 11% above this count; its parameters, and Gemma 2/3's four norms per layer, are exact.
Treat the figures as estimates to plan hardware with, and keep 10-20% headroom.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cotdistill.ds_config import zero_auto_size
from cotdistill.errors import ConfigError

GIB = 2**30

# Shipped configs (src/cotdistill/model_configs/<name>.json) and the hub ids that map to them, offline. The
# Llama/Qwen/SmolLM2 files carry the published config.json values of the base checkpoints (hub ids below).
SHIPPED_CONFIGS: dict[str, tuple[str, ...]] = {
    "flan-t5-small": ("google/flan-t5-small",),
    "flan-t5-base": ("google/flan-t5-base",),
    "flan-t5-large": ("google/flan-t5-large",),
    "flan-t5-xl": ("google/flan-t5-xl",),
    "flan-t5-xxl": ("google/flan-t5-xxl",),
    "gpt2": ("openai-community/gpt2",),
    "gpt2-medium": ("openai-community/gpt2-medium",),
    "gpt2-large": ("openai-community/gpt2-large",),
    "gpt2-xl": ("openai-community/gpt2-xl",),
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B",),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B",),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B",),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B",),
    "qwen3-1.7b": ("Qwen/Qwen3-1.7B",),
    "qwen3-4b": ("Qwen/Qwen3-4B",),
    "qwen3-8b": ("Qwen/Qwen3-8B",),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B",),
    "llama-3.2-3b": ("meta-llama/Llama-3.2-3B",),
    "smollm2-360m": ("HuggingFaceTB/SmolLM2-360M",),
    "smollm2-1.7b": ("HuggingFaceTB/SmolLM2-1.7B",),
}

DEFAULT_MICRO_BATCH = 8
DEFAULT_SOURCE_TOKENS = 256
DEFAULT_TARGET_TOKENS = 192
DEFAULT_PRECISION = "bf16"
PRECISIONS = ("bf16", "fp16", "fp32")

# Per GPU process, outside PyTorch's tensors: CUDA context and loaded kernels (~0.5 GiB on an H100),
# NCCL communicator buffers and cuBLAS workspaces (~0.5 GiB), caching-allocator slack (~0.5 GiB).
GPU_RUNTIME_OVERHEAD = int(1.5 * GIB)
# Per process in host memory: Python, torch/CUDA libraries, DeepSpeed, the tokenized training set.
HOST_PROCESS_OVERHEAD = 3 * GIB
# DeepSpeed's estimators multiply host memory by this ("additional_buffer_factor").
CPU_BUFFER_FACTOR = 1.5

# ZeRO settings of the templates in ds_configs/ (and the "auto" rules of ds_config.resolve_ds_config).
ZERO2_REDUCE_BUCKET = 200_000_000
ZERO3_SUB_GROUP = 1_000_000_000  # DeepSpeed's default (zero3*.json)
NVME_SUB_GROUP = 100_000_000  # zero3_nvme.json
NVME_PARAM_BUFFERS = 8 * 100_000_000  # zero3_nvme.json: buffer_count x buffer_size
NVME_OPTIMIZER_BUFFERS = 4

SETTINGS: tuple[tuple[int, str], ...] = ((2, "none"), (2, "cpu"), (2, "nvme"), (3, "none"), (3, "cpu"), (3, "nvme"))
# Preference among settings that fit the same GPUs: no offload first (ZeRO-2 communicates least), NVMe last.
CHEAPEST_FIRST: tuple[tuple[int, str], ...] = ((2, "none"), (3, "none"), (2, "cpu"), (3, "cpu"), (3, "nvme"))


# ---------------------------------------------------------------------------------------------------------
# The model


def shipped_names() -> list[str]:
    return list(SHIPPED_CONFIGS)


def _shipped_name(model: str) -> str | None:
    """Case-insensitive, as people write ``Qwen2.5-0.5B`` and ``qwen2.5-0.5b`` for the same model."""
    wanted = model.lower()
    for name, aliases in SHIPPED_CONFIGS.items():
        if wanted == name or wanted in (alias.lower() for alias in aliases):
            return name
    return None


def _config_from_dict(values: dict[str, Any], where: str) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = values.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"{where}: model_type {model_type!r} is not a model type transformers knows")
    return CONFIG_MAPPING[model_type].from_dict(values)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read a model config from {path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a model config must be a JSON object")
    return values


def resolve_model_config(model: str) -> Any:
    """The transformers config of ``model``: a folder, a config .json, a shipped name or a hub id.

    Shipped names and their hub ids (``flan-t5-xxl``, ``google/flan-t5-xxl``, ``gpt2-large``) resolve offline,
    so the planner runs on a login node without a hub cache; other hub ids go to ``AutoConfig`` (network).
    """
    model = model.strip()
    listing = ", ".join(shipped_names())
    if not model:
        raise ConfigError(f"no model given; use a folder, a config .json, a hub id or one of: {listing}")
    path = Path(model).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if config_file.is_file():  # a local folder or file wins over a hub id, as in transformers
        config = _config_from_dict(_read_json(config_file), str(config_file))
        config.name_or_path = str(path)
        return config
    name = _shipped_name(model)
    if name is not None:
        text = (resources.files("cotdistill") / "model_configs" / f"{name}.json").read_text(encoding="utf-8")
        config = _config_from_dict(json.loads(text), f"shipped config {name}")
        config.name_or_path = name
        return config
    if path.is_dir():
        raise ConfigError(f"{path} has no config.json; give a model folder, a config .json, a hub id or one "
                          f"of: {listing}")
    looks_like_path = model.endswith(".json") or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_like_path:
        raise ConfigError(f"model config not found: {model} (shipped configs: {listing})")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise ConfigError(f"unknown model {model!r}: not a shipped config ({listing}), a folder, a config "
                          f".json, or a hub id that can be read ({err.__class__.__name__})") from None
    config.name_or_path = model
    return config


@dataclass(frozen=True)
class ModelFacts:
    """What the memory formulas need from a model: sizes, shapes, and how transformers runs its layers."""

    name: str
    architecture: str
    model_type: str
    seq2seq: bool
    total_params: int
    largest_param: tuple[str, int]
    largest_layer: tuple[str, int]
    embedding_params: int
    lm_head_params: int  # 0: tied to the input embedding
    persistent_params: int  # below ZeRO-3's persistence threshold (10 x hidden): kept whole on every GPU
    hidden: int
    heads: int
    head_dim: int
    kv_heads: int  # grouped-query attention: K and V have kv_heads x head_dim (= heads for T5 and GPT-2)
    ffn: int
    gated_ffn: bool
    ffn_inner_dropout: bool  # T5 drops out inside the feed-forward, GPT-2 does not
    activation: str
    vocab: int
    encoder_layers: int
    decoder_layers: int
    attention_dropout: float
    residual_dropout: float
    attention: str  # transformers' attention implementation: sdpa | eager | ...
    rms_norm: bool  # RMSNorm (fp32 statistics) rather than LayerNorm: T5 and Llama-like blocks
    fused_qkv: bool  # one projection makes Q, K and V (GPT-2's c_attn)
    use_cache: bool  # the forward fills a KV cache when not checkpointing (the config's use_cache)
    max_positions: int | None
    block: str = "gpt2"  # the layer layout the formulas follow: t5 | gpt2 | llama (see BLOCKS)
    qk_norm: bool = False  # Qwen3: an RMSNorm over each head of Q and K before RoPE
    qkv_bias: bool = False  # Q, K and V projections have biases (Qwen2; GPT-2's c_attn)
    out_bias: bool = False  # the attention output projection has a bias (GPT-2; Llama's attention_bias)
    mlp_bias: bool = False  # the feed-forward projections have biases (GPT-2; Llama's mlp_bias)
    positions: int = 0  # learned absolute position embeddings (GPT-2's wpe); 0 for RoPE and T5's buckets
    layer_norms: int = 2  # norms per (decoder self-attention) layer: 4 in Gemma 2/3 (before and after each sub-layer)
    relative_buckets: int = 0  # T5's relative attention buckets (a heads x buckets table per stack)

    @property
    def kv_groups(self) -> int:
        """Query heads per K/V head (1: multi-head attention)."""
        return self.heads // self.kv_heads


# The layer layouts the planner and cotdistill.flops know. "llama" is any decoder-only model with RMSNorm,
# RoPE, separate Q/K/V projections with num_key_value_heads (GQA) and a gated feed-forward of three matrices
# (gate, up, down): Llama, SmolLM2, Mistral, Qwen2/Qwen2.5, Qwen3 (plus its per-head Q/K norms), Gemma-like.
BLOCKS = ("t5", "gpt2", "llama")


def is_llama_like(config: Any) -> bool:
    """A decoder-only config with grouped-query attention and a gated MLP, keyed on standard attributes (the
    same test as ``cotdistill.flops``, so both count the same models this way)."""
    from cotdistill.flops import is_gated_decoder

    return is_gated_decoder(config)


def _llama_architecture(config: Any) -> dict[str, Any]:
    """Shapes of a Llama-like config: GQA, gated feed-forward, RMSNorm, RoPE, no dropout but attention's."""
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    return {
        "hidden": hidden, "heads": heads, "head_dim": int(getattr(config, "head_dim", None) or hidden // heads),
        "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads), "ffn": int(config.intermediate_size),
        "gated_ffn": True, "ffn_inner_dropout": False,
        "activation": str(getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")),
        "encoder_layers": 0, "decoder_layers": int(config.num_hidden_layers),
        "attention_dropout": float(getattr(config, "attention_dropout", 0.0) or 0.0), "residual_dropout": 0.0,
        "rms_norm": True, "fused_qkv": False, "use_cache": bool(getattr(config, "use_cache", False)),
        "max_positions": getattr(config, "max_position_embeddings", None), "block": "llama",
    }


def _architecture(config: Any) -> dict[str, Any]:
    """Shapes under the names the formulas use, for T5-like, GPT-2-like and Llama-like configs."""
    if is_llama_like(config):
        return _llama_architecture(config)
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    t5_like = hasattr(config, "d_ff")
    if t5_like:
        encoder_layers = int(config.num_layers)
        decoder_layers = int(getattr(config, "num_decoder_layers", None) or encoder_layers)
        ffn, gated = int(config.d_ff), bool(getattr(config, "is_gated_act", False))
        activation = str(getattr(config, "dense_act_fn", "relu"))
        head_dim = int(getattr(config, "d_kv", hidden // heads))
        attention_dropout = residual_dropout = float(getattr(config, "dropout_rate", 0.0))
    else:
        encoder_layers, decoder_layers = 0, int(config.num_hidden_layers)
        ffn = int(getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * hidden)
        gated = False
        activation = str(getattr(config, "activation_function", None) or getattr(config, "hidden_act", "gelu"))
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        attention_dropout = float(getattr(config, "attn_pdrop", 0.0) or 0.0)
        residual_dropout = float(getattr(config, "resid_pdrop", 0.0) or 0.0)
    if config.is_encoder_decoder and not t5_like:
        raise ConfigError(f"{config.model_type}: only T5-like encoder-decoders and decoder-only models are planned")
    return {
        "hidden": hidden, "heads": heads, "head_dim": head_dim, "kv_heads": heads, "ffn": ffn, "gated_ffn": gated,
        "ffn_inner_dropout": t5_like, "activation": activation, "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers, "attention_dropout": attention_dropout,
        "residual_dropout": residual_dropout, "rms_norm": t5_like, "fused_qkv": not t5_like,
        "use_cache": bool(getattr(config, "use_cache", False)),
        "max_positions": getattr(config, "n_positions", None) if not config.is_encoder_decoder else None,
        "block": "t5" if t5_like else "gpt2",
        "relative_buckets": int(getattr(config, "relative_attention_num_buckets", 0)) if t5_like else 0,
        "positions": 0 if t5_like else int(getattr(config, "n_positions", 0) or 0),
        "qkv_bias": not t5_like, "out_bias": not t5_like, "mlp_bias": not t5_like,
    }


def _has_bias(model: Any, suffix: str) -> bool:
    """Whether the first module named ``...suffix`` has a bias (how a built model says what its config means)."""
    module = next((m for name, m in model.named_modules() if name.endswith(suffix)), None)
    return module is not None and getattr(module, "bias", None) is not None


def _llama_extras(model: Any) -> dict[str, Any]:
    """What a Llama-like config spells differently per family, read off the built model."""
    layer = next((m for name, m in model.named_modules() if name.endswith("layers.0")), None)
    norms = sum("Norm" in type(child).__name__ for child in layer.children()) if layer is not None else 2
    return {"qk_norm": any(name.endswith("self_attn.q_norm") for name, _ in model.named_modules()),
            "layer_norms": norms,
            "qkv_bias": _has_bias(model, "self_attn.q_proj"), "out_bias": _has_bias(model, "self_attn.o_proj"),
            "mlp_bias": _has_bias(model, "mlp.gate_proj")}


def count_parameters(config: Any) -> ModelFacts:
    """Build the model on the meta device (no memory, no weights) and measure what ZeRO will partition."""
    import torch

    from cotdistill.modeling import build_from_config

    try:
        with torch.device("meta"):
            model = build_from_config(config, "seq2seq" if config.is_encoder_decoder else "causal")
    except ValueError as err:
        raise ConfigError(f"{config.model_type}: cannot build it as a language model: {err}") from None
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    shape = _architecture(config)
    if shape["block"] == "llama":
        shape.update(_llama_extras(model))
    named = dict(model.named_parameters())  # one entry per distinct parameter (tied ones once)
    largest_param = max(((n, p.numel()) for n, p in named.items()), key=lambda item: item[1])
    layers = ((name or "model", sum(p.numel() for p in module.parameters(recurse=False)))
              for name, module in model.named_modules())
    largest_layer = max(layers, key=lambda item: item[1])
    tied = head is None or head.weight is embedding.weight
    return ModelFacts(
        name=str(getattr(config, "name_or_path", "") or config.model_type),
        architecture=type(model).__name__,
        model_type=str(config.model_type),
        seq2seq=bool(config.is_encoder_decoder),
        total_params=sum(p.numel() for p in named.values()),
        largest_param=largest_param,
        largest_layer=largest_layer,
        embedding_params=embedding.weight.numel(),
        lm_head_params=0 if tied else head.weight.numel(),
        persistent_params=sum(p.numel() for p in named.values() if p.numel() < 10 * shape["hidden"]),
        vocab=int(config.vocab_size),
        attention=str(getattr(model.config, "_attn_implementation", None) or "eager"),
        **shape,
    )


def layer_parameters(facts: ModelFacts, cross_attention: bool = False) -> int:
    """Parameters of one transformer layer from the planner's shape alone (no model built).

    Q and O are heads x head_dim wide, K and V kv_heads x head_dim (grouped-query attention); the feed-forward
    has two matrices, three when gated (SwiGLU: gate, up, down). It is what the plan's formulas assume a layer
    is, so tests/test_memory_plan.py checks it against the built model of every shipped config.
    """
    h, q, kv, f = facts.hidden, facts.heads * facts.head_dim, facts.kv_heads * facts.head_dim, facts.ffn
    attention = h * (q + 2 * kv) + q * h + facts.qkv_bias * (q + 2 * kv) + facts.out_bias * h
    attention += 2 * facts.head_dim * facts.qk_norm
    ffn = (3 if facts.gated_ffn else 2) * h * f + facts.mlp_bias * ((2 if facts.gated_ffn else 1) * f + h)
    norm = h if facts.rms_norm else 2 * h  # RMSNorm has a scale, LayerNorm a scale and a shift
    if cross_attention:  # T5's decoder layer: a second attention over the encoder output, with its own norm
        return 2 * attention + ffn + 3 * norm
    return attention + ffn + facts.layer_norms * norm


def shape_parameters(facts: ModelFacts) -> int:
    """All parameters from the shape: layers, embedding (and LM head unless tied), positions, final norms."""
    h, norm = facts.hidden, facts.hidden if facts.rms_norm else 2 * facts.hidden
    embedding = facts.vocab * h
    head = 0 if facts.lm_head_params == 0 else facts.vocab * h
    total = embedding + head + facts.positions * h
    total += facts.encoder_layers * layer_parameters(facts) + (facts.encoder_layers > 0) * norm
    total += facts.decoder_layers * layer_parameters(facts, cross_attention=facts.seq2seq) + norm
    stacks = 2 if facts.seq2seq else 1
    return total + stacks * facts.relative_buckets * facts.heads


# ---------------------------------------------------------------------------------------------------------
# Activations


@dataclass(frozen=True)
class Workload:
    """One rank's micro-batch: what sets the activation memory."""

    micro_batch_size: int = DEFAULT_MICRO_BATCH
    source_tokens: int = DEFAULT_SOURCE_TOKENS
    target_tokens: int = DEFAULT_TARGET_TOKENS
    precision: str = DEFAULT_PRECISION
    gradient_checkpointing: bool = False

    @property
    def width(self) -> int:
        """Bytes per weight, gradient and activation element."""
        return 4 if self.precision == "fp32" else 2


@dataclass(frozen=True)
class Activations:
    """Bytes one GPU keeps for the backward pass of one micro-batch."""

    layers: int  # all transformer layers, no checkpointing
    layer_inputs: int  # what gradient checkpointing keeps of them: each layer's input
    recomputed_layer: int  # the largest layer, recomputed in the backward pass under checkpointing
    other: int  # embeddings, final norms, LM-head input: never checkpointed
    logits: int  # the loss's peak: logits, fp32 log-probs, their gradients
    logits_held: int  # the part still alive when the layers' backward starts (the model's logits)

    @property
    def full(self) -> int:
        return self.layers + self.other + self.logits

    @property
    def checkpointed(self) -> int:
        """Layer inputs, plus the larger of the loss peak and one layer recomputed in the backward pass."""
        return self.layer_inputs + self.other + max(self.logits, self.logits_held + self.recomputed_layer)


# CUDA's fused dropout keeps a 1-byte mask per element (on CPU PyTorch keeps one in the input's dtype).
DROPOUT_MASK_BYTES = 1

# Tensors of the feed-forward width that an activation function keeps for its backward pass.
# transformers' gelu_new is Python arithmetic: it keeps its input, tanh's output and both factors of the
# final product; the C activations keep one tensor.
_ACTIVATION_SAVES = {"gelu_new": 4}


def _norm(facts: ModelFacts, w: int, tokens: int, width: int | None = None) -> int:
    """A pre-norm: LayerNorm keeps its input; T5's RMSNorm also an fp32 copy and the normalised tensor.

    Llama's RMSNorm casts its input to fp32 first and keeps only that copy and the normalised tensor the
    scale multiplies (``width``: a narrower norm, Qwen3's per-head Q/K norms).
    """
    elements = (facts.hidden if width is None else width) * tokens
    if facts.block == "llama":
        return (4 + w) * elements
    if facts.rms_norm:
        return (2 * w + (4 if w < 4 else 0)) * elements
    return w * elements


def _llama_attention(facts: ModelFacts, w: int, batch: int, seq: int, cache: bool) -> int:
    """One Llama-like attention sub-layer: RMSNorm, Q/K/V of GQA widths, RoPE, the attention core, O.

    RoPE (``q * cos + rotate_half(q) * sin``) keeps only cos and sin, which need no gradient (counted once
    per model). With 1 < kv_heads < heads, transformers copies K and V to every query head (``repeat_kv``)
    whenever the batch has a padding mask (the kernel takes ``enable_gqa`` only on CUDA without a mask), and
    the kernel keeps those copies; with one K/V head SDPA's copy is a view, and with as many K/V heads as query
    heads nothing is copied. The KV cache (``cache``) then holds its own K and V at the K/V width. Eager
    attention keeps Q, K, V, the fp32 softmax and its 16-bit copy (the dropout mask instead, with dropout).
    """
    tokens = batch * seq
    q, kv = facts.heads * facts.head_dim, facts.kv_heads * facts.head_dim
    total = _norm(facts, w, tokens) + w * facts.hidden * tokens  # the norm, the projections' input
    if facts.qk_norm:  # Qwen3: RMSNorm over each head of Q and K (their outputs go on to RoPE)
        total += _norm(facts, w, tokens, q) + _norm(facts, w, tokens, kv)
    repeated = facts.kv_heads < facts.heads and (facts.kv_heads > 1 or facts.attention == "eager")
    total += w * q * tokens  # Q after RoPE, kept by the kernel
    total += 2 * w * (q if repeated else kv) * tokens  # K after RoPE and V (or their per-head copies)
    if cache and repeated:
        total += 2 * w * kv * tokens
    scores = batch * facts.heads * seq * seq
    if facts.attention == "eager":
        copy = w if w < 4 else 0  # the 16-bit copy of the fp32 softmax (none in fp32)
        total += (4 + (DROPOUT_MASK_BYTES if facts.attention_dropout > 0 else copy)) * scores
    else:
        total += 4 * facts.heads * tokens + w * batch * seq * seq  # log-sum-exp, the mask (broadcast over heads)
    return total + w * q * tokens  # the attention output: the output projection's input


def _llama_feed_forward(facts: ModelFacts, w: int, tokens: int) -> int:
    """A gated feed-forward (SwiGLU): the norm, the input, the activation's tensors, both branches, down's input;
    with Gemma 2/3's norms after each sub-layer, those two norms too (counted as Llama's RMSNorm)."""
    saves = _ACTIVATION_SAVES.get(facts.activation, 1)
    post_norms = max(facts.layer_norms - 2, 0) * _norm(facts, w, tokens)
    return _norm(facts, w, tokens) + w * facts.hidden * tokens + (saves + 3) * w * facts.ffn * tokens + post_norms


def _attention(facts: ModelFacts, w: int, batch: int, queries: int, keys: int, cache: bool) -> int:
    """One attention sub-layer: norm, projections, the attention core, the residual dropout mask.

    ``cache``: the forward also fills a KV cache (``use_cache``, on unless checkpointing). Under SDPA GPT-2's
    fused c_attn output then stays whole for Q while the cache keeps concatenated copies of K and V; T5's
    separate K and V projections are simply replaced by their copies, and eager attention copies Q, K and V
    for its batched matmuls either way.
    """
    h, inner, heads = facts.hidden, facts.heads * facts.head_dim, facts.heads
    tq, tk = batch * queries, batch * keys
    mask = DROPOUT_MASK_BYTES
    dropout, residual = int(facts.attention_dropout > 0), int(facts.residual_dropout > 0)
    total = _norm(facts, w, tq) + w * h * tq  # the norm, the projections' input
    total += w * inner * (tq + 2 * tk)  # Q, K, V (cross-attention: K and V of the encoder output)
    if cache and facts.fused_qkv and facts.attention != "eager":
        total += 2 * w * inner * tk
    scores = batch * heads * queries * keys
    if facts.attention == "eager":
        total += (w + dropout * (mask + w)) * scores  # probabilities, dropout mask and output (Korthikanti's 5as^2b)
    else:
        # SDPA keeps an fp32 log-sum-exp per query and head and the additive mask in the activation dtype:
        # per head for T5 (its relative position bias), broadcast over heads for GPT-2. Its output, laid out
        # as (batch, tokens, heads, dim), is the output projection's input below.
        mask_heads = heads if facts.block == "t5" else 1
        total += 4 * heads * tq + w * batch * mask_heads * queries * keys
    total += w * inner * tq  # output projection input
    total += residual * mask * h * tq  # residual dropout mask
    return total


def _feed_forward(facts: ModelFacts, w: int, tokens: int) -> int:
    """One feed-forward sub-layer: norm, first projection input, the d_ff-wide tensors, dropout masks."""
    h, ffn = facts.hidden, facts.ffn
    dropout = int(facts.residual_dropout > 0)
    saves = _ACTIVATION_SAVES.get(facts.activation, 1)
    total = _norm(facts, w, tokens) + w * h * tokens
    # gated: the activation's tensors, its output and the linear branch (kept by the product), wo's input
    wide = saves + 3 if facts.gated_ffn else saves + 1
    total += wide * w * ffn * tokens
    if facts.ffn_inner_dropout:
        total += dropout * DROPOUT_MASK_BYTES * ffn * tokens
    total += dropout * DROPOUT_MASK_BYTES * h * tokens
    return total


def estimate_activations(facts: ModelFacts, workload: Workload) -> Activations:
    """Activation bytes per GPU for one micro-batch (see the module docstring for the sources)."""
    w, b, h = workload.width, workload.micro_batch_size, facts.hidden
    embed_mask = int(facts.residual_dropout > 0) * DROPOUT_MASK_BYTES
    if facts.seq2seq:
        src, tgt = workload.source_tokens, workload.target_tokens
        ts, tt = b * src, b * tgt
        encoder = _attention(facts, w, b, src, src, cache=False) + _feed_forward(facts, w, ts)

        def decoder(cache: bool) -> int:
            return (_attention(facts, w, b, tgt, tgt, cache) + _attention(facts, w, b, tgt, src, cache)
                    + _feed_forward(facts, w, tt))

        layers = facts.encoder_layers * encoder + facts.decoder_layers * decoder(facts.use_cache)
        recomputed = max(encoder, decoder(False))
        inputs = w * h * (facts.encoder_layers * ts + facts.decoder_layers * tt)
        # per stack: embedding dropout mask; final norm, its dropout mask and output (encoder output / head input)
        other = sum(embed_mask * h * t + _norm(facts, w, t) + embed_mask * h * t + w * h * t for t in (ts, tt))
        logit_positions = tt
    else:
        seq = workload.source_tokens + workload.target_tokens
        tokens = b * seq

        def decoder(cache: bool) -> int:
            if facts.block == "llama":
                return _llama_attention(facts, w, b, seq, cache) + _llama_feed_forward(facts, w, tokens)
            return _attention(facts, w, b, seq, seq, cache) + _feed_forward(facts, w, tokens)

        layers = facts.decoder_layers * decoder(facts.use_cache)
        recomputed = decoder(False)
        inputs = w * h * facts.decoder_layers * tokens
        other = embed_mask * h * tokens + _norm(facts, w, tokens) + w * h * tokens  # final norm, head input
        if facts.block == "llama":  # RoPE's cos and sin (per row: position ids restart per example)
            other += 2 * w * facts.head_dim * tokens
        logit_positions = tokens
    logits_elements = logit_positions * facts.vocab
    return Activations(layers=layers, layer_inputs=inputs, recomputed_layer=recomputed, other=other,
                       logits=logits_elements * (w + 12), logits_held=logits_elements * w)


# ---------------------------------------------------------------------------------------------------------
# Model states and the plan


@dataclass(frozen=True)
class SettingRow:
    """Memory of one ZeRO stage and offload device on the planned machines."""

    stage: int
    offload: str  # none | cpu | nvme
    supported: bool
    gpu_model_states: int = 0  # weights, gradients, optimizer state and ZeRO buffers on one GPU
    gpu_bytes: int = 0  # peak per GPU, activations kept
    gpu_bytes_checkpointing: int = 0  # peak per GPU with gradient checkpointing
    cpu_bytes_per_node: int = 0
    nvme_bytes_per_node: int = 0

    @property
    def label(self) -> str:
        return f"ZeRO-{self.stage}" + {"none": "", "cpu": " + CPU offload", "nvme": " + NVMe offload"}[self.offload]

    def gpu_for(self, gradient_checkpointing: bool) -> int:
        return self.gpu_bytes_checkpointing if gradient_checkpointing else self.gpu_bytes


def _model_states(facts: ModelFacts, workload: Workload, stage: int, offload: str, nodes: int,
                  gpus_per_node: int) -> tuple[int, int, int, int]:
    """(GPU resident bytes, GPU step-time transient, host bytes per node before overheads, NVMe per node)."""
    n_params, w = facts.total_params, workload.width
    gpus = nodes * gpus_per_node
    part = math.ceil(n_params / gpus)
    mixed = w < 4
    offloaded = offload != "none"
    # ZeRO-2 always clones an fp32 master partition; ZeRO-3 updates fp32 weights in place when not offloaded
    master = 4 if (mixed or offloaded or stage == 2) else 0
    adam = 8
    fp32_grad = 4 if (mixed or offloaded) else 0
    on_host = master + adam + fp32_grad + w  # an offloaded partition, per parameter
    if stage == 2:
        buckets = 2 * ZERO2_REDUCE_BUCKET * w
        load = gpus_per_node * w * n_params
        if offload == "none":
            gpu = w * n_params + (w + master + adam) * part + buckets
            return gpu, (fp32_grad if mixed else 0) * part, load, 0
        return w * n_params + buckets, 0, max(load, gpus_per_node * part * on_host), 0
    h = facts.hidden
    prefetch = zero_auto_size("stage3_prefetch_bucket_size", h, nvme_params=offload == "nvme")
    working = (2 * w * facts.largest_layer[1]
               + w * (prefetch + zero_auto_size("reduce_bucket_size", h))
               + 2 * w * facts.persistent_params)
    load = gpus_per_node * 4 * facts.largest_layer[1]
    if offload == "none":
        gpu = (2 * w + master + adam) * part + working
        return gpu, (fp32_grad if mixed else 0) * min(part, ZERO3_SUB_GROUP), load, 0
    if offload == "cpu":
        return working, 0, max(load, gpus_per_node * part * on_host), 0
    swap = NVME_PARAM_BUFFERS * w + NVME_OPTIMIZER_BUFFERS * 4 * min(part, NVME_SUB_GROUP)
    return working, 0, max(load, gpus_per_node * (swap + fp32_grad * part)), gpus_per_node * part * on_host


def setting_rows(facts: ModelFacts, workload: Workload, activations: Activations, nodes: int,
                 gpus_per_node: int) -> list[SettingRow]:
    """All ZeRO stage / offload combinations on ``nodes`` x ``gpus_per_node`` GPUs."""
    rows = []
    for stage, offload in SETTINGS:
        if stage == 2 and offload == "nvme":
            rows.append(SettingRow(stage, offload, supported=False))
            continue
        resident, transient, host, nvme = _model_states(facts, workload, stage, offload, nodes, gpus_per_node)
        base = resident + GPU_RUNTIME_OVERHEAD
        cpu = int(host * CPU_BUFFER_FACTOR) + gpus_per_node * HOST_PROCESS_OVERHEAD
        rows.append(SettingRow(stage, offload, True, gpu_model_states=resident,
                               gpu_bytes=base + max(activations.full, transient),
                               gpu_bytes_checkpointing=base + max(activations.checkpointed, transient),
                               cpu_bytes_per_node=cpu, nvme_bytes_per_node=nvme))
    return rows


@dataclass(frozen=True)
class MemoryPlan:
    """A model, a micro-batch, a machine layout and the memory of every ZeRO setting on it."""

    model: ModelFacts
    workload: Workload
    nodes: int
    gpus_per_node: int
    activations: Activations
    rows: list[SettingRow]
    recipe: str = ""
    recipe_setting: tuple[int, str] | None = None  # the recipe's deepspeed_config, when it could be read

    def row(self, stage: int, offload: str) -> SettingRow:
        return next(r for r in self.rows if (r.stage, r.offload) == (stage, offload))

    def relaid(self, nodes: int, gpus_per_node: int) -> MemoryPlan:
        """The same model and micro-batch on another machine layout (no model is rebuilt)."""
        rows = setting_rows(self.model, self.workload, self.activations, nodes, gpus_per_node)
        return dataclasses.replace(self, nodes=nodes, gpus_per_node=gpus_per_node, rows=rows)


def _tiny_recipe_config(model_config: Any) -> Any:
    """The config ``model.make_tiny`` would build (vocabulary at its cap), for recipes whose model is not made."""
    from transformers import GPT2Config, T5Config

    tiny = model_config.tiny
    if model_config.make_tiny not in ("t5", "gpt2"):  # Llama, Qwen2, Qwen3...: the family registry's own config
        from cotdistill.families import family_named

        config = family_named(model_config.make_tiny).tiny_config(tiny, None)
    elif model_config.make_tiny == "t5":
        config = T5Config(vocab_size=tiny.vocab_size, d_model=tiny.d_model, d_kv=tiny.d_model // tiny.num_heads,
                          d_ff=tiny.d_ff, num_layers=tiny.num_layers, num_decoder_layers=tiny.num_layers,
                          num_heads=tiny.num_heads, feed_forward_proj="gated-gelu", dropout_rate=tiny.dropout)
    else:
        config = GPT2Config(vocab_size=tiny.vocab_size, n_positions=tiny.n_positions, n_embd=tiny.d_model,
                            n_layer=tiny.num_layers, n_head=tiny.num_heads, n_inner=tiny.d_ff,
                            resid_pdrop=tiny.dropout, embd_pdrop=tiny.dropout, attn_pdrop=tiny.dropout)
    config.name_or_path = f"tiny {model_config.make_tiny} ({model_config.name_or_path}, not built yet)"
    return config


def zero_setting(ds_config_path: str | Path, recipe_path: str | Path | None = None) -> tuple[int, str] | None:
    """(stage, offload) of a DeepSpeed JSON template, looked up from the working folder or the recipe's."""
    from cotdistill.ds_config import offload_device, read_template

    candidates = [Path(ds_config_path)]
    if recipe_path is not None and not Path(ds_config_path).is_absolute():
        candidates += [parent / ds_config_path for parent in Path(recipe_path).resolve().parents]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return None
    zero = read_template(found).get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    devices = {offload_device(zero, k) for k in ("offload_param", "offload_optimizer")}
    offload = "nvme" if "nvme" in devices else "cpu" if "cpu" in devices else "none"
    return (stage, offload) if (stage, offload) in SETTINGS else None


def plan(
    model: str = "",
    nodes: int = 1,
    gpus_per_node: int = 1,
    recipe: str | Path | None = None,
    micro_batch_size: int | None = None,
    source_tokens: int | None = None,
    target_tokens: int | None = None,
    precision: str | None = None,
    gradient_checkpointing: bool | None = None,
) -> MemoryPlan:
    """Plan memory for ``model`` (or a recipe's model and micro-batch; explicit arguments win)."""
    config = None
    recipe_setting = None
    values: dict[str, Any] = {"micro_batch_size": DEFAULT_MICRO_BATCH, "source_tokens": DEFAULT_SOURCE_TOKENS,
                              "target_tokens": DEFAULT_TARGET_TOKENS, "precision": DEFAULT_PRECISION,
                              "gradient_checkpointing": False}
    if recipe:
        from cotdistill.config import load_config

        run = load_config(recipe, [])
        values.update(micro_batch_size=run.train.micro_batch_size, source_tokens=run.data.max_source_tokens,
                      target_tokens=run.data.max_target_tokens, precision=run.train.precision,
                      gradient_checkpointing=run.model.gradient_checkpointing)
        recipe_setting = zero_setting(run.deepspeed_config, recipe)
        if not model:
            model = run.model.name_or_path
            if run.model.make_tiny and not Path(model).exists():
                config = _tiny_recipe_config(run.model)
    explicit = {"micro_batch_size": micro_batch_size, "source_tokens": source_tokens,
                "target_tokens": target_tokens, "precision": precision,
                "gradient_checkpointing": gradient_checkpointing}
    values.update({k: v for k, v in explicit.items() if v is not None})
    workload = Workload(**values)
    _check(workload, nodes, gpus_per_node)
    facts = count_parameters(config if config is not None else resolve_model_config(model))
    activations = estimate_activations(facts, workload)
    return MemoryPlan(model=facts, workload=workload, nodes=nodes, gpus_per_node=gpus_per_node,
                      activations=activations, rows=setting_rows(facts, workload, activations, nodes, gpus_per_node),
                      recipe=str(recipe or ""), recipe_setting=recipe_setting)


def _check(workload: Workload, nodes: int, gpus_per_node: int) -> None:
    for name, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node),
                        ("micro_batch_size", workload.micro_batch_size), ("source_tokens", workload.source_tokens),
                        ("target_tokens", workload.target_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if workload.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {workload.precision!r}")


# ---------------------------------------------------------------------------------------------------------
# Reading a plan


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def describe_layers(facts: ModelFacts) -> str:
    """The layers in a few words: count and width, query heads (K/V heads under GQA) of their size, feed-forward."""
    layers = f"{facts.encoder_layers}+{facts.decoder_layers}" if facts.seq2seq else str(facts.decoder_layers)
    heads = str(facts.heads) + (f"/{facts.kv_heads} KV" if facts.kv_heads < facts.heads else "")
    return (f"{layers} x d {facts.hidden}, {heads} heads of {facts.head_dim}, "
            f"FFN {'gated ' if facts.gated_ffn else ''}{facts.ffn}")


def render_plan(result: MemoryPlan, gpu_gib: float = 80, ram_gib: float | None = None) -> str:
    """The plan as a few lines of context, a markdown table in GiB (1 decimal), the recommendation for the
    machines asked for and the fewest GPUs that fit."""
    from cotdistill.report import markdown_table

    facts, work, acts = result.model, result.workload, result.activations
    head = "tied to the input embedding" if facts.lm_head_params == 0 else f"LM head {_count(facts.lm_head_params)}"
    tokens = (f"{work.source_tokens} source -> {work.target_tokens} target tokens" if facts.seq2seq
              else f"{work.source_tokens} + {work.target_tokens} = {work.source_tokens + work.target_tokens} tokens")
    lines = [
        f"model: {facts.name} ({facts.architecture}, {facts.attention} attention)",
        f"parameters: {facts.total_params:,} ({_count(facts.total_params)}); embedding "
        f"{_count(facts.embedding_params)}, {head}; largest layer {facts.largest_layer[0]} "
        f"{_count(facts.largest_layer[1])}",
        f"layers: {describe_layers(facts)} ({facts.activation}), vocabulary {facts.vocab:,}",
        f"per GPU: micro-batch {work.micro_batch_size} x {tokens}, {work.precision}, gradient checkpointing "
        f"{'on' if work.gradient_checkpointing else 'off'}; {result.nodes} node(s) x {result.gpus_per_node} GPU(s)",
        f"activations per GPU: {_gib(acts.full)} GiB, {_gib(acts.checkpointed)} GiB with gradient checkpointing "
        f"(logits and loss {_gib(acts.logits)} GiB of each)",
        f"runtime overhead: {_gib(GPU_RUNTIME_OVERHEAD)} GiB per GPU and {_gib(HOST_PROCESS_OVERHEAD)} GiB host "
        "memory per process (CUDA context, NCCL, allocator), included below",
    ]
    if facts.max_positions and work.source_tokens + work.target_tokens > facts.max_positions:
        lines.append(f"warning: {work.source_tokens + work.target_tokens} tokens exceed the model's "
                     f"{facts.max_positions} positions")
    rows = []
    for row in result.rows:
        label = row.label + (" (recipe)" if result.recipe_setting == (row.stage, row.offload) else "")
        if not row.supported:
            rows.append([label, "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        rows.append([label, _gib(row.gpu_model_states), _gib(row.gpu_bytes), _gib(row.gpu_bytes_checkpointing),
                     _gib(row.cpu_bytes_per_node), _gib(row.nvme_bytes_per_node) if row.offload == "nvme" else "-"])
    table = markdown_table(list(TABLE_HEADERS), rows)
    advice = [layout_line(result, gpu_gib, ram_gib), fewest_line(result, gpu_gib, ram_gib)]
    return "\n".join([*lines, "", table, "", *advice])


# Every memory column is in GiB (2^30 bytes), per GPU or per node as its header says.
TABLE_HEADERS = ("setting", "GPU model states (GiB per GPU)", "GPU peak (GiB per GPU)",
                 "GPU peak with checkpointing (GiB per GPU)", "CPU RAM (GiB per node)", "NVMe (GiB per node)")


def _layouts(max_gpus_per_node: int, max_nodes: int) -> list[tuple[int, int]]:
    """Machine layouts by GPU count: 1, 2, 4 ... GPUs on one node, then whole nodes."""
    single, g = [], 1
    while g < max_gpus_per_node:
        single.append((1, g))
        g *= 2
    return single + [(n, max_gpus_per_node) for n in range(1, max_nodes + 1)]


def fitting_row(layout: MemoryPlan, gpu_gib: float = 80, ram_gib: float | None = None) -> SettingRow | None:
    """The least-offloaded setting that fits ``layout``'s own machines (None: none fits)."""
    for setting in CHEAPEST_FIRST:
        row = layout.row(*setting)
        if row.gpu_for(layout.workload.gradient_checkpointing) > gpu_gib * GIB:
            continue
        if ram_gib is not None and row.cpu_bytes_per_node > ram_gib * GIB:
            continue
        return row
    return None


def _host_needs(row: SettingRow) -> str:
    """A setting's host memory per node, and its NVMe when it offloads there, in whole GiB."""
    needs = f"{math.ceil(row.cpu_bytes_per_node / GIB)} GiB RAM"
    return needs + (f" and {math.ceil(row.nvme_bytes_per_node / GIB)} GiB NVMe" if row.offload == "nvme" else "")


def layout_line(result: MemoryPlan, gpu_gib: float = 80, ram_gib: float | None = None) -> str:
    """The recommendation for the machines asked for (``nodes`` x ``gpus_per_node``), in one line, so the
    setting it names is the one the table shows for that GPU count."""
    gpus = result.nodes * result.gpus_per_node
    asked = (f"{result.nodes} node{'s' if result.nodes > 1 else ''} x {result.gpus_per_node} GPU"
             f"{'s' if result.gpus_per_node > 1 else ''} of {gpu_gib:g} GiB")
    asked += f" ({gpus} in all)" if gpus > 1 else ""
    row = fitting_row(result, gpu_gib, ram_gib)
    if row is None:
        ram = f" with {ram_gib:g} GiB RAM per node" if ram_gib is not None else ""
        return f"recommended on {asked}{ram}: nothing fits (see the next line)"
    peak = row.gpu_for(result.workload.gradient_checkpointing)
    return f"recommended on {asked}: {row.label} (peak {_gib(peak)} GiB per GPU; {_host_needs(row)} per node)"


def fewest_line(result: MemoryPlan, gpu_gib: float = 80, ram_gib: float | None = None) -> str:
    """The fewest GPUs that fit, on nodes of the asked ``gpus_per_node`` (8 when one GPU was asked for)."""
    per_node = result.gpus_per_node if result.gpus_per_node > 1 else 8
    return f"fewest that fit, nodes of {per_node} GPUs: {hardware_line(result, gpu_gib, ram_gib, per_node)}"


def hardware_line(result: MemoryPlan, gpu_gib: float = 80, ram_gib: float | None = None,
                  max_gpus_per_node: int = 8, max_nodes: int = 64) -> str:
    """The fewest GPUs of ``gpu_gib`` GiB that fit this plan, with its least-offloaded setting, in one line.

    Layouts grow 1, 2, 4 ... GPUs on one node, then whole nodes of ``max_gpus_per_node``; ``ram_gib`` (host
    memory per node) rules out settings that need more. Gradient checkpointing is as in the plan's workload.
    Example: "ZeRO-3 + CPU offload: 8 x 80 GiB GPUs, 1 node with 210 GiB RAM (peak 61.2 GiB per GPU)".
    """
    for nodes, per_node in _layouts(max_gpus_per_node, max_nodes):
        row = fitting_row(result.relaid(nodes, per_node), gpu_gib, ram_gib)
        if row is None:
            continue
        gpus, each = nodes * per_node, " each" if nodes > 1 else ""
        place = f"{nodes} node{'s' if nodes > 1 else ''} with {_host_needs(row)}"
        return (f"{row.label}: {gpus} x {gpu_gib:g} GiB GPU{'s' if gpus > 1 else ''}, {place}{each} "
                f"(peak {_gib(row.gpu_for(result.workload.gradient_checkpointing))} GiB per GPU)")
    limits = f"{gpu_gib:g} GiB GPUs" + (f" and {ram_gib:g} GiB RAM per node" if ram_gib is not None else "")
    return (f"does not fit {max_nodes} nodes x {max_gpus_per_node} {limits}: lower the micro-batch or the "
            "sequence lengths" + ("" if result.workload.gradient_checkpointing else ", or turn on gradient "
                                   "checkpointing"))


HARDWARE_COMMENT = "# Hardware (cotdistill plan-memory): "


def hardware_comment(recipe: str | Path) -> str:
    """The one-line hardware note a shipped recipe carries, as the planner computes it today."""
    result = plan(recipe=recipe)
    return HARDWARE_COMMENT + "; ".join(f"{gib} GiB GPUs: {hardware_line(result, gpu_gib=gib)}" for gib in (80, 40))
