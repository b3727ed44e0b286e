"""Training FLOPs of GPT-2, T5 and Llama-like students from the model config and token counts, for MFU.

Model FLOPs utilization (MFU) is useful work divided by what the hardware could do in the same time:
``model FLOPs per second / peak FLOP/s``. The useful work of a training example depends only on the
model and the example's real tokens, never on how a trainer batched it, so MFU compares trainers fairly:
padding slots are excluded, and a trainer that pads less gets the credit through its higher real-token rate.
What a padded batch actually computes is counted separately (``padded_forward_flops``) for the hardware
FLOP utilization, where padding counts as work done.

What is counted: multiply-adds of the matrix products, 2 FLOPs each (Kaplan et al. 2020, PaLM's MFU):
every linear projection, the attention products QK^T and PV, and the LM head. Layer norms, softmax,
activations, residual adds, the embedding lookups and T5's relative position bias are left out: they are
not matrix products and cost a small share of the FLOPs (memory traffic, not arithmetic, is their cost), and
`torch.utils.flop_counter.FlopCounterMode` leaves them out too (tests/test_flops.py checks this module
against it: equal to the FLOP for GPT-2 and T5).

- Attention is counted over the full square (all L x L scores), as dense kernels compute it; the causal
  mask of a decoder does not halve the work they do.
- Backward = 2 x forward: each product needs one product for the gradient of its input and one for that of
  its weight (the embeddings are trainable, so the first layer's input gradient is computed too). So a
  training step costs 3 x forward (``training_flops``); activation checkpointing would add a forward that
  is recomputation, not useful work, and is not counted.
- Useful LM-head work is counted at target tokens only: a seq2seq decoder predicts every target token,
  while a causal student's loss needs the logits only at the positions that predict a target token
  (``target_tokens`` of them, the prompt's last position included and the final EOS excluded). Both trainers
  do compute logits at the prompt positions too; that is counted as hardware work in ``padded_forward_flops``.

Per layer and token, with d = d_model, i = heads x d_kv (d for GPT-2), f = d_ff, a sequence of L tokens:

- GPT-2 block: QKV 6 d^2, output 2 d^2, MLP 4 d f, attention 4 L d; LM head 2 d V per logit position.
- Llama-like block (Llama, SmolLM2, Mistral, Qwen2/2.5, Qwen3, Gemma: grouped-query attention and a gated
  MLP), with q = heads x head_dim and k = kv_heads x head_dim (head_dim need not be d / heads): Q 2 d q,
  K and V 2 d k each, output 2 q d, gated MLP 6 d f (gate, up, down), attention 4 L q (every query head
  attends to the whole sequence; GQA shares K/V heads, which saves projections and memory, not score
  work); LM head 2 d V per logit position, tied to the embedding or not (the product is the same).
  Qwen2's Q/K/V biases, RMSNorm, Qwen3's per-head Q/K norms, RoPE and SiLU are not matrix products.
  So a token's block FLOPs are 2 x the block's matmul parameters plus the attention term. Sliding-window
  layers (Gemma 2/3, Mistral's option) are counted over the full square too: exact while sequences are no
  longer than the window.
- T5 encoder layer (over the S source tokens): QKV 6 d i, output 2 i d, FFN 4 d f (6 d f gated, as
  FlanT5's gated-GELU with two input matrices), attention 4 S i.
- T5 decoder layer (over the T target tokens): self-attention 8 d i + 4 T i, cross-attention queries and
  output 4 d i plus scores/values 4 S i per target token, plus the keys and values of the encoder output,
  4 d i per *source* token in every decoder layer (so the decoder grows with the source length as well), FFN
  as in the encoder; LM head 2 d V per target token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRAINING_MULTIPLIER = 3  # forward + backward (2 x forward)


@dataclass(frozen=True)
class DecoderOnlyShape:
    """What a GPT-2-like model's FLOPs depend on."""

    d_model: int
    layers: int
    d_ff: int
    vocab: int


@dataclass(frozen=True)
class EncoderDecoderShape:
    """What a T5-like model's FLOPs depend on; `inner` is heads x d_kv (T5 allows it to differ from d_model)."""

    d_model: int
    inner: int
    d_ff: int
    gated: bool
    encoder_layers: int
    decoder_layers: int
    vocab: int


@dataclass(frozen=True)
class GatedDecoderShape:
    """What a Llama-like model's FLOPs depend on: grouped-query attention and a three-matrix gated MLP."""

    d_model: int
    layers: int
    d_ff: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def inner(self) -> int:
        """Width of Q and of the attention output: heads x head_dim."""
        return self.heads * self.head_dim

    @property
    def kv_inner(self) -> int:
        """Width of K and of V: kv_heads x head_dim."""
        return self.kv_heads * self.head_dim


ModelShape = DecoderOnlyShape | GatedDecoderShape | EncoderDecoderShape
CausalShape = DecoderOnlyShape | GatedDecoderShape


def is_gated_decoder(config: Any) -> bool:
    """Llama-like, keyed on standard attributes (Llama, Mistral, Qwen2/3 and Gemma configs all have them)."""
    return (not getattr(config, "is_encoder_decoder", False) and hasattr(config, "num_key_value_heads")
            and hasattr(config, "intermediate_size") and hasattr(config, "num_hidden_layers"))


def model_shape(config: Any) -> ModelShape:
    """The FLOP-relevant sizes of a transformers GPT-2, T5 or Llama-like config (``model.config``, ``AutoConfig``)."""
    kind = getattr(config, "model_type", "")
    if kind == "gpt2":
        return DecoderOnlyShape(d_model=config.n_embd, layers=config.n_layer,
                                d_ff=config.n_inner or 4 * config.n_embd, vocab=config.vocab_size)
    if is_gated_decoder(config):
        heads = int(config.num_attention_heads)
        return GatedDecoderShape(d_model=int(config.hidden_size), layers=int(config.num_hidden_layers),
                                 d_ff=int(config.intermediate_size), vocab=int(config.vocab_size), heads=heads,
                                 kv_heads=int(config.num_key_value_heads or heads),
                                 head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads))
    if kind in ("t5", "mt5", "umt5"):
        gated = str(getattr(config, "feed_forward_proj", "relu")).startswith("gated-")
        return EncoderDecoderShape(d_model=config.d_model, inner=config.num_heads * config.d_kv, d_ff=config.d_ff,
                                   gated=gated, encoder_layers=config.num_layers,
                                   decoder_layers=config.num_decoder_layers or config.num_layers,
                                   vocab=config.vocab_size)
    raise ValueError(f"no FLOP count for model_type {kind!r} (GPT-2, T5 and Llama-like models with "
                     "num_key_value_heads and intermediate_size are supported)")


def _ffn(shape: ModelShape) -> int:
    """FFN FLOPs per token: two matrices d x f and f x d, three when gated."""
    gated = isinstance(shape, GatedDecoderShape) or (isinstance(shape, EncoderDecoderShape) and shape.gated)
    return (6 if gated else 4) * shape.d_model * shape.d_ff


def _layer_linear(shape: CausalShape) -> int:
    """A decoder block's projection and MLP FLOPs per token (2 x its matmul parameters)."""
    d = shape.d_model
    if isinstance(shape, GatedDecoderShape):
        return 4 * d * shape.inner + 4 * d * shape.kv_inner + _ffn(shape)
    return 8 * d * d + _ffn(shape)


def _attention_width(shape: CausalShape) -> int:
    """The width the scores and values are computed over: heads x head_dim (d for GPT-2)."""
    return shape.inner if isinstance(shape, GatedDecoderShape) else shape.d_model


def _decoder_only(shape: CausalShape, length: int, logit_positions: int) -> int:
    per_layer = length * _layer_linear(shape) + 4 * length * length * _attention_width(shape)
    return shape.layers * per_layer + 2 * shape.d_model * shape.vocab * logit_positions


def _encoder_decoder_linear(shape: EncoderDecoderShape, source: int, target: int) -> int:
    """Projections, FFNs and the LM head: linear in the source and target tokens."""
    d, i = shape.d_model, shape.inner
    ffn = _ffn(shape)
    encoder = shape.encoder_layers * source * (8 * d * i + ffn)
    decoder = shape.decoder_layers * (target * (12 * d * i + ffn) + source * 4 * d * i)
    return encoder + decoder + 2 * d * shape.vocab * target


def _encoder_decoder_attention(shape: EncoderDecoderShape, source: int, target: int) -> int:
    """Attention scores and values of one example: encoder S x S, decoder T x T and T x S."""
    return 4 * shape.inner * (shape.encoder_layers * source * source
                              + shape.decoder_layers * (target * target + target * source))


def _encoder_decoder(shape: EncoderDecoderShape, source: int, target: int) -> int:
    return _encoder_decoder_linear(shape, source, target) + _encoder_decoder_attention(shape, source, target)


def forward_flops(shape: ModelShape, source_tokens: int, target_tokens: int) -> int:
    """Useful forward FLOPs of one unpadded example.

    Seq2seq: `source_tokens` through the encoder, `target_tokens` through the decoder and the LM head.
    Causal: one sequence of ``source_tokens + target_tokens`` (prompt, then target) through the blocks,
    and the LM head at `target_tokens` positions: those whose logits the loss uses, the prompt's last position
    predicting the first target token (with an empty prompt that is one position too many).
    """
    if source_tokens < 0 or target_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {source_tokens} and {target_tokens}")
    if not isinstance(shape, EncoderDecoderShape):
        return _decoder_only(shape, source_tokens + target_tokens, target_tokens)
    return _encoder_decoder(shape, source_tokens, target_tokens)


def padded_forward_flops(shape: ModelShape, rows: int, input_width: int, label_width: int = 0) -> int:
    """Forward FLOPs a padded micro-batch actually costs (hardware FLOPs): every slot computed, padding too.

    Causal: `rows` sequences of `input_width`, logits at every position (as transformers computes them).
    Seq2seq: the encoder over `input_width`, the decoder and LM head over `label_width`.
    """
    if not isinstance(shape, EncoderDecoderShape):
        return rows * _decoder_only(shape, input_width, input_width)
    return rows * _encoder_decoder(shape, input_width, label_width)


def packed_forward_flops(shape: ModelShape, lengths: list[int], logit_positions: int,
                         target_lengths: list[int] | None = None) -> int:
    """Forward FLOPs of a packed micro-batch (`cotdistill.packed_attention`): hardware FLOPs.

    The linear layers run over the real tokens only, and attention over every example re-padded to the
    longest one. Causal: `lengths` are the examples' sequences and the LM head runs at `logit_positions`.
    Seq2seq: `lengths` are the sources and `target_lengths` the targets (the LM head runs at every target
    token; `logit_positions` is not used).
    """
    if isinstance(shape, EncoderDecoderShape):
        targets = target_lengths or []
        if len(targets) != len(lengths):
            raise ValueError(f"a packed seq2seq batch needs one target length per source: got {len(lengths)} "
                             f"sources and {len(targets)} targets")
        if not lengths:
            return 0
        return (_encoder_decoder_linear(shape, sum(lengths), sum(targets))
                + len(lengths) * _encoder_decoder_attention(shape, max(lengths), max(targets)))
    if not lengths:
        return 2 * shape.d_model * shape.vocab * logit_positions
    width = max(lengths)
    per_layer = (sum(lengths) * _layer_linear(shape)
                 + len(lengths) * 4 * width * width * _attention_width(shape))
    return shape.layers * per_layer + 2 * shape.d_model * shape.vocab * logit_positions


def training_flops(forward: int) -> int:
    """Forward plus backward of the same work: ``3 x forward`` (see the module docstring)."""
    return TRAINING_MULTIPLIER * forward

