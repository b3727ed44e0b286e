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

`packed_forward()` marks a forward as packed. The model's causal-mask step then returns the `PACKED` marker
instead of a mask, and the attention uses the ``cu_seq_lens_q`` the forward was given. Every other forward
(generation, evaluation) is plain SDPA, so a model switched to this implementation behaves as before
outside packed training. The kwargs are transformers' own varlen names (``cu_seq_lens_q/k``,
``max_length_q/k``), which reach the attention function through the model's ``**kwargs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F

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


def packed_kwargs(cu_seq_lens: torch.Tensor) -> dict[str, Any]:
    """The forward kwargs of a packed row with examples starting at ``cu_seq_lens[:-1]`` (int32, [n + 1])."""
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
            "max_length_k": longest}


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


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over [1, heads, row, head_dim] packed tensors, causal within each example.

    Returns [1, row, heads, head_dim] like transformers' SDPA function. Not packed: SDPA itself.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not PACKED:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None or query.size(0) != 1:
        raise ValueError("a packed forward needs one row and cu_seq_lens_q (cotdistill.packed_attention."
                         f"packed_kwargs); got {query.size(0)} rows and cu_seq_lens_q={cu_seq_lens!r}")
    if key.size(1) != query.size(1):  # grouped-query attention: one key/value head serves several query heads
        key = key.repeat_interleave(query.size(1) // key.size(1), dim=1)
        value = value.repeat_interleave(query.size(1) // value.size(1), dim=1)
    longest = int(kwargs.get("max_length_q") or (cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    index, real = _repad_index(cu_seq_lens, longest)
    examples = cu_seq_lens.numel() - 1

    compute = torch.float32 if query.device.type == "cpu" else query.dtype

    def repad(states: torch.Tensor) -> torch.Tensor:  # [1, H, row, D] -> [examples, H, longest, D]
        rows = states[0].transpose(0, 1).index_select(0, index).to(compute)
        return rows.view(examples, longest, *rows.shape[1:]).transpose(1, 2)

    out = F.scaled_dot_product_attention(repad(query), repad(key), repad(value), is_causal=True,
                                         dropout_p=dropout, scale=scaling)
    out = out.transpose(1, 2).reshape(examples * longest, query.size(1), out.size(-1))[real]
    return out.to(query.dtype).unsqueeze(0), None


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a causal model to this implementation (registered with transformers on first use)."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if not _registered:
        AttentionInterface.register(NAME, packed_attention)
        AttentionMaskInterface.register(NAME, _packed_mask)
        _registered = True
    model.set_attn_implementation(NAME)
