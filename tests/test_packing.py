"""Packed micro-batches (GPT-2, Llama, Qwen2 and Qwen3 rows; T5 encoder and decoder rows): no padding, and exactly
the padded batch's loss and gradients."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from cotdistill.batching import TokenizedExample, collate, forward_batch, padding_stats
from cotdistill.modeling import _enable_checkpointing
from cotdistill.objectives import IGNORE_INDEX, distill_loss
from cotdistill.packed_attention import packed_forward, use_packed_attention


def causal_example(prompt: list[int], target: list[int], fmt: str = "zero_shot_cot") -> TokenizedExample:
    return TokenizedExample(tuple(prompt + target), (IGNORE_INDEX,) * len(prompt) + tuple(target), True, fmt)


def random_examples(rng: random.Random, n: int, vocab: int = 50) -> list[TokenizedExample]:
    return [causal_example([rng.randrange(1, vocab) for _ in range(rng.randint(1, 12))],
                           [rng.randrange(1, vocab) for _ in range(rng.randint(1, 20))]) for _ in range(n)]


def test_packed_batch_is_one_row_with_restarting_positions_and_each_examples_first_label_ignored():
    batch = [causal_example([1, 2], [3, 4]), causal_example([5], [6]), causal_example([], [7, 8])]
    out = collate(batch, pad_id=0, pack=True)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1]]
    assert out["labels"].tolist() == [[-100, -100, 3, 4, -100, 6, -100, 8]]
    assert out["cu_seq_lens"].tolist() == [0, 4, 6, 8]
    assert out["cu_seq_lens"].dtype == torch.int32
    assert padding_stats(out, causal=True) == (8, 8)


def test_packing_moves_loss_weights_and_teacher_targets_with_their_tokens():
    heavy = causal_example([1], [2, 3], fmt="solver")
    light = TokenizedExample((4, 5), (IGNORE_INDEX, 5), True, "decomposer", teacher=(((5, 6), (0.75, 0.25)),))
    out = collate([heavy, light], pad_id=0, loss_weights={"solver": 2.0, "decomposer": 0.5}, teacher=True, pack=True)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert out["token_weights"].tolist() == [[2.0, 2.0, 2.0, 0.5, 0.5]]
    assert out["kd_ids"][0, 4].tolist() == [5, 6]
    assert out["kd_probs"][0, 4].tolist() == [0.75, 0.25]
    assert out["kd_probs"][0, 3].tolist() == [0.0, 0.0]


def test_a_micro_batch_mixing_causal_and_seq2seq_examples_is_not_packed():
    with pytest.raises(ValueError, match="all causal or all seq2seq"):
        collate([TokenizedExample((1, 2), (3,), False), causal_example([1], [2])], pad_id=0, pack=True)


def test_a_packed_seq2seq_batch_is_one_encoder_row_and_one_decoder_row():
    batch = [TokenizedExample((1, 2, 3), (4, 5), False, "solver"), TokenizedExample((6,), (7, 8, 9), False, "other")]
    out = collate(batch, pad_id=0, loss_weights={"solver": 2.0}, teacher=True, pack=True)
    assert out["input_ids"].tolist() == [[1, 2, 3, 6]]
    assert out["labels"].tolist() == [[4, 5, 7, 8, 9]]
    assert out["token_weights"].tolist() == [[2.0, 2.0, 1.0, 1.0, 1.0]]
    assert out["kd_ids"][0, :, 0].tolist() == [4, 5, 7, 8, 9]
    assert out["cu_seq_lens"].tolist() == [0, 2, 5] and out["cu_seq_lens_source"].tolist() == [0, 3, 4]
    assert padding_stats(out, causal=False) == (9, 9)
    fb = forward_batch(out, causal=False)
    assert fb.packed and fb.aligned and fb.labels.tolist() == [[4, 5, 7, 8, 9]]
    assert fb.inputs["cu_seq_lens_q"].tolist() == [0, 2, 5] and fb.inputs["max_length_q"] == 3
    assert fb.inputs["cu_seq_lens_k"].tolist() == [0, 3, 4] and fb.inputs["max_length_k"] == 3
    assert "attention_mask" not in fb.inputs


def test_each_packed_target_restarts_with_the_decoder_start_token():
    batch = collate([TokenizedExample((1,), (4, 5), False), TokenizedExample((2,), (7, 8, 9), False)], pad_id=0,
                    pack=True)
    model = _tiny_t5(packed=True)
    shifted = forward_batch(batch, causal=False).decoder_input_ids(
        lambda labels: model.prepare_decoder_input_ids_from_labels(labels=labels))
    assert shifted.tolist() == [[0, 4, 0, 7, 8]]


def test_a_packed_forward_keeps_logits_only_where_the_next_token_is_a_label():
    batch = collate([causal_example([1, 2], [3, 4]), causal_example([5], [6])], pad_id=0, teacher=True, pack=True)
    fb = forward_batch(batch, causal=True)
    assert fb.packed and fb.aligned
    assert fb.inputs["logits_to_keep"].tolist() == [1, 2, 4]  # position t predicts the label at t + 1
    assert fb.labels.tolist() == [[3, 4, 6]]
    assert fb.targets["kd_ids"][0, :, 0].tolist() == [3, 4, 6]
    assert fb.inputs["cu_seq_lens_q"].tolist() == [0, 4, 6] and fb.inputs["max_length_q"] == 4
    assert "attention_mask" not in fb.inputs and "labels" not in fb.inputs


def _tiny_gpt2(packed: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=512, n_embd=32, n_layer=2, n_head=4, attn_implementation="sdpa")
    model = GPT2LMHeadModel(config).eval()
    if packed:
        use_packed_attention(model)
    return model


def _loss(model, batch: dict[str, torch.Tensor], causal: bool = True) -> tuple[torch.Tensor, int]:
    """The trainer's loss of one micro-batch (the same calls as train.py)."""
    fb = forward_batch(batch, causal)
    if not causal:
        fb.inputs["decoder_input_ids"] = fb.decoder_input_ids(
            lambda labels: model.prepare_decoder_input_ids_from_labels(labels=labels))
    with fb.forward_context():
        logits = model(**fb.inputs, use_cache=False).logits
    return distill_loss(logits, fb.labels, None, None, None, 0.0, causal=not fb.aligned)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def assert_packed_matches_padded(padded_model, packed_model, examples: list[TokenizedExample], causal: bool,
                                 grad_atol: float) -> None:
    """One micro-batch padded and packed: fewer slots packed, the same target tokens, loss and gradients."""
    padded, packed = collate(examples, pad_id=0), collate(examples, pad_id=0, pack=True)
    assert packed["labels"].numel() < padded["labels"].numel()
    for model in (padded_model, packed_model):
        model.zero_grad()
    loss_padded, n_padded = _loss(padded_model, padded, causal)
    loss_packed, n_packed = _loss(packed_model, packed, causal)
    loss_padded.backward()
    loss_packed.backward()
    assert n_packed == n_padded
    assert loss_packed.item() == pytest.approx(loss_padded.item(), abs=1e-5)
    torch.testing.assert_close(_grads(packed_model), _grads(padded_model), atol=grad_atol, rtol=1e-4)


def test_a_packed_micro_batch_has_the_padded_batchs_loss_and_gradients_on_gpt2():
    padded_model, packed_model = _tiny_gpt2(packed=False), _tiny_gpt2(packed=True)
    rng = random.Random(1)
    for _ in range(4):
        assert_packed_matches_padded(padded_model, packed_model, random_examples(rng, 12), causal=True,
                                     grad_atol=1e-5)


def test_without_the_packed_attention_the_examples_would_see_each_other():
    """The check above can fail: the same row attended as one causal sequence changes the loss."""
    examples = random_examples(random.Random(2), 12)
    packed = collate(examples, pad_id=0, pack=True)
    plain_model = _tiny_gpt2(packed=False)
    leaky = forward_batch(packed, causal=True)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
        del leaky.inputs[key]
    leaky.inputs["position_ids"] = torch.arange(packed["input_ids"].size(1))[None]  # one long causal sequence
    with torch.no_grad():
        logits = plain_model(**leaky.inputs, use_cache=False).logits
    leaky_loss, _ = distill_loss(logits, leaky.labels, None, None, None, 0.0, causal=False)
    packed_loss, _ = _loss(_tiny_gpt2(packed=True), packed)
    assert abs(leaky_loss.item() - packed_loss.item()) > 1e-3


def test_a_model_switched_to_packed_attention_computes_padded_batches_and_generation_as_before():
    examples = random_examples(random.Random(3), 6)
    padded = collate(examples, pad_id=0)
    with torch.no_grad():
        before = _tiny_gpt2(packed=False)(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        after = _tiny_gpt2(packed=True)(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    real = padded["attention_mask"].bool()
    torch.testing.assert_close(after[real], before[real])
    prompt = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    generated = [_tiny_gpt2(packed=p).generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
                 for p in (False, True)]
    assert torch.equal(generated[0], generated[1])


def test_a_packed_forward_without_sequence_boundaries_is_refused():
    packed = collate(random_examples(random.Random(4), 3), pad_id=0, pack=True)
    model = _tiny_gpt2(packed=True)
    with packed_forward(), pytest.raises(ValueError, match="cu_seq_lens_q"):
        model(input_ids=packed["input_ids"], position_ids=packed["position_ids"])


ROPE_FAMILIES = ["llama", "qwen2", "qwen3", "gemma3"]


def _tiny_rope(family: str, packed: bool, checkpointing: bool = False):
    """A registry family's tiny config (grouped-query attention: 4 query heads, 2 key/value heads), SDPA."""
    from transformers import AutoModelForCausalLM

    from cotdistill.config import TinyModelConfig
    from cotdistill.families import family_named

    size = TinyModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, d_ff=64, n_positions=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family_named(family).tiny_config(size, None), attn_implementation="sdpa")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    if checkpointing:
        _enable_checkpointing(model)
        model.config.use_cache = False
    model.train(checkpointing)  # gradient checkpointing recomputes only in training mode
    if packed:
        use_packed_attention(model)
    return model


@pytest.mark.parametrize("family, checkpointing", [*((f, False) for f in ROPE_FAMILIES), ("llama", True)])
def test_a_packed_micro_batch_has_the_padded_batchs_loss_and_gradients_on_rope_families(family, checkpointing):
    """Loss to 1e-5 absolute, gradients to 1e-5 absolute + 1e-4 relative (fp32), as for GPT-2."""
    padded_model = _tiny_rope(family, packed=False, checkpointing=checkpointing)
    packed_model = _tiny_rope(family, packed=True, checkpointing=checkpointing)
    rng = random.Random(8)
    for _ in range(3):
        assert_packed_matches_padded(padded_model, packed_model, random_examples(rng, 12), causal=True,
                                     grad_atol=1e-5)


# Layer 1 of 2 attends to the last 4 keys only: Qwen's use_sliding_window, Gemma 3's local layers.
SLIDING = {"qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1,
                     "layer_types": ["full_attention", "sliding_attention"]},
           "gemma3": {"sliding_window": 4, "layer_types": ["full_attention", "sliding_attention"]}}
SLIDING["qwen3"] = SLIDING["qwen2"]


@pytest.mark.parametrize("family", sorted(SLIDING))
def test_a_packed_sliding_window_layer_attends_to_the_same_keys_as_the_padded_batch(family):
    """Examples run up to 32 tokens, far past the window of 4."""
    from transformers import AutoModelForCausalLM

    def model(packed: bool, window: int = 4):
        config = _tiny_rope(family, packed=False).config
        config.update({**SLIDING[family], "sliding_window": window})
        torch.manual_seed(0)
        built = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
        if packed:
            use_packed_attention(built)
        return built

    padded_model, packed_model = model(packed=False), model(packed=True)
    assert packed_model.model.layers[1].self_attn.sliding_window == 4
    examples = random_examples(random.Random(10), 8)
    assert_packed_matches_padded(padded_model, packed_model, examples, causal=True, grad_atol=1e-5)
    padded = collate(examples, pad_id=0)
    with torch.no_grad():  # and the window matters: a window wider than every example gives another loss
        wide = _loss(model(packed=False, window=64), padded)[0].item()
        assert abs(wide - _loss(padded_model, padded)[0].item()) > 1e-4


@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_packed_rope_examples_would_see_each_other_without_their_boundaries(family):
    """The check above can fail: the row attended as one causal sequence changes the loss."""
    packed = collate(random_examples(random.Random(9), 12), pad_id=0, pack=True)
    model = _tiny_rope(family, packed=True)
    leaky = dict(packed)
    leaky["cu_seq_lens"] = torch.tensor([0, packed["input_ids"].size(1)], dtype=torch.int32)
    with torch.no_grad():
        assert abs(_loss(model, leaky)[0].item() - _loss(model, packed)[0].item()) > 1e-3


@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_a_rope_model_switched_to_packed_attention_generates_as_before(family):
    prompt = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]),
              "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}
    generated = [_tiny_rope(family, packed=p).generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
                 for p in (False, True)]
    assert torch.equal(generated[0], generated[1])


def seq2seq_examples(rng: random.Random, n: int, vocab: int = 50) -> list[TokenizedExample]:
    return [TokenizedExample(tuple(rng.randrange(2, vocab) for _ in range(rng.randint(1, 30))),
                             tuple(rng.randrange(2, vocab) for _ in range(rng.randint(1, 25))), False)
            for _ in range(n)]


def _tiny_t5(packed: bool, checkpointing: bool = False):
    """Relative positions beyond max_distance (16) occur in these examples, so every bias bucket is used."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=50, d_model=32, d_ff=48, num_layers=2, num_heads=4, d_kv=8, dropout_rate=0.0,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      attn_implementation="sdpa")
    model = T5ForConditionalGeneration(config)
    if checkpointing:
        _enable_checkpointing(model)  # the trainer's own switch
        model.config.use_cache = False
    if packed:
        use_packed_attention(model)
    return model


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_packed_micro_batch_has_the_padded_batchs_loss_and_gradients_on_t5(checkpointing):
    padded_model = _tiny_t5(packed=False, checkpointing=checkpointing)
    packed_model = _tiny_t5(packed=True, checkpointing=checkpointing)
    for model in (padded_model, packed_model):
        model.train()  # gradient checkpointing recomputes only in training mode
    rng = random.Random(5)
    for _ in range(3):
        assert_packed_matches_padded(padded_model, packed_model, seq2seq_examples(rng, 6), causal=False,
                                     grad_atol=1e-6)
    bias = packed_model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert bias.grad is not None and bias.grad.abs().sum() > 0


def test_packed_t5_examples_would_see_each_other_without_their_boundaries():
    """The check above can fail: the same rows attended as one example each change the loss."""
    examples = seq2seq_examples(random.Random(6), 6)
    packed = collate(examples, pad_id=0, pack=True)
    leaky = dict(packed)
    leaky["cu_seq_lens"] = torch.tensor([0, packed["labels"].size(1)], dtype=torch.int32)
    leaky["cu_seq_lens_source"] = torch.tensor([0, packed["input_ids"].size(1)], dtype=torch.int32)
    model = _tiny_t5(packed=True)
    with torch.no_grad():
        assert abs(_loss(model, leaky, causal=False)[0].item() - _loss(model, packed, causal=False)[0].item()) > 1e-3


def test_a_t5_switched_to_packed_attention_computes_padded_batches_and_generation_as_before():
    padded = collate(seq2seq_examples(random.Random(7), 5), pad_id=0)
    before, after = _tiny_t5(packed=False).eval(), _tiny_t5(packed=True).eval()
    with torch.no_grad():
        logits = [_loss(model, padded, causal=False)[0] for model in (before, after)]
    assert logits[0].item() == pytest.approx(logits[1].item(), abs=1e-6)
    prompt = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
    generated = [model.generate(**prompt, max_new_tokens=5, do_sample=False) for model in (before, after)]
    assert torch.equal(generated[0], generated[1])


def test_packing_is_refused_for_seq2seq_models_other_than_t5():
    from transformers import BartConfig, BartForConditionalGeneration

    from cotdistill.packed_attention import can_pack

    model = BartForConditionalGeneration(BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
                                                    encoder_attention_heads=2, decoder_attention_heads=2,
                                                    encoder_ffn_dim=16, decoder_ffn_dim=16))
    assert not can_pack(model.config) and can_pack(_tiny_t5(packed=False).config)
    with pytest.raises(ValueError, match="model_type 'bart'"):
        use_packed_attention(model)


class ReferenceVarlenKernel:
    """What a varlen flash-attention kernel computes, written plainly (one causal SDPA per example), recording
    its calls: it stands in for flash-attn / torch's varlen_attn, which run only on CUDA."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.__name__ = "reference"

    def __call__(self, q, k, v, cu, longest, scale, window, dropout):
        self.calls.append({"cu": cu.tolist(), "dtype": cu.dtype, "longest": longest, "window": window,
                           "heads": (q.size(1), k.size(1))})
        out = []
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
            qi, ki, vi = (t[start:end].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
            ki = ki.repeat_interleave(q.size(1) // k.size(1), dim=0)
            vi = vi.repeat_interleave(q.size(1) // v.size(1), dim=0)
            n = end - start
            slots = torch.arange(n)
            allowed = slots[None, :] <= slots[:, None]
            if window:
                allowed &= slots[:, None] - slots[None, :] < window
            out.append(F.scaled_dot_product_attention(qi, ki, vi, attn_mask=allowed, scale=scale).transpose(0, 1))
        return torch.cat(out)


@pytest.fixture
def reference_kernel(monkeypatch):
    """Packed causal rows go to the reference kernel, as they go to flash-attn on CUDA."""
    import cotdistill.packed_attention as pa

    kernel = ReferenceVarlenKernel()
    monkeypatch.setattr(pa, "varlen_kernel", lambda device, dtype, dropout=False: kernel)
    return kernel


@pytest.mark.parametrize("family", ["gpt2", *ROPE_FAMILIES])
def test_a_packed_row_through_a_varlen_kernel_has_the_padded_batchs_loss_and_gradients(family, reference_kernel):
    """The kernel sees the row's tokens first ([tokens, heads, dim]), int32 boundaries, the longest example and the
    grouped key/value heads unrepeated; what it returns becomes the layer's output."""
    if family == "gpt2":
        padded_model, packed_model = _tiny_gpt2(packed=False), _tiny_gpt2(packed=True)
    else:
        padded_model, packed_model = _tiny_rope(family, packed=False), _tiny_rope(family, packed=True)
    examples = random_examples(random.Random(11), 12)
    assert_packed_matches_padded(padded_model, packed_model, examples, causal=True, grad_atol=1e-5)
    packed = collate(examples, pad_id=0, pack=True)
    assert len(reference_kernel.calls) == 2  # one per layer, the backward recomputes nothing
    call = reference_kernel.calls[0]
    assert call["cu"] == packed["cu_seq_lens"].tolist() and call["dtype"] == torch.int32
    assert call["longest"] == max(b - a for a, b in zip(call["cu"][:-1], call["cu"][1:], strict=True))
    assert call["heads"] == ((4, 4) if family == "gpt2" else (4, 2))
    assert call["window"] == (512 if family == "gemma3" else 0)  # Gemma 3's first layer is a local one


def test_a_varlen_kernel_gets_a_sliding_layers_window_and_matches_the_padded_batch(reference_kernel):
    from transformers import AutoModelForCausalLM

    def model(packed: bool):
        config = _tiny_rope("gemma3", packed=False).config
        config.update(SLIDING["gemma3"])
        torch.manual_seed(0)
        built = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
        if packed:
            use_packed_attention(built)
        return built

    assert_packed_matches_padded(model(False), model(True), random_examples(random.Random(12), 8), causal=True,
                                 grad_atol=1e-5)
    assert [c["window"] for c in reference_kernel.calls] == [0, 4]


def test_repad_keeps_packed_rows_away_from_a_varlen_kernel_and_t5_never_reaches_one(reference_kernel):
    padded_model = _tiny_rope("llama", packed=False)
    repadded = _tiny_rope("llama", packed=False)
    use_packed_attention(repadded, "repad")
    assert_packed_matches_padded(padded_model, repadded, random_examples(random.Random(13), 6), causal=True,
                                 grad_atol=1e-5)
    assert_packed_matches_padded(_tiny_t5(packed=False), _tiny_t5(packed=True),
                                 seq2seq_examples(random.Random(13), 6), causal=False, grad_atol=1e-5)
    assert reference_kernel.calls == []


def test_packed_rows_re_pad_on_cpu_and_a_run_insisting_on_varlen_there_is_refused_naming_the_key():
    from cotdistill.errors import ConfigError
    from cotdistill.packed_attention import describe_packed_attention, varlen_kernel

    assert varlen_kernel("cpu", torch.bfloat16) is None
    assert varlen_kernel("cuda", torch.float32) is None  # flash kernels take half precision only
    assert "re-padded" in describe_packed_attention("auto", "cpu", torch.bfloat16)
    with pytest.raises(ConfigError, match=r"train\.packed_attention=varlen needs a CUDA device .* cpu"):
        describe_packed_attention("varlen", "cpu", torch.bfloat16)
    with pytest.raises(ConfigError, match="causal students"):
        describe_packed_attention("varlen", "cuda", torch.bfloat16, causal=False)
    model = _tiny_rope("llama", packed=False)
    use_packed_attention(model, "varlen")
    with pytest.raises(ConfigError, match="varlen needs a CUDA device"):
        _loss(model, collate(random_examples(random.Random(14), 4), pad_id=0, pack=True))


def test_the_flash_kernels_get_a_sliding_window_of_w_as_w_minus_1_keys_back(monkeypatch, request):
    """flash-attn's and torch's window_size=(left, right) count keys besides the query's own; transformers'
    sliding_window W counts the query's own too (our re-padded mask: query - key < W)."""
    import sys
    import types

    import torch.nn.attention.varlen as torch_varlen

    from cotdistill.packed_attention import _flash_attn_kernel, _torch_varlen_kernel

    for getter in (_flash_attn_kernel, _torch_varlen_kernel):  # looked up once per process: look again now,
        getter.cache_clear()                                    # and forget the fakes' kernels afterwards
        request.addfinalizer(getter.cache_clear)
    seen: dict[str, dict] = {}
    fake_flash = types.ModuleType("flash_attn")
    fake_flash.flash_attn_varlen_func = lambda *args, **kwargs: seen.setdefault("flash", kwargs) and args[0]
    monkeypatch.setitem(sys.modules, "flash_attn", fake_flash)
    monkeypatch.setattr(torch_varlen, "varlen_attn", lambda *args, **kwargs: seen.setdefault("torch", kwargs))
    q, kv, cu = torch.zeros(6, 4, 8), torch.zeros(6, 2, 8), torch.tensor([0, 2, 6], dtype=torch.int32)
    _flash_attn_kernel()(q, kv, kv, cu, 4, 0.5, 4, 0.1)
    _torch_varlen_kernel()(q, kv, kv, cu, 4, 0.5, 4, 0.0)
    assert seen["flash"]["causal"] and seen["flash"]["window_size"][0] == 3
    assert seen["flash"]["softmax_scale"] == 0.5 and seen["flash"]["dropout_p"] == 0.1
    assert seen["torch"]["window_size"] == (3, 0) and seen["torch"]["enable_gqa"] and seen["torch"]["scale"] == 0.5
    seen.clear()
    _flash_attn_kernel()(q, kv, kv, cu, 4, None, 0, 0.0)
    _torch_varlen_kernel()(q, kv, kv, cu, 4, None, 0, 0.0)
    assert seen["flash"]["window_size"] == (-1, -1) and seen["torch"]["window_size"] == (-1, 0)


def test_a_model_capping_its_attention_logits_is_padded_not_packed():
    from transformers import AutoConfig

    from cotdistill.packed_attention import can_pack

    capped = AutoConfig.for_model("gemma2", attn_logit_softcapping=50.0)
    assert not can_pack(capped)
    assert can_pack(AutoConfig.for_model("gemma2", attn_logit_softcapping=None))


def test_the_kernels_are_looked_up_once_not_in_every_attention_call():
    """Python does not remember a failed import: without flash-attn installed, looking it up in every layer's
    attention call would search the file system each time."""
    from cotdistill.packed_attention import _flash_attn_kernel, varlen_kernel

    _flash_attn_kernel.cache_clear()
    for _ in range(5):
        varlen_kernel("cuda", torch.bfloat16)
    assert _flash_attn_kernel.cache_info().misses == 1 and _flash_attn_kernel.cache_info().hits == 4
