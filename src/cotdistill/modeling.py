"""Load student models and tokenizers, and make tiny offline ones, always through ``from_pretrained``.

ZeRO-3 load path: the engine creates transformers' ``HfDeepSpeedConfig`` (stage 3) and keeps a
reference to it alive while ``load_model`` runs; ``from_pretrained`` sees it and builds the model inside
``deepspeed.zero.Init`` itself, so parameters are partitioned as they are created and then filled from
the checkpoint. This module therefore never imports deepspeed. A randomly initialised model must never
be built inside ``deepspeed.zero.Init`` directly (e.g. ``from_config`` under an active ZeRO-3 config):
its weights do not get transformers' initialisation, and such a model started at a loss near 44 instead
of ln(vocab size). Tiny test models are therefore created on CPU by ``make_tiny``, saved with
``save_pretrained``, and loaded like any real checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from cotdistill.config import TinyModelConfig
from cotdistill.errors import ConfigError
from cotdistill.families import ModelKind, family_named, find_family
from cotdistill.packed_attention import use_packed_attention
from cotdistill.targets import looks_like_a_path

PathLike = str | os.PathLike[str]
# make_tiny's first argument may still be a kind, meaning the family each kind had before the registry.
_FAMILY_OF_KIND = {"seq2seq": "t5", "causal": "gpt2"}


def detect_kind(name_or_path: PathLike) -> ModelKind:
    """Say whether a checkpoint is a seq2seq (T5-like) or a causal LM, from its config alone."""
    return _kind_of(_read_config(name_or_path), name_or_path)


def _read_config(name_or_path: PathLike) -> PretrainedConfig:
    """Read a config, turning transformers' many "cannot read" errors into one that names the path."""
    if looks_like_a_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        # A path, not a hub id: transformers would complain about the form of repository names.
        raise ConfigError(f"model folder {str(name_or_path)!r} does not exist")
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / "config.json").is_file():
        # transformers would answer "Should have a `model_type` key", which points at the wrong file.
        raise ConfigError(f"{str(name_or_path)!r} holds no config.json: it is not a saved Hugging Face model")
    try:
        return AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a model config from {str(name_or_path)!r}: {exc}") from exc


def _kind_of(config: PretrainedConfig, name_or_path: PathLike) -> ModelKind:
    """The registered family's kind; a model_type outside the registry by transformers' own LM mappings."""
    family = find_family(config)
    if family is not None:
        return family.kind
    if config.is_encoder_decoder and config.model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq"
    if not config.is_encoder_decoder and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ConfigError(
        f"{str(name_or_path)!r} has model_type {config.model_type!r}, which is neither a seq2seq "
        "(T5-like) nor a causal language model"
    )


def load_tokenizer(name_or_path: PathLike, kind: ModelKind | None = None) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer and make sure it can end and pad sequences.

    A causal tokenizer without a pad token (real GPT-2) gets pad = eos, the same rule ``load_model``
    applies to the config. ``padding_side`` is left as saved: the caller sets "right" for training and
    "left" for batched causal generation. T5 tokenizers append ``</s>`` when encoding, GPT-2 ones add
    nothing, so causal callers append eos themselves. ``kind`` is detected from the config when not given.
    """
    kind = kind or detect_kind(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {str(name_or_path)!r}: {exc}") from exc
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"the tokenizer of {str(name_or_path)!r} has no eos token; cannot end targets")
    if kind == "causal" and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"the tokenizer of {str(name_or_path)!r} has no pad token")
    return tokenizer


def load_model(
    name_or_path: PathLike,
    kind: ModelKind,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    packed: bool = False,
    packed_kernel: str = "auto",
) -> PreTrainedModel:
    """Load a student with ``from_pretrained`` so an active ``HfDeepSpeedConfig`` partitions it at load.

    ``dtype=None`` loads in torch's default dtype (fp32). With gradient checkpointing the KV cache is
    switched off in the config, since recomputed forwards cannot reuse it. A causal config without a pad
    id gets pad = eos, matching ``load_tokenizer``.
    """
    found = detect_kind(name_or_path)
    if found != kind:
        raise ConfigError(f"{str(name_or_path)!r} is a {found} model, but a {kind} model was requested")
    auto_class = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    try:
        with _own_lm_head(auto_class, _read_config(name_or_path)):
            model = auto_class.from_pretrained(str(name_or_path), dtype=dtype)
    except OSError as exc:
        raise ConfigError(f"cannot load model weights from {str(name_or_path)!r}: {exc}") from exc
    if kind == "causal" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = model.config.eos_token_id
    if gradient_checkpointing:
        _enable_checkpointing(model)
        model.config.use_cache = False
    if packed:  # packed training rows (train.pack_sequences); other forwards stay plain SDPA
        use_packed_attention(model, packed_kernel)
    return model


def model_skeleton(config_path: PathLike, kind: ModelKind, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A model built from its config alone, for weights that a DeepSpeed checkpoint fills in afterwards.

    Under an active ZeRO-3 ``HfDeepSpeedConfig`` transformers builds it partitioned; its random init is
    never used (the checkpoint overwrites every parameter), which is why this is safe here and not for
    training from scratch.
    """
    found = detect_kind(config_path)
    if found != kind:
        raise ConfigError(f"{str(config_path)!r} is a {found} model, but a {kind} model was requested")
    return build_from_config(_read_config(config_path), kind, dtype=dtype)


def build_from_config(config: PretrainedConfig, kind: ModelKind, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """``from_config`` that keeps FlanT5's (T5 v1.1's) LM head separate from the shared embedding.

    Without it a FlanT5 skeleton would have one matrix too few, and loading trained weights into it would
    overwrite the embedding with the head (see ``_own_lm_head``).
    """
    auto_class = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    with _own_lm_head(auto_class, config):
        return auto_class.from_config(config, dtype=dtype)


@contextmanager
def _own_lm_head(auto_class, config: PretrainedConfig) -> Iterator[None]:
    """While a T5 v1.1 (FlanT5) model is built or loaded, leave its LM head out of the tied weights.

    transformers 5 builds every T5 with ``lm_head`` tied to ``shared`` and remembers v1.1 only as
    ``scale_decoder_outputs=False``. ``from_pretrained`` unties the two when the checkpoint's values differ,
    but under ZeRO-3 the parameters are empty partitions when it compares them, so the head stays tied to the
    embedding and one of the two trained matrices is silently lost; ``from_config`` never unties. Both are
    built here with the head as a parameter of its own.
    """
    try:
        model_class = auto_class._model_mapping[type(config)]
    except KeyError:  # not a model of this kind: transformers says so
        yield
        return
    tied = getattr(model_class, "_tied_weights_keys", None)
    if getattr(config, "scale_decoder_outputs", True) is not False or not isinstance(tied, dict) \
            or "lm_head.weight" not in tied:
        yield
        return
    model_class._tied_weights_keys = {k: v for k, v in tied.items() if k != "lm_head.weight"}
    try:
        yield
    finally:
        model_class._tied_weights_keys = tied


def _enable_checkpointing(model: PreTrainedModel) -> None:
    """Use the non-reentrant checkpoint under both the new and the deprecated transformers method names."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_tiny(
    family: str,
    out_dir: PathLike,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    d_model: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 512,
    n_positions: int = 512,
    dropout: float = 0.0,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts``, build a small random model over it, save both to ``out_dir``.

    ``family`` is a registered family name (``cotdistill.families``: t5, gpt2, llama, qwen2, qwen3, ...), or
    "seq2seq" / "causal" for T5 / GPT-2. The folder then loads offline with ``AutoTokenizer`` /
    ``AutoModelFor*`` (or ``load_tokenizer`` / ``load_model``). ``vocab_size`` is a cap: a small corpus can
    yield fewer tokens, and the model's vocabulary is sized to ``len(tokenizer)`` exactly. ``num_layers`` is per
    stack (a T5 gets that many encoder and decoder layers). ``n_positions`` is the position limit (GPT-2's
    table, RoPE models' ``max_position_embeddings``) and the tokenizer's ``model_max_length``. The initial
    logits are near-uniform, so the first loss is close to ln V.
    """
    if d_model % num_heads:
        raise ConfigError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    found = family_named(_FAMILY_OF_KIND.get(family, family))
    size = TinyModelConfig(vocab_size=vocab_size, d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                           d_ff=d_ff, n_positions=n_positions, dropout=dropout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = list(texts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = found.train_tokenizer(corpus, vocab_size, n_positions)
        config = found.tiny_config(size, tokenizer)
        auto_class = AutoModelForSeq2SeqLM if found.kind == "seq2seq" else AutoModelForCausalLM
        model: PreTrainedModel = auto_class._model_mapping[type(config)](config)
        if found.init_tiny is not None:
            found.init_tiny(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
