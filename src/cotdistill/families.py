"""The student families cotdistill knows, in one registry: what each needs from the rest of the code.

Every per-family rule lives in a `Family` entry here, so adding a Llama-like family is one `register` call
(plus its tests): its kind, the transformers ``model_type``s it covers, whether our packed attention
supports it and whether fp16 is safe, its special-token rules, the shape the memory planner and FLOP count
use, and how to build a tiny offline model of it (config and tokenizer trainer). `family_of` finds the
entry of a config, a ``model_type`` or a family name.

A checkpoint whose ``model_type`` has no entry still trains through transformers' Auto classes (any
causal or seq2seq LM); the registry is what cotdistill promises and tests.

Special tokens: a causal sequence is prompt + target + EOS, and the prompt starts with the special ids the
tokenizer itself puts before a text (``cotdistill.batching.prompt_prefix_ids``): Llama 3's tokenizer adds
``<|begin_of_text|>``, Gemma's ``<bos>``, GPT-2's and Qwen's nothing. ``bos_first`` records the family's
convention, which its tiny tokenizer follows; a checkpoint's own tokenizer stays the authority (SmolLM2,
model_type llama, adds no BOS, and was trained that way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cotdistill.errors import ConfigError

if TYPE_CHECKING:
    from transformers import GPT2Config, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from cotdistill.config import TinyModelConfig

ModelKind = Literal["seq2seq", "causal"]
# (size, tokenizer or None) -> config; without a tokenizer the vocabulary is the size's cap and no special ids
# are set (what the memory planner needs before any tokenizer exists).
TinyConfigFn = Callable[["TinyModelConfig", "PreTrainedTokenizerBase | None"], "PretrainedConfig"]
TokenizerTrainer = Callable[[list[str], int, int], "PreTrainedTokenizerBase"]

# T5's logits are final_layer_norm(h) * d_model**-0.5 @ shared.T, so with the standard init (embedding
# std 1, norm gain 1) their std is ~1 and the first loss sits ~25% above ln V. The decoder's final norm
# gain sets that scale alone: 0.4 brings the first loss within ~2% of ln V. A smaller initializer_factor
# does the same but shrinks every layer: on arithmetic text (AdamW 1e-3, 300 steps) factor 0.3 ended at
# loss 1.79, this gain at 0.83, the standard init at 0.61.
T5_OUTPUT_NORM_GAIN = 0.4
# GPT-2's and Llama's default: logit std ~= 0.02 * sqrt(hidden), already near-uniform at tiny widths.
INITIALIZER_RANGE = 0.02


@dataclass(frozen=True)
class Family:
    """What cotdistill needs to know about one student family.

    ``planner_shape`` names the layer shape `memory_plan` and `flops` count ("t5", "gpt2", "llama": grouped-
    query attention, gated MLP, embeddings tied or not, read from the standard config attributes).
    ``decoder_start`` is the special token a seq2seq decoder starts from ("pad" for T5), None for causal LMs.
    ``init_tiny`` adjusts a freshly built tiny model so its first loss is near ln V. How a family packs follows
    from its kind: a causal family's rows go to a varlen flash-attention kernel on CUDA where one is installed
    and are re-padded per example otherwise; T5's rows always re-pad, since its relative position bias is added
    inside attention (`cotdistill.packed_attention`).
    """

    name: str
    label: str
    model_types: tuple[str, ...]
    kind: ModelKind
    packs: bool
    fp16_safe: bool
    bos_first: bool
    decoder_start: str | None
    planner_shape: str
    tiny_config: TinyConfigFn
    train_tokenizer: TokenizerTrainer
    init_tiny: Callable[[PreTrainedModel], None] | None = None

    def special_ids(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
        """The config's special ids for a model over ``tokenizer`` (tiny or random full-size)."""
        ids: dict[str, int | None] = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        if self.kind == "seq2seq":
            ids["decoder_start_token_id"] = getattr(tokenizer, f"{self.decoder_start}_token_id")
        else:
            ids["bos_token_id"] = tokenizer.bos_token_id
        return ids


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (or replace one of the same name); its model_types must not belong to another family."""
    for other in FAMILIES.values():
        shared = set(other.model_types) & set(family.model_types)
        if other.name != family.name and shared:
            raise ValueError(f"model_type {sorted(shared)} already belongs to family {other.name!r}")
    FAMILIES[family.name] = family
    return family


def family_names() -> tuple[str, ...]:
    """The registered family names, in registration order (make-tiny's choices)."""
    return tuple(FAMILIES)


def find_family(config_or_name: PretrainedConfig | str) -> Family | None:
    """The family of a config (by its model_type), or of a string naming a family or a model_type; None when
    none is registered. A config never matches by family name: Gemma 3's multimodal model_type "gemma3" is not
    the text-only family "gemma3" (model_type gemma3_text)."""
    if isinstance(config_or_name, str) and config_or_name in FAMILIES:
        return FAMILIES[config_or_name]
    key = config_or_name if isinstance(config_or_name, str) else config_or_name.model_type
    return next((f for f in FAMILIES.values() if key in f.model_types), None)


def family_of(config_or_name: PretrainedConfig | str) -> Family:
    """Like `find_family`, but an unknown one is a ConfigError naming the known families."""
    family = find_family(config_or_name)
    if family is None:
        key = config_or_name if isinstance(config_or_name, str) else config_or_name.model_type
        raise ConfigError(f"no student family for {key!r}; known families: {', '.join(FAMILIES)} "
                          f"(model types: {', '.join(t for f in FAMILIES.values() for t in f.model_types)})")
    return family


def family_named(name: str, what: str = "tiny architecture") -> Family:
    """The family registered under exactly ``name`` (not a model_type): make-tiny's argument."""
    if name not in FAMILIES:
        raise ConfigError(f"{what} {name!r} is not one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def packable_seq2seq() -> tuple[str, ...]:
    """The seq2seq model_types our packed attention supports."""
    return tuple(t for f in FAMILIES.values() if f.kind == "seq2seq" and f.packs for t in f.model_types)


def _vocab(size: TinyModelConfig, tokenizer: PreTrainedTokenizerBase | None) -> int:
    return len(tokenizer) if tokenizer is not None else size.vocab_size


def _config_class(config_class: type[PretrainedConfig] | str) -> type[PretrainedConfig]:
    """A config class, or the name of one of transformers' (resolved only when a config is built, so that importing
    this registry, as validating a recipe does, does not import transformers' models)."""
    if isinstance(config_class, str):
        import transformers

        return getattr(transformers, config_class)
    return config_class


def _class_name(config_class: type[PretrainedConfig] | str) -> str:
    return config_class if isinstance(config_class, str) else config_class.__name__


def t5_like_config(config_class: type[PretrainedConfig] | str) -> TinyConfigFn:
    """The tiny config builder of a T5-shaped family: FlanT5's gated-GELU layout, special ids the tokenizer's,
    decoder start = pad as in T5. ``config_class``: the class or its name in ``transformers``."""

    def build(size: TinyModelConfig, tokenizer: PreTrainedTokenizerBase | None) -> PretrainedConfig:
        config = _config_class(config_class)(
            vocab_size=_vocab(size, tokenizer),
            d_model=size.d_model,
            d_kv=size.d_model // size.num_heads,
            d_ff=size.d_ff,
            num_layers=size.num_layers,
            num_decoder_layers=size.num_layers,
            num_heads=size.num_heads,
            feed_forward_proj="gated-gelu",
            dropout_rate=size.dropout,
        )
        if tokenizer is not None:
            config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
            config.decoder_start_token_id = tokenizer.pad_token_id
        return config

    build.__doc__ = f"A tiny gated-GELU {_class_name(config_class)} over the tokenizer's vocabulary and special ids."
    return build


def _t5_output_gain(model: PreTrainedModel) -> None:
    import torch

    with torch.no_grad():
        model.decoder.final_layer_norm.weight.fill_(T5_OUTPUT_NORM_GAIN)


def _gpt2_tiny_config(size: TinyModelConfig, tokenizer: PreTrainedTokenizerBase | None) -> GPT2Config:
    """A GPT-2 config whose bos, eos and pad ids are all the tokenizer's ``<|endoftext|>``."""
    from transformers import GPT2Config

    config = GPT2Config(
        vocab_size=_vocab(size, tokenizer),
        n_positions=size.n_positions,
        n_embd=size.d_model,
        n_layer=size.num_layers,
        n_head=size.num_heads,
        n_inner=size.d_ff,
        resid_pdrop=size.dropout,
        embd_pdrop=size.dropout,
        attn_pdrop=size.dropout,
        initializer_range=INITIALIZER_RANGE,
        # given here, not set after: GPT2Config's default ids (50256) lie outside a tiny vocabulary, which
        # transformers warns about at construction
        **({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id} if tokenizer is not None else {}),
    )
    return config


def tiny_kv_heads(num_heads: int) -> int:
    """Key/value heads of a tiny Llama-like student: half the query heads when even (grouped-query attention,
    as every small Llama, SmolLM2 and Qwen has), else one per query head."""
    return num_heads // 2 if num_heads % 2 == 0 else num_heads


def llama_like_config(config_class: type[PretrainedConfig] | str) -> TinyConfigFn:
    """The tiny config builder of a Llama-shaped family (RoPE, RMSNorm, gated MLP, grouped-query attention,
    tied embeddings as in the small published sizes): the config class (or its name in ``transformers``) is all
    that differs."""

    def build(size: TinyModelConfig, tokenizer: PreTrainedTokenizerBase | None) -> PretrainedConfig:
        config = _config_class(config_class)(
            vocab_size=_vocab(size, tokenizer),
            hidden_size=size.d_model,
            intermediate_size=size.d_ff,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_heads,
            num_key_value_heads=tiny_kv_heads(size.num_heads),
            head_dim=size.d_model // size.num_heads,
            max_position_embeddings=size.n_positions,
            attention_dropout=size.dropout,
            initializer_range=INITIALIZER_RANGE,
            tie_word_embeddings=True,
        )
        if tokenizer is not None:
            config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id
        return config

    build.__doc__ = f"A tiny {_class_name(config_class)} over the tokenizer's vocabulary and special ids."
    return build


# Gemma 3 270M and 1B: local layers attend to the last 512 tokens, one global layer in six.
GEMMA3_WINDOW, GEMMA3_PATTERN = 512, 6


def _gemma3_tiny_config(size: TinyModelConfig, tokenizer: PreTrainedTokenizerBase | None) -> PretrainedConfig:
    """A tiny Gemma 3 text model: Llama's shape with q/k norms, embeddings scaled by sqrt(hidden), and sliding-
    window layers (every sixth global, the last one always: with 2 layers, one of each)."""
    config = llama_like_config("Gemma3TextConfig")(size, tokenizer)
    config.query_pre_attn_scalar = config.head_dim
    config.sliding_window = min(GEMMA3_WINDOW, size.n_positions)
    config.layer_types = ["full_attention" if (i + 1) % GEMMA3_PATTERN == 0 or i == size.num_layers - 1
                          else "sliding_attention" for i in range(size.num_layers)]
    return config


# The chat layouts of the published instruct checkpoints, reduced to the turns themselves (no default system
# prompt, tools or thinking blocks), so a tiny student can test ``data.chat_template`` offline. ChatML
# (Qwen2.5, Qwen3, SmolLM2): every turn ends with <|im_end|> and a newline.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Gemma 3: <bos>, turns framed by <start_of_turn>ROLE / <end_of_turn>, the assistant is "model", text trimmed.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if message['role'] == "
    "'assistant' else message['role']) + '\\n' + (message['content'] | trim) + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")


def with_chat_template(train: TokenizerTrainer, template: str) -> TokenizerTrainer:
    """A tokenizer trainer whose tokenizers carry ``template`` as their chat template (saved with them), as an
    instruct checkpoint's tokenizer does: what ``data.chat_template`` renders examples through."""

    def trainer(texts: list[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerBase:
        tokenizer = train(texts, vocab_size, model_max_length)
        tokenizer.chat_template = template
        return tokenizer

    trainer.__doc__ = f"{train.__doc__ or train.__name__}\n\nWith a chat template."
    return trainer


def _trainer(name: str) -> TokenizerTrainer:
    """``cotdistill.tokenizers_train.<name>``, imported at the first call (it imports transformers' tokenizers)."""

    def train(texts: list[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerBase:
        from cotdistill import tokenizers_train

        return getattr(tokenizers_train, name)(texts, vocab_size, model_max_length)

    train.__name__ = train.__qualname__ = name
    return train


train_t5_tokenizer = _trainer("train_t5_tokenizer")
train_gpt2_tokenizer = _trainer("train_gpt2_tokenizer")
train_llama_tokenizer = _trainer("train_llama_tokenizer")
train_qwen_tokenizer = _trainer("train_qwen_tokenizer")
train_gemma_tokenizer = _trainer("train_gemma_tokenizer")


def _causal(name: str, label: str, model_types: tuple[str, ...], bos_first: bool, planner_shape: str,
            tiny_config: TinyConfigFn, train_tokenizer: TokenizerTrainer) -> Family:
    """A causal family that packs and is fp16-safe (GPT-2, Llama, Qwen)."""
    return Family(name=name, label=label, model_types=model_types, kind="causal", packs=True, fp16_safe=True,
                  bos_first=bos_first, decoder_start=None, planner_shape=planner_shape, tiny_config=tiny_config,
                  train_tokenizer=train_tokenizer)


# T5 activations overflow fp16 (above 65504): training produces NaN (ds_config.check_precision).
register(Family(name="t5", label="T5", model_types=("t5", "mt5"), kind="seq2seq", packs=True,
                fp16_safe=False, bos_first=False, decoder_start="pad", planner_shape="t5",
                tiny_config=t5_like_config("T5Config"), train_tokenizer=train_t5_tokenizer,
                init_tiny=_t5_output_gain))
# UMT5 has a relative position bias in every layer, which the packed attention's T5 hook does not cover.
register(Family(name="umt5", label="UMT5", model_types=("umt5",), kind="seq2seq", packs=False,
                fp16_safe=False, bos_first=False, decoder_start="pad", planner_shape="t5",
                tiny_config=t5_like_config("UMT5Config"), train_tokenizer=train_t5_tokenizer,
                init_tiny=_t5_output_gain))
register(_causal("gpt2", "GPT-2", ("gpt2",), bos_first=False, planner_shape="gpt2",
                 tiny_config=_gpt2_tiny_config, train_tokenizer=train_gpt2_tokenizer))
# Llama 3.x (and SmolLM2, also model_type llama): <|begin_of_text|> first.
register(_causal("llama", "Llama", ("llama",), bos_first=True, planner_shape="llama",
                 tiny_config=llama_like_config("LlamaConfig"), train_tokenizer=train_llama_tokenizer))
# Qwen2/2.5 (q/k/v biases) and Qwen3 (q/k RMSNorm): no BOS, Llama's shape otherwise.
register(_causal("qwen2", "Qwen2", ("qwen2",), bos_first=False, planner_shape="llama",
                 tiny_config=llama_like_config("Qwen2Config"),
                 train_tokenizer=with_chat_template(train_qwen_tokenizer, CHATML_TEMPLATE)))
register(_causal("qwen3", "Qwen3", ("qwen3",), bos_first=False, planner_shape="llama",
                 tiny_config=llama_like_config("Qwen3Config"),
                 train_tokenizer=with_chat_template(train_qwen_tokenizer, CHATML_TEMPLATE)))
# Gemma 3 text models (270M, 1B; model_type gemma3_text): <bos> first. fp16 is refused as for T5: Gemma's
# activations are known to exceed fp16's range (its checkpoints are bf16).
register(Family(name="gemma3", label="Gemma 3", model_types=("gemma3_text",), kind="causal", packs=True,
                fp16_safe=False, bos_first=True, decoder_start=None, planner_shape="llama",
                tiny_config=_gemma3_tiny_config,
                train_tokenizer=with_chat_template(train_gemma_tokenizer, GEMMA_TEMPLATE)))

