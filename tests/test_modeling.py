"""Tiny offline T5 / GPT-2 students: tokenizers, saved folders, first loss and the loading helpers."""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, ViTConfig

from cotdistill.errors import ConfigError
from cotdistill.modeling import ModelKind, detect_kind, load_model, load_tokenizer, make_tiny

NAMES = ["Ann", "Bob", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"]
THINGS = ["apples", "pens", "coins", "books", "cards", "eggs"]
VERBS = ["gets", "buys", "finds", "wins"]


def _pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """(question, worked answer) pairs in the shape of the project's arithmetic data."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        question = f"{name} has {a} {thing} and {rng.choice(VERBS)} {b} more. How many {thing} now?"
        pairs.append((question, f"{name} has {a} + {b} = {a + b} {thing}. The answer is {a + b}."))
    return pairs


TRAIN = _pairs(300, seed=0)
HELD_OUT = _pairs(64, seed=1)
# Unseen numbers, a double space and a leading space: T5 collapses/strips whitespace, GPT-2 keeps it.
ODD_TEXT = " Gus has 90210 + 7  = 90217 eggs, (really)!"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    texts = [text for pair in TRAIN for text in pair]
    root = tmp_path_factory.mktemp("tiny")
    return {
        "seq2seq": make_tiny("seq2seq", root / "t5", texts),
        "causal": make_tiny("causal", root / "gpt2", texts),
    }


AUTO_MODEL = {"seq2seq": AutoModelForSeq2SeqLM, "causal": AutoModelForCausalLM}
KINDS: list[ModelKind] = ["seq2seq", "causal"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_digit_is_its_own_token(tiny_dirs: dict[str, Path], kind: ModelKind) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[kind])
    ids = tokenizer(ODD_TEXT, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(p.strip().isdigit() and len(p.strip()) == 1 for p in digit_pieces), pieces
    assert "".join(p.strip() for p in digit_pieces) == "".join(c for c in ODD_TEXT if c.isdigit())
    vocab_texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    assert not [t for t in vocab_texts if sum(c.isdigit() for c in t) > 1]


@pytest.mark.parametrize("kind", KINDS)
def test_decode_gives_back_the_text(tiny_dirs: dict[str, Path], kind: ModelKind) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[kind])
    for text in [HELD_OUT[0][0], HELD_OUT[0][1], ODD_TEXT]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids or kind == "causal"
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        # SentencePiece collapses whitespace runs and strips the ends; byte-level BPE is exact.
        assert decoded == (" ".join(text.split()) if kind == "seq2seq" else text)


def test_t5_tokenizer_has_t5_special_ids_and_appends_eos(tiny_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["seq2seq"])
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_dirs["seq2seq"])
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.eos_token == "</s>"
    assert tokenizer("1 + 1")["input_ids"][-1] == tokenizer.eos_token_id
    config = model.config
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert model.generation_config.decoder_start_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_gpt2_tokenizer_ends_and_pads_with_endoftext(tiny_dirs: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["causal"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["causal"])
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    eos = tokenizer.eos_token_id
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id) == (eos, eos)
    config = model.config
    assert (config.eos_token_id, config.bos_token_id, config.pad_token_id) == (eos, eos, eos)
    assert model.generation_config.eos_token_id == eos
    assert model.config.n_positions == tokenizer.model_max_length == 512


@pytest.mark.parametrize("kind", KINDS)
def test_model_vocabulary_matches_tokenizer(tiny_dirs: dict[str, Path], kind: ModelKind) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[kind])
    model = AUTO_MODEL[kind].from_pretrained(tiny_dirs[kind])
    assert model.config.vocab_size == len(tokenizer) == model.get_input_embeddings().num_embeddings
    assert 200 <= len(tokenizer) <= 512  # a real subword vocabulary, under the default cap
    assert max(tokenizer.all_special_ids) < model.config.vocab_size


def _first_loss(kind: ModelKind, folder: Path) -> tuple[float, int]:
    """Mean token cross-entropy of the untrained model on held-out text, and its vocabulary size."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AUTO_MODEL[kind].from_pretrained(folder).eval()
    if kind == "seq2seq":
        batch = tokenizer([q for q, _ in HELD_OUT], return_tensors="pt", padding=True)
        labels = tokenizer([a for _, a in HELD_OUT], return_tensors="pt", padding=True)["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100
    else:
        texts = [f"{q} {a}{tokenizer.eos_token}" for q, a in HELD_OUT]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    return loss, model.config.vocab_size


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_loss_is_close_to_uniform(tiny_dirs: dict[str, Path], kind: ModelKind) -> None:
    loss, vocab_size = _first_loss(kind, tiny_dirs[kind])
    assert abs(loss / math.log(vocab_size) - 1.0) < 0.05, (loss, math.log(vocab_size))


@pytest.mark.parametrize("kind", KINDS)
def test_detect_kind_reads_the_config(tiny_dirs: dict[str, Path], kind: ModelKind) -> None:
    assert detect_kind(tiny_dirs[kind]) == kind


def test_unreadable_path_raises_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="no-such-model"):
        detect_kind(missing)
    with pytest.raises(ConfigError, match="no-such-model"):
        load_model(missing, "causal")


def test_non_language_model_is_rejected(tmp_path: Path) -> None:
    ViTConfig().save_pretrained(tmp_path / "vision")
    with pytest.raises(ConfigError, match="neither a seq2seq"):
        detect_kind(tmp_path / "vision")


def test_load_model_rejects_the_wrong_kind(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="is a causal model"):
        load_model(tiny_dirs["causal"], "seq2seq")


def _checkpointing(model: torch.nn.Module) -> bool:
    """Read the flag under its transformers 5 name, falling back to the deprecated one."""
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(model.is_gradient_checkpointing)


def test_load_model_casts_and_turns_cache_off_under_checkpointing(tiny_dirs: dict[str, Path]) -> None:
    model = load_model(tiny_dirs["seq2seq"], "seq2seq", dtype=torch.bfloat16, gradient_checkpointing=True)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert _checkpointing(model)
    assert model.config.use_cache is False
    tokenizer = load_tokenizer(tiny_dirs["seq2seq"])
    batch = tokenizer([HELD_OUT[0][0]], return_tensors="pt")
    labels = tokenizer([HELD_OUT[0][1]], return_tensors="pt")["input_ids"]
    model.train()
    model(**batch, labels=labels).loss.backward()  # the recomputing backward runs and reaches the embedding
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    plain = load_model(tiny_dirs["causal"], "causal")
    assert next(plain.parameters()).dtype == torch.float32
    assert not _checkpointing(plain)


def test_causal_checkpoint_without_pad_gets_eos_as_pad(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_dirs["causal"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.config.pad_token_id = None
    model.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id is None  # the fixture really lacks a pad
    eos = tokenizer.eos_token_id
    assert load_tokenizer(folder).pad_token_id == eos
    assert load_model(folder, "causal").config.pad_token_id == eos


def test_same_seed_gives_the_same_tiny_model(tmp_path: Path) -> None:
    texts = [text for pair in TRAIN[:100] for text in pair]
    states, vocabs = [], []
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        folder = make_tiny("causal", tmp_path / name, texts, d_model=32, num_layers=1, d_ff=64, seed=seed)
        states.append(AutoModelForCausalLM.from_pretrained(folder).state_dict())
        vocabs.append(AutoTokenizer.from_pretrained(folder).get_vocab())
    assert vocabs[0] == vocabs[1] == vocabs[2]  # the tokenizer depends on the texts only
    same, other = states[1], states[2]
    assert all(torch.equal(states[0][k], same[k]) for k in same)
    assert not torch.equal(states[0]["transformer.wte.weight"], other["transformer.wte.weight"])
