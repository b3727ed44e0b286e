"""Packed causal micro-batches attended one example at a time, on any device.

A packed micro-batch is one row: its examples laid end to end, position ids restarting at each, and
``cu_seq_lens`` marking where each starts. The model's linear layers and LM head then see only real tokens
(no padding at all). Attention must stay inside each example. Transformers' own route for restarting
positions builds a block-diagonal mask over the whole row, so SDPA computes (row length)^2 scores, most of
them masked. This attention implementation instead re-pads queries, keys and values to [examples, longest
example] inside the attention call and runs causal SDPA there: attention costs what a padded batch's would,
everything else costs what the real tokens cost. On CPU that SDPA runs in fp32 even for bf16 models:
PyTorch's CPU flash-attention kernel took 1.61x longer forward and backward in bf16 than in fp32 at
tiny-gpt2's shape, 1.12x at gpt2-small's (`benchmarks/attention_kernels.py`, docs/BENCHMARKS.md), and fp32
is the more precise of the two.

`packed_forward()` marks a forward as packed. The model's mask steps then return the `PACKED` marker
instead of a mask, and the attention uses the ``cu_seq_lens_q/k`` the forward was given. Every other forward
(generation, evaluation) is plain SDPA, so a model switched to this implementation behaves as before
outside packed training. On CUDA in bf16/fp16 a causal LM's row skips the re-padding: one varlen
flash-attention call (flash-attn's ``flash_attn_varlen_func`` where installed, else PyTorch's
``torch.nn.attention.varlen.varlen_attn``) attends every example with no padding at all
(``train.packed_attention``: auto | varlen | repad). The kwargs are transformers' own varlen names (``cu_seq_lens_q/k``,
``max_length_q/k``), which reach the attention function through the model's ``**kwargs``; everything the
attention needs travels in its arguments, so gradient checkpointing's recomputation sees the same.

T5 (and mT5) students pack too: one encoder row of sources and one decoder row of targets. T5 hands the same
kwargs to both stacks, so ``_q`` names the decoder row and ``_k`` the encoder row (cross-attention's queries
and keys), and `use_packed_attention` tags each attention module with its role: encoder self-attention
(bidirectional, encoder row), decoder self-attention (causal, decoder row) or cross-attention (decoder
queries over their own example's encoder keys). T5's relative position bias depends only on key minus query
position, so with positions restarting at every example the bias of the longest example's block serves
every example: a pre-hook has T5 compute just that block instead of one over the whole row (measured: 80 ms
forward and backward per stack for a row of 800 tokens at t5-small's 8 heads, against 2-8 ms for one
100-token block).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F

from cotdistill.errors import ConfigError
from cotdistill.families import find_family, packable_seq2seq

NAME = "cotdistill_packed"


class _PackedMarker:
    """Stands in for the attention mask of a packed forward; the attention reads cu_seq_lens instead."""

    def __repr__(self) -> str:
        return "PACKED"


PACKED = _PackedMarker()
_PACKED_FORWARD: ContextVar[bool] = ContextVar("cotdistill_packed_forward", default=False)
_registered = False


@contextlib.contextmanager
def packed_forward() -> Iterator[None]:
    """Forwards inside this block are packed rows: their kwargs must carry `packed_kwargs`."""
    token = _PACKED_FORWARD.set(True)
    try:
        yield
    finally:
        _PACKED_FORWARD.reset(token)


def _longest(cu_seq_lens: torch.Tensor) -> int:
    return int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())


def packed_kwargs(cu_seq_lens: torch.Tensor, cu_seq_lens_source: torch.Tensor | None = None) -> dict[str, Any]:
    """The forward kwargs of a packed row with examples starting at ``cu_seq_lens[:-1]`` (int32, [n + 1]).

    A packed seq2seq batch adds its encoder row's boundaries, ``cu_seq_lens_source``; ``cu_seq_lens`` is then
    the decoder row's.
    """
    source = cu_seq_lens if cu_seq_lens_source is None else cu_seq_lens_source
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": source, "max_length_q": _longest(cu_seq_lens),
            "max_length_k": _longest(source)}


def _packed_mask(*args: Any, **kwargs: Any) -> Any:
    from transformers.masking_utils import sdpa_mask

    return PACKED if _PACKED_FORWARD.get() else sdpa_mask(*args, **kwargs)


def _repad_index(cu_seq_lens: torch.Tensor, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row positions [examples * longest] to gather, which of those slots hold a real token)."""
    lengths = cu_seq_lens[1:] - cu_seq_lens[:-1]
    offsets = torch.arange(longest, device=cu_seq_lens.device)
    real = offsets[None, :] < lengths[:, None]
    index = torch.where(real, cu_seq_lens[:-1, None].long() + offsets[None, :], 0)
    return index.reshape(-1), real.reshape(-1)


def _key_padding(lengths: torch.Tensor, longest: int) -> torch.Tensor:
    """[examples, 1, 1, longest]: True where a key slot holds a real token."""
    return (torch.arange(longest, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]


# Role of an attention module in a packed forward: which row its queries and keys come from, and whether it
# is causal. Causal LMs' modules carry no tag and are "causal".
_ROLE_ATTR = "cotdistill_packed_role"
_ROLES = {"causal": ("q", "q", True), "encoder": ("k", "k", False), "decoder": ("q", "q", True),
          "cross": ("q", "k", False)}


# How a packed causal row is attended (train.packed_attention): "auto" takes a varlen flash-attention kernel
# where one runs (CUDA, bf16/fp16) and re-pads otherwise; "varlen" insists on the kernel; "repad" never uses it.
PACKED_KERNELS = ("auto", "varlen", "repad")
_KERNEL_ATTR = "cotdistill_packed_kernel"
# (q [tokens, Hq, D], k/v [tokens, Hkv, D], cu_seq_lens, longest, scale, window or 0, dropout) -> [tokens, Hq, D]
VarlenKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float | None, int, float],
                        torch.Tensor]


@functools.cache  # asked in every attention call: a failed import is not cached by Python and searches again
def _flash_attn_kernel() -> VarlenKernel | None:
    """flash-attn's ``flash_attn_varlen_func`` (what transformers' flash_attention_2 calls), where installed."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # not installed, or built for another torch/CUDA: the next kernel or re-padding
        return None

    def kernel(q, k, v, cu, longest, scale, window, dropout):
        left = window - 1 if window else -1
        return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, dropout_p=dropout, softmax_scale=scale,
                                      causal=True, window_size=(left, left if window else -1))

    kernel.__name__ = "flash_attn.flash_attn_varlen_func"
    return kernel


@functools.cache
def _torch_varlen_kernel() -> VarlenKernel | None:
    """PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention on CUDA; no dropout)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None

    def kernel(q, k, v, cu, longest, scale, window, dropout):
        return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scale,
                           window_size=(window - 1 if window else -1, 0), enable_gqa=k.size(1) != q.size(1))

    kernel.__name__ = "torch.nn.attention.varlen.varlen_attn"
    return kernel


def varlen_kernel(device: torch.device | str, dtype: torch.dtype, dropout: bool = False) -> VarlenKernel | None:
    """The varlen flash-attention kernel packed causal rows on ``device`` in ``dtype`` use, or None (re-pad).

    Only CUDA in bf16/fp16: flash-attn first, then PyTorch's varlen_attn (which has no attention dropout, so
    a layer training with dropout re-pads instead). One call attends every example of the row with no padding
    at all, where re-padding pays for [examples, longest] slots.
    """
    if torch.device(device).type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    return _flash_attn_kernel() or (None if dropout else _torch_varlen_kernel())


def attention_dropout(config: Any) -> bool:
    """Whether a model config trains with attention dropout (GPT-2's attn_pdrop, Llama-likes' attention_dropout)."""
    return any(float(getattr(config, name, 0.0) or 0.0) > 0 for name in ("attn_pdrop", "attention_dropout"))


def describe_packed_attention(choice: str, device: torch.device | str, dtype: torch.dtype,
                              dropout: bool = False, causal: bool = True) -> str:
    """The one log line saying how packed rows are attended; ``choice=varlen`` without a kernel is refused."""
    if choice not in PACKED_KERNELS:
        raise ConfigError(f"train.packed_attention must be one of {', '.join(PACKED_KERNELS)}, got {choice!r}")
    if not causal:
        if choice == "varlen":
            raise ConfigError("train.packed_attention=varlen is for causal students: T5's relative position bias "
                              "is added inside attention, which no varlen kernel takes (set auto or repad)")
        return "packed attention: examples re-padded inside each attention call (SDPA, T5's position bias)"
    kernel = varlen_kernel(device, dtype, dropout) if choice != "repad" else None
    if choice == "varlen" and kernel is None:
        raise ConfigError(f"train.packed_attention=varlen needs a CUDA device in bf16/fp16 and flash-attn (or, "
                         f"without attention dropout, torch.nn.attention.varlen); this run has "
                         f"{torch.device(device).type} in {dtype}{' with attention dropout' if dropout else ''} "
                         f"(set train.packed_attention=auto or repad)")
    if kernel is None:
        return "packed attention: examples re-padded inside each attention call (SDPA)"
    return f"packed attention: one varlen flash-attention call per layer ({kernel.__name__})"


def _varlen_attention(kernel: VarlenKernel, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      cu_seq_lens: torch.Tensor, longest: int, scaling: float | None, window: int,
                      dropout: float) -> torch.Tensor:
    """A causal packed row through ``kernel``: [1, H, row, D] in, [1, row, Hq, D] out like SDPA's wrapper."""
    def tokens_first(states: torch.Tensor) -> torch.Tensor:
        return states[0].transpose(0, 1).contiguous()  # [H, row, D] -> [row, H, D]

    out = kernel(tokens_first(query), tokens_first(key), tokens_first(value), cu_seq_lens.to(torch.int32), longest,
                 scaling, int(window or 0), dropout)
    return out.unsqueeze(0)


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over [1, heads, row, head_dim] packed tensors, kept inside each example.

    Returns [1, row, heads, head_dim] like transformers' SDPA function. Not packed: SDPA itself. A causal LM's
    row goes to a varlen flash-attention kernel where `varlen_kernel` finds one (``train.packed_attention``);
    T5's roles carry a relative position bias no such kernel takes, so they always re-pad.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not PACKED:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    role = getattr(module, _ROLE_ATTR, "causal")
    query_row, key_row, causal = _ROLES[role]
    cu_q, cu_k = kwargs.get(f"cu_seq_lens_{query_row}"), kwargs.get(f"cu_seq_lens_{key_row}")
    if cu_q is None or cu_k is None or query.size(0) != 1:
        raise ValueError("a packed forward needs one row and cu_seq_lens_q/k (cotdistill.packed_attention."
                         f"packed_kwargs); got {query.size(0)} rows and cu_seq_lens_q={kwargs.get('cu_seq_lens_q')!r}")
    choice = getattr(module, _KERNEL_ATTR, "auto")
    if role == "causal" and choice != "repad":
        kernel = varlen_kernel(query.device, query.dtype, dropout > 0)
        if kernel is None and choice == "varlen":
            describe_packed_attention("varlen", query.device, query.dtype, dropout > 0)  # raises, saying why
        if kernel is not None:
            longest = int(kwargs.get("max_length_q") or _longest(cu_q))
            return _varlen_attention(kernel, query, key, value, cu_q, longest, scaling, kwargs.get("sliding_window"),
                                     dropout), None
    if key.size(1) != query.size(1):  # grouped-query attention: one key/value head serves several query heads
        key = key.repeat_interleave(query.size(1) // key.size(1), dim=1)
        value = value.repeat_interleave(query.size(1) // value.size(1), dim=1)
    longest_q = int(kwargs.get(f"max_length_{query_row}") or _longest(cu_q))
    longest_k = int(kwargs.get(f"max_length_{key_row}") or _longest(cu_k))
    q_index, q_real = _repad_index(cu_q, longest_q)
    k_index = q_index if cu_k is cu_q else _repad_index(cu_k, longest_k)[0]
    examples = cu_q.numel() - 1

    compute = torch.float32 if query.device.type == "cpu" else query.dtype

    def repad(states: torch.Tensor, index: torch.Tensor, longest: int) -> torch.Tensor:
        rows = states[0].transpose(0, 1).index_select(0, index).to(compute)  # [1, H, row, D] -> [E, H, L, D]
        return rows.view(examples, longest, *rows.shape[1:]).transpose(1, 2)

    mask = None
    bias = kwargs.get("position_bias")
    if bias is not None and role in ("encoder", "decoder"):
        # T5's relative position bias: the top-left block is every example's (positions restart at 0)
        mask = bias[:, :, :longest_q, :longest_k].to(compute)
        if causal:
            future = torch.ones(longest_q, longest_k, dtype=torch.bool, device=query.device).triu(1)
            mask = mask.masked_fill(future, torch.finfo(compute).min)
            causal = False
    window = kwargs.get("sliding_window")
    if causal and window:  # a sliding-window layer (Gemma 3's local ones, Qwen's use_sliding_window)
        slots = torch.arange(longest_q, device=query.device)
        # Slots restart at every example, so one [longest, longest] pattern serves them all; it is causal too,
        # so padding keys past an example's end stay out of reach, as with is_causal.
        mask = (slots[None, :] <= slots[:, None]) & (slots[None, :] > slots[:, None] - int(window))
        causal = False
    elif not causal:  # keys past an example's end are padding; causal attention never reaches them
        real_keys = _key_padding(cu_k[1:] - cu_k[:-1], longest_k)
        mask = real_keys if mask is None else torch.where(real_keys, mask, torch.finfo(compute).min)
    out = F.scaled_dot_product_attention(repad(query, q_index, longest_q), repad(key, k_index, longest_k),
                                         repad(value, k_index, longest_k), attn_mask=mask, is_causal=causal,
                                         dropout_p=dropout, scale=scaling)
    out = out.transpose(1, 2).reshape(examples * longest_q, query.size(1), out.size(-1))[q_real]
    return out.to(query.dtype).unsqueeze(0), None


def can_pack(config: Any) -> bool:
    """Whether `use_packed_attention` supports this model config: its family's ``packs`` (`cotdistill.families`);
    outside the registry, any causal LM (whose attention goes through transformers' attention interface).

    Llama, Qwen2, Qwen3 and Gemma 3 attention pass the forward's kwargs (``cu_seq_lens_q/k``, and
    ``sliding_window`` for a local layer) to the attention function and take their RoPE angles from the
    restarting ``position_ids``, as GPT-2 takes its position embeddings; their grouped key/value heads are
    repeated here as transformers' ``repeat_kv`` does. A model that caps its attention logits (Gemma 2's
    ``attn_logit_softcapping``) is padded: neither re-padded SDPA nor a varlen kernel here applies the cap.
    """
    if getattr(config, "attn_logit_softcapping", None):
        return False
    family = find_family(config)
    return family.packs if family is not None else not config.is_encoder_decoder


PACKABLE_SEQ2SEQ = packable_seq2seq()  # the registry's packing seq2seq model_types at import (log messages)


def _small_position_bias(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook on a T5 attention: in a packed forward, give it the bias of one example's block.

    T5 computes the bias in each stack's first layer (and zeros for cross-attention) over the whole row
    unless handed one; the longest example's block is all `packed_attention` reads.
    """
    if kwargs.get("mask") is not PACKED or kwargs.get("position_bias") is not None:
        return None
    query_row, key_row, _ = _ROLES[getattr(module, _ROLE_ATTR)]
    hidden = args[0] if args else kwargs["hidden_states"]
    if module.has_relative_attention_bias:
        bias = module.compute_bias(kwargs[f"max_length_{query_row}"], kwargs[f"max_length_{key_row}"],
                                   device=hidden.device)
    else:
        bias = torch.zeros((1, module.n_heads, 1, 1), device=hidden.device, dtype=hidden.dtype)
    return args, {**kwargs, "position_bias": bias}


def _tag_seq2seq_roles(model: torch.nn.Module) -> None:
    """Mark a T5's attention modules encoder, decoder (self-attention) or cross, and hook their bias."""
    stacks = {"encoder": model.get_encoder(), "decoder": model.get_decoder()}
    for stack_name, stack in stacks.items():
        for name, module in stack.named_modules():
            if not hasattr(module, "has_relative_attention_bias"):
                continue
            role = "cross" if name.endswith("EncDecAttention") else stack_name
            if getattr(module, _ROLE_ATTR, None) is None:
                module.register_forward_pre_hook(_small_position_bias, with_kwargs=True)
            setattr(module, _ROLE_ATTR, role)


def use_packed_attention(model: torch.nn.Module, kernel: str = "auto") -> None:
    """Switch a model to this implementation (registered with transformers on first use); see `can_pack`.

    ``kernel`` is ``train.packed_attention``: how its causal rows are attended (`PACKED_KERNELS`).
    """
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if not can_pack(model.config):
        raise ValueError(f"packed micro-batches support causal LMs and {'/'.join(packable_seq2seq())} seq2seq "
                         f"models, not model_type {model.config.model_type!r} (set train.pack_sequences=false)")
    if not _registered:
        AttentionInterface.register(NAME, packed_attention)
        AttentionMaskInterface.register(NAME, _packed_mask)
        _registered = True
    if kernel not in PACKED_KERNELS:
        raise ValueError(f"train.packed_attention must be one of {', '.join(PACKED_KERNELS)}, got {kernel!r}")
    if model.config.is_encoder_decoder:
        _tag_seq2seq_roles(model)
    for module in model.modules():
        setattr(module, _KERNEL_ATTR, kernel)
    model.set_attn_implementation(NAME)
