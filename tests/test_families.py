"""The student-family registry: lookups, tiny offline Llama / Qwen2 / Qwen3 students, their causal batches, and
a new Llama-like family added by one registry entry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3Config,
    LlamaConfig,
    MistralConfig,
    T5Config,
)

from cotdistill import cli
from cotdistill.batching import collate, forward_batch, prompt_prefix_ids, tokenize_examples
from cotdistill.config import TinyModelConfig, load_config
from cotdistill.ds_config import check_precision
from cotdistill.errors import ConfigError
from cotdistill.families import (
    FAMILIES,
    Family,
    family_named,
    family_of,
    find_family,
    llama_like_config,
    register,
)
from cotdistill.formats import Example
from cotdistill.modeling import detect_kind, load_model, load_tokenizer
from cotdistill.packed_attention import can_pack
from cotdistill.tiny import build_random_model, build_tiny_model
from cotdistill.tokenizers_train import train_llama_tokenizer

REPO = Path(__file__).resolve().parents[1]
NEW_FAMILIES = ["llama", "qwen2", "qwen3", "gemma3"]
SIZE = TinyModelConfig(vocab_size=320, d_model=32, num_layers=1, num_heads=4, d_ff=64, n_positions=128)
PROBLEMS = [(f"Q: Ann has {a} pens and buys {b} more. How many pens? A:",
             f" {a} + {b} = {a + b}. The answer is {a + b}.") for a in range(2, 60, 3) for b in range(1, 9)]
TEXTS = [q + t for q, t in PROBLEMS]
# One eos, one pad and one bos (None: no bos) per new family, as their published checkpoints use them.
SPECIALS = {"llama": ("<|end_of_text|>", "<|finetune_right_pad_id|>", "<|begin_of_text|>"),
            "qwen2": ("<|im_end|>", "<|endoftext|>", None), "qwen3": ("<|im_end|>", "<|endoftext|>", None),
            "gemma3": ("<eos>", "<pad>", "<bos>")}


def examples(count: int) -> list[Example]:
    return [Example(source=q, target=t, format="zero_shot_cot", problem_id=str(i))
            for i, (q, t) in enumerate(PROBLEMS[:count])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_tiny_model(name, root / name, TEXTS, SIZE, seed=0) for name in NEW_FAMILIES}


# --- lookups ---------------------------------------------------------------------------------------------


def test_a_family_is_found_by_name_model_type_or_config():
    assert family_of("t5") is family_of("mt5") is family_of(T5Config()) is FAMILIES["t5"]
    assert family_of(LlamaConfig()).name == "llama"
    assert family_of("gemma3_text") is family_of("gemma3") is FAMILIES["gemma3"]
    assert find_family(Gemma3Config()) is None  # the multimodal model_type "gemma3" is not the text family
    assert [family_of(name).kind for name in ("t5", "gpt2", "llama", "qwen2", "qwen3", "gemma3")] == \
        ["seq2seq", "causal", "causal", "causal", "causal", "causal"]


def test_an_unknown_model_type_is_a_config_error_naming_the_known_families():
    with pytest.raises(ConfigError, match="'bert'") as err:
        family_of("bert")
    assert all(name in str(err.value) for name in ("t5", "gpt2", "llama", "qwen2", "qwen3", "gemma3"))
    with pytest.raises(ConfigError, match="'mt5'"):
        family_named("mt5")  # make-tiny takes family names, not every model_type


def test_the_registry_holds_the_rules_the_rest_of_the_code_reads():
    rules = {f.name: (f.packs, f.fp16_safe, f.bos_first, f.decoder_start, f.planner_shape) for f in FAMILIES.values()}
    assert rules == {"t5": (True, False, False, "pad", "t5"), "umt5": (False, False, False, "pad", "t5"),
                     "gpt2": (True, True, False, None, "gpt2"),
                     "llama": (True, True, True, None, "llama"), "qwen2": (True, True, False, None, "llama"),
                     "qwen3": (True, True, False, None, "llama"), "gemma3": (True, False, True, None, "llama")}


def test_fp16_is_refused_for_the_t5s_and_gemma3_and_accepted_for_llama_and_qwen():
    config = load_config(None, ["model.name_or_path=m", "train.precision=fp16"])
    with pytest.raises(ConfigError, match="T5"):
        check_precision("mt5", config)
    with pytest.raises(ConfigError, match="UMT5"):
        check_precision("umt5", config)
    with pytest.raises(ConfigError, match="Gemma 3"):
        check_precision("gemma3_text", config)
    for name in ("llama", "qwen2", "qwen3"):
        check_precision(name, config)


def test_a_model_type_cannot_belong_to_two_families():
    clash = Family(name="llama2", label="Llama 2", model_types=("llama",), kind="causal", packs=True, fp16_safe=True,
                   bos_first=True, decoder_start=None, planner_shape="llama",
                   tiny_config=llama_like_config(LlamaConfig), train_tokenizer=train_llama_tokenizer)
    with pytest.raises(ValueError, match="already belongs to family 'llama'"):
        register(clash)
    assert "llama2" not in FAMILIES


def test_umt5_stays_padded_as_before_the_registry(tmp_path):
    """UMT5's per-layer position bias is outside the packed attention; T5 and mT5 pack."""
    folder = build_tiny_model("umt5", tmp_path / "umt5", TEXTS, SIZE)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "umt5" and detect_kind(folder) == "seq2seq" and not can_pack(config)
    assert can_pack(T5Config()) and family_of("mt5").packs
    with pytest.raises(ValueError, match="'umt5'"):
        load_model(folder, "seq2seq", packed=True)


# --- tiny offline students -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_a_tiny_student_loads_offline_with_its_familys_shape_and_special_tokens(tiny, name):
    config = AutoConfig.from_pretrained(tiny[name])
    tokenizer = AutoTokenizer.from_pretrained(tiny[name])
    assert config.model_type == family_named(name).model_types[0]
    assert detect_kind(tiny[name]) == "causal" and can_pack(config)
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (32, 4, 2)
    assert config.vocab_size == len(tokenizer) and 100 < len(tokenizer) <= SIZE.vocab_size
    eos, pad, bos = SPECIALS[name]
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (eos, pad, bos)
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == \
        (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    model = load_model(tiny[name], "causal")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert load_tokenizer(tiny[name]).pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_a_tiny_tokenizer_splits_digits_and_decodes_back_the_text(tiny, name):
    tokenizer = AutoTokenizer.from_pretrained(tiny[name])
    text = " Gus has 90210 + 7  = 90217 eggs, (really)!\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    digits = [p for p in (tokenizer.decode([i]) for i in ids) if any(c.isdigit() for c in p)]
    assert all(len(p.strip()) == 1 for p in digits) and len(digits) == 11
    assert not [i for i in range(len(tokenizer)) if sum(c.isdigit() for c in tokenizer.decode([i])) > 1]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_a_causal_sequence_is_bos_where_the_family_has_one_prompt_target_and_eos(tiny, name):
    tokenizer = AutoTokenizer.from_pretrained(tiny[name])
    family = FAMILIES[name]
    prefix = prompt_prefix_ids(tokenizer)
    assert prefix == ((tokenizer.bos_token_id,) if family.bos_first else ())
    (example,), _ = tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=512,
                                      max_target_tokens=512)
    prompt = tokenizer(PROBLEMS[0][0], add_special_tokens=False)["input_ids"]
    target = tokenizer(PROBLEMS[0][1], add_special_tokens=False)["input_ids"]
    assert example.input_ids == (*prefix, *prompt, *target, tokenizer.eos_token_id)
    assert example.labels == (-100,) * (len(prefix) + len(prompt)) + (*target, tokenizer.eos_token_id)


def test_a_truncated_prompt_keeps_its_bos_and_its_end(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["llama"])
    (example,), stats = tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=6,
                                          max_target_tokens=512)
    prompt = tokenizer(PROBLEMS[0][0], add_special_tokens=False)["input_ids"]
    assert stats.sources_truncated == 1
    assert example.input_ids[:6] == (tokenizer.bos_token_id, *prompt[-5:])


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_evaluation_prompts_start_as_training_sequences_start_even_when_shortened(tiny, name):
    from cotdistill.generation import ContextFit, encode_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny[name])
    (example,), _ = tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=512,
                                      max_target_tokens=512)
    prompt_length = example.labels.index(next(label for label in example.labels if label != -100))
    (encoded,) = encode_prompts(tokenizer, True, [PROBLEMS[0][0]], max_prompt_tokens=512)
    assert tuple(encoded) == example.input_ids[:prompt_length]
    fit = ContextFit()
    (short,) = encode_prompts(tokenizer, True, [PROBLEMS[0][0]], max_prompt_tokens=6, fit=fit)
    prefix = list(prompt_prefix_ids(tokenizer))
    assert short == prefix + list(encoded[-(6 - len(prefix)):]) and fit.prompts_truncated == 1


def test_gpt2_sequences_get_no_prefix(tmp_path):
    folder = build_tiny_model("gpt2", tmp_path / "gpt2", TEXTS, SIZE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert prompt_prefix_ids(tokenizer) == ()
    (example,), _ = tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=512,
                                      max_target_tokens=512)
    assert example.input_ids[0] == tokenizer(PROBLEMS[0][0])["input_ids"][0] != tokenizer.bos_token_id


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_the_first_loss_on_training_examples_is_within_10_percent_of_ln_v(tiny, name):
    tokenizer = load_tokenizer(tiny[name])
    model = load_model(tiny[name], "causal").eval()
    tokenized, _ = tokenize_examples(examples(16), tokenizer, causal=True, max_source_tokens=128,
                                     max_target_tokens=128)
    batch = collate(tokenized, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert abs(loss / math.log(len(tokenizer)) - 1.0) < 0.10, (loss, math.log(len(tokenizer)))


def test_make_tiny_on_the_command_line_builds_a_qwen3_from_a_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = cli.make_tiny("qwen3", str(tmp_path / "q3"), "recipes/demo-gpt2-synthetic.yaml",
                        "data.synthetic.train_size=64", "model.tiny.d_model=32", "model.tiny.num_layers=1",
                        "model.tiny.d_ff=64")
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "qwen3" and config.hidden_size == 32 and config.head_dim == 8
    assert load_config(None, ["model.name_or_path=m", "model.make_tiny=qwen3"]).model.make_tiny == "qwen3"


@pytest.mark.parametrize("model_type, eos, prefixed", [("llama", "<|end_of_text|>", True),
                                                       ("qwen2", "<|im_end|>", False), ("gemma3_text", "<eos>", True)])
def test_make_random_trains_the_tokenizer_of_the_configs_family(tmp_path, model_type, eos, prefixed):
    spec = tmp_path / f"{model_type}.json"
    spec.write_text(json.dumps({"model_type": model_type, "vocab_size": 1000, "hidden_size": 32,
                                "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "max_position_embeddings": 256,
                                "tie_word_embeddings": True}))
    out = build_random_model(str(spec), tmp_path / "random", TEXTS, vocab_size=300)
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 1000 and tokenizer.eos_token == eos
    assert model.config.eos_token_id == tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id
    assert bool(prompt_prefix_ids(tokenizer)) is prefixed
    assert tokenizer.model_max_length == 256


# --- one entry adds a family -----------------------------------------------------------------------------


def test_one_registry_entry_makes_a_new_llama_like_family_work_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr("cotdistill.families.FAMILIES", dict(FAMILIES))
    register(Family(name="mistral", label="Mistral", model_types=("mistral",), kind="causal", packs=True,
                    fp16_safe=True, bos_first=True, decoder_start=None, planner_shape="llama",
                    tiny_config=llama_like_config(MistralConfig), train_tokenizer=train_llama_tokenizer))
    load_config(None, ["model.name_or_path=m", "model.make_tiny=mistral"])  # accepted as a make_tiny choice
    folder = build_tiny_model("mistral", tmp_path / "mistral", TEXTS, SIZE)
    assert AutoConfig.from_pretrained(folder).model_type == "mistral"
    assert detect_kind(folder) == "causal" and family_of("mistral").planner_shape == "llama"
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, "causal", packed=True)
    tokenized, _ = tokenize_examples(examples(4), tokenizer, causal=True, max_source_tokens=128,
                                     max_target_tokens=128)
    assert tokenized[0].input_ids[0] == tokenizer.bos_token_id
    batch = forward_batch(collate(tokenized, pad_id=tokenizer.pad_token_id, pack=True), causal=True)
    with batch.forward_context(), torch.no_grad():
        logits = model(**batch.inputs).logits
    assert logits.shape[:2] == batch.labels.shape and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3", "t5"])
def test_building_a_tiny_model_warns_about_nothing(family, tmp_path, caplog):
    """GPT-2's config used to be built with its default ids (50256) and fixed after, which transformers warned
    about twice per build ("bos_token_id must be None or an integer within the vocabulary")."""
    import logging

    texts = ["Question: Ann has 3 apples. Ann finds 4 more. How many now? Answer: 3 + 4 = 7. The answer is 7."] * 40
    with caplog.at_level(logging.WARNING, logger="transformers"):
        build_tiny_model(family, tmp_path / family, texts, TinyModelConfig(vocab_size=300, d_model=32, num_layers=1,
                                                                           num_heads=2, d_ff=64), seed=0)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("transformers")] == []
