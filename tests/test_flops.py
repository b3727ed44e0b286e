"""cotdistill.flops against an independent count: torch's FlopCounterMode over a real forward + backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

from cotdistill.flops import (
    DecoderOnlyShape,
    EncoderDecoderShape,
    GatedDecoderShape,
    forward_flops,
    model_shape,
    packed_forward_flops,
    padded_forward_flops,
    training_flops,
)

VOCAB = 300


def counted_training_flops(model: torch.nn.Module, **batch: torch.Tensor) -> int:
    """Matmul FLOPs torch executes for one forward with the model's own loss and its backward."""
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    return counter.get_total_flops()


def small_gpt2(attn: str = "sdpa") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=192, vocab_size=VOCAB, n_positions=128,
                        bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    return GPT2LMHeadModel(config)


def small_t5(feed_forward_proj: str = "gated-gelu") -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(d_model=64, d_kv=8, num_heads=4, d_ff=160, num_layers=2, num_decoder_layers=3,
                      vocab_size=VOCAB, feed_forward_proj=feed_forward_proj, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gpt2_training_flops_match_flop_counter(attn):
    model = small_gpt2(attn)
    rows, prompt, target = 3, 17, 23
    ids = torch.randint(1, VOCAB, (rows, prompt + target))
    labels = ids.clone()
    labels[:, :prompt] = -100
    measured = counted_training_flops(model, input_ids=ids, labels=labels)
    shape = model_shape(model.config)
    assert shape == DecoderOnlyShape(d_model=64, layers=2, d_ff=192, vocab=VOCAB)
    # transformers computes logits at every position: the hardware count is exact for an unpadded batch.
    hardware = training_flops(padded_forward_flops(shape, rows, prompt + target))
    assert measured == pytest.approx(hardware, rel=0.02)
    # The useful count drops only the LM head at the prompt positions (their logits feed no loss).
    useful = training_flops(rows * forward_flops(shape, prompt, target))
    lm_head_at_prompt = training_flops(rows * 2 * 64 * VOCAB * prompt)
    assert useful == pytest.approx(measured - lm_head_at_prompt, rel=0.02)


def test_packed_gpt2_flops_match_flop_counter():
    """A packed row: linear layers over the real tokens, attention per example re-padded to the longest."""
    from cotdistill.batching import TokenizedExample, collate, forward_batch
    from cotdistill.packed_attention import packed_forward, use_packed_attention

    model = small_gpt2()
    use_packed_attention(model)
    examples = [TokenizedExample(tuple(range(1, n + 1)), (-100,) * p + tuple(range(p + 1, n + 1)), True)
                for n, p in ((40, 10), (25, 5), (31, 12))]
    fb = forward_batch(collate(examples, pad_id=0, pack=True), causal=True)
    with FlopCounterMode(display=False) as counter, packed_forward():
        logits = model(**fb.inputs).logits
        torch.nn.functional.cross_entropy(logits[0].float(), fb.labels[0]).backward()
    expected = training_flops(packed_forward_flops(model_shape(model.config), [40, 25, 31], fb.labels.numel()))
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)


def test_packed_t5_flops_match_flop_counter():
    """Packed encoder and decoder rows: linear layers over the real tokens, attention per example re-padded."""
    from cotdistill.batching import TokenizedExample, collate, forward_batch
    from cotdistill.packed_attention import use_packed_attention

    model = small_t5()
    use_packed_attention(model)
    sources, targets = [40, 25, 31], [12, 30, 7]
    examples = [TokenizedExample(tuple(range(2, s + 2)), tuple(range(2, t + 2)), False)
                for s, t in zip(sources, targets, strict=True)]
    fb = forward_batch(collate(examples, pad_id=0, pack=True), causal=False)
    fb.inputs["decoder_input_ids"] = fb.decoder_input_ids(
        lambda labels: model.prepare_decoder_input_ids_from_labels(labels=labels))
    with FlopCounterMode(display=False) as counter, fb.forward_context():
        logits = model(**fb.inputs).logits
        torch.nn.functional.cross_entropy(logits[0].float(), fb.labels[0]).backward()
    shape = model_shape(model.config)
    expected = training_flops(packed_forward_flops(shape, sources, 0, targets))
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)
    # Less than the same examples padded to the longest source and target: padding is not computed.
    assert expected < training_flops(padded_forward_flops(shape, 3, max(sources), max(targets)))
    with pytest.raises(ValueError, match="one target length per source"):
        packed_forward_flops(shape, sources, 0, targets[:2])


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_t5_training_flops_match_flop_counter(feed_forward_proj):
    model = small_t5(feed_forward_proj)
    rows, source, target = 2, 31, 19
    batch = {"input_ids": torch.randint(2, VOCAB, (rows, source)), "labels": torch.randint(2, VOCAB, (rows, target))}
    measured = counted_training_flops(model, **batch)
    shape = model_shape(model.config)
    assert isinstance(shape, EncoderDecoderShape)
    assert (shape.inner, shape.encoder_layers, shape.decoder_layers) == (32, 2, 3)
    assert shape.gated == (feed_forward_proj == "gated-gelu")
    expected = training_flops(rows * forward_flops(shape, source, target))
    assert measured == pytest.approx(expected, rel=0.02)
    # Unpadded, what the batch computes is the useful work.
    assert padded_forward_flops(shape, rows, source, target) == rows * forward_flops(shape, source, target)


def test_t5_flops_grow_with_source_length_through_the_encoder():
    model = small_t5()
    shape = model_shape(model.config)
    target = 12
    measured, predicted = [], []
    for source in (10, 40, 80):
        model.zero_grad()
        batch = {"input_ids": torch.randint(2, VOCAB, (1, source)), "labels": torch.randint(2, VOCAB, (1, target))}
        measured.append(counted_training_flops(model, **batch))
        predicted.append(training_flops(forward_flops(shape, source, target)))
    assert measured[0] < measured[1] < measured[2]
    for got, want in zip(measured, predicted, strict=True):
        assert got == pytest.approx(want, rel=0.02)
    # The growth is the encoder's (and the cross-attention's keys/values), not the decoder's own work:
    # a longer source with the target fixed adds exactly what the encoder shape predicts.
    encoder_only = EncoderDecoderShape(shape.d_model, shape.inner, shape.d_ff, shape.gated, shape.encoder_layers, 0,
                                       vocab=0)
    growth = forward_flops(shape, 80, target) - forward_flops(shape, 10, target)
    encoder_growth = forward_flops(encoder_only, 80, 0) - forward_flops(encoder_only, 10, 0)
    cross_growth = shape.decoder_layers * (70 * 4 * shape.d_model * shape.inner + 4 * target * 70 * shape.inner)
    assert growth == encoder_growth + cross_growth


def test_padding_is_hardware_work_not_model_work():
    shape = DecoderOnlyShape(d_model=768, layers=12, d_ff=3072, vocab=50257)
    lengths = [(40, 60), (30, 20)]  # (prompt, target) of two causal examples, padded to 100
    useful = sum(forward_flops(shape, p, t) for p, t in lengths)
    padded = padded_forward_flops(shape, rows=2, input_width=100)
    assert padded > useful
    # A GPT-2-small token costs about 2 x 85M non-embedding parameters plus the LM head, as the 6N rule says.
    per_token = forward_flops(shape, 0, 1)
    assert per_token == pytest.approx(2 * (12 * 12 * 768 ** 2) + 4 * 768 * 12 + 2 * 768 * 50257, rel=1e-9)


def small_llama_like(family: str) -> torch.nn.Module:
    """GQA (4 query heads, 2 K/V heads), untied head; Qwen2 adds Q/K/V biases, Qwen3 Q/K norms and head_dim 24."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    torch.manual_seed(0)
    common = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
              "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False}
    config = {"llama": lambda: LlamaConfig(**common), "qwen2": lambda: Qwen2Config(**common),
              "qwen3": lambda: Qwen3Config(**common, head_dim=24)}[family]()
    # eager: without a padding mask SDPA runs the CPU flash kernel, whose products FlopCounterMode does not see
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_llama_like_training_flops_match_flop_counter(family):
    model = small_llama_like(family)
    rows, prompt, target = 3, 17, 23
    ids = torch.randint(1, VOCAB, (rows, prompt + target))
    labels = ids.clone()
    labels[:, :prompt] = -100
    measured = counted_training_flops(model, input_ids=ids, labels=labels)
    shape = model_shape(model.config)
    head_dim = 24 if family == "qwen3" else 16
    assert shape == GatedDecoderShape(d_model=64, layers=2, d_ff=160, vocab=VOCAB, heads=4, kv_heads=2,
                                      head_dim=head_dim)
    assert measured == pytest.approx(training_flops(padded_forward_flops(shape, rows, prompt + target)), rel=0.02)
    useful = training_flops(rows * forward_flops(shape, prompt, target))
    assert useful == pytest.approx(measured - training_flops(rows * 2 * 64 * VOCAB * prompt), rel=0.02)


def test_gated_decoder_flops_match_a_hand_count():
    shape = GatedDecoderShape(d_model=64, layers=2, d_ff=160, vocab=300, heads=4, kv_heads=2, head_dim=16)
    # per token and layer: Q 2*64*64 = 8192, K and V 2*64*32 = 4096 each, O 8192, gate/up/down 6*64*160 = 61440,
    # so 86016; attention over 10 tokens 4*10*(4*16) = 2560. Two layers of 10 tokens: 2 * 10 * 88576 = 1771520;
    # the LM head at 4 target positions: 2*64*300*4 = 153600.
    assert forward_flops(shape, 6, 4) == 1_771_520 + 153_600
    # the packed form of one example is the same work
    assert packed_forward_flops(shape, [10], 4) == forward_flops(shape, 6, 4)


def test_qwen25_token_flops_are_twice_the_matmul_parameters_plus_attention():
    from transformers import AutoModelForCausalLM

    from cotdistill.memory_plan import resolve_model_config

    config = resolve_model_config("Qwen/Qwen2.5-0.5B")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # the non-embedding matmul parameters: every Linear weight in the blocks (biases and norms are not products)
    matmul = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert matmul == 24 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864)  # Q, O; K, V of 2 heads; gated MLP
    shape = model_shape(config)
    length = 512
    attention = 4 * length * (14 * 64) * 24  # QK^T and PV per token, 14 query heads of 64, 24 layers
    assert forward_flops(shape, length, 0) == length * (2 * matmul + attention)
    # the tied LM head costs 2 d V per logit position on top
    assert forward_flops(shape, length - 1, 1) - forward_flops(shape, length, 0) == 2 * 896 * 151936


def test_unknown_model_type_is_refused():
    with pytest.raises(ValueError, match="model_type"):  # no num_key_value_heads: not Llama-like
        model_shape(type("Config", (), {"model_type": "gpt_neox", "intermediate_size": 64})())
    with pytest.raises(ValueError):
        forward_flops(DecoderOnlyShape(8, 1, 32, 10), -1, 3)
