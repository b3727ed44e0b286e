"""Train small tokenizers for the project's tiny offline models.

Arithmetic is the point of the students, so both tokenizers put every digit in a token of its own: a
number then costs one token per digit and "127" never hides inside a merged piece the model must learn
to take apart.

- ``train_t5_tokenizer``: SentencePiece learns the pieces (BPE, ``split_digits=True``) with T5's fixed
  special ids (pad 0, eos ``</s>`` 1, unk 2); the result is wrapped as ``transformers.T5Tokenizer``.
  SentencePiece's unigram trainer is not used: in this version it finds almost no multi-character seed
  pieces on a small corpus when ``split_digits`` is on. T5Tokenizer runs a unigram (Viterbi) model, and
  BPE merge ranks make poor unigram scores ("▁h"+"as" beats "▁has"), so each piece is re-scored with
  its log frequency in the BPE encoding of the corpus. T5Tokenizer rebuilds its pre-tokenizer on every
  load, so digit splitting cannot live there; it lives in the vocabulary: no piece holds two digits, and
  Viterbi can only choose pieces that exist.
- ``train_gpt2_tokenizer``: a byte-level BPE (``tokenizers``) whose pre-tokenizer splits digits first,
  wrapped as the generic fast tokenizer so ``tokenizer.json`` (digit splitting included) loads verbatim.
- ``train_llama_tokenizer``: the same byte-level BPE with Llama 3's special tokens; its post-processor puts
  ``<|begin_of_text|>`` before every text, as Llama 3's own ``tokenizer.json`` does. Saved as the generic
  fast tokenizer (Llama 3's ``tokenizer_class``), which AutoTokenizer loads verbatim for model_type llama.
- ``train_qwen_tokenizer``: a byte-level BPE trained behind Qwen2's own normalizer (NFC) and pre-tokenizer
  regex, whose number class already isolates every digit, wrapped as ``Qwen2Tokenizer``: AutoTokenizer
  rebuilds a model_type qwen2 tokenizer with that class's fixed pre-tokenizer whatever the saved file
  says, so training behind the same one keeps training and loading identical. No BOS (Qwen's convention).
- ``train_gemma_tokenizer``: a BPE over SentencePiece-style pieces (spaces become ``▁``, unknown characters
  ``<unk>``) with Gemma's special ids (pad 0, eos 1, bos 2, unk 3, mask 4), wrapped as ``GemmaTokenizer``,
  which puts ``<bos>`` first. That class applies the merges to the whole text on load (no pre-tokenizer of
  its own), so digit splitting lives in the merges: training isolates every digit, and no merge holds one.

Decoding gives back the text up to SentencePiece's normalisation for T5 (NFKC, runs of whitespace
collapsed to one space, leading and trailing whitespace dropped) and exactly for GPT-2 (byte-level).
Characters never seen in training become ``<unk>`` for T5 unless they are printable ASCII, which is
always kept; byte-level BPE has no unknown characters.
"""

from __future__ import annotations

import io
import json
import math
import string
from collections import Counter
from collections.abc import Iterable

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GemmaTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer, T5Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN_PRETOKENIZE_REGEX

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
GPT2_EOS = "<|endoftext|>"
# Llama 3.x: base checkpoints end with <|end_of_text|>; <|finetune_right_pad_id|> is its reserved pad token.
LLAMA_BOS, LLAMA_EOS, LLAMA_PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
# Qwen2.5 / Qwen3: no BOS; instruct checkpoints end turns (and generation) with <|im_end|>, pad <|endoftext|>.
QWEN_PAD, QWEN_IM_START, QWEN_EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Gemma 3's first five ids; <start_of_turn>/<end_of_turn> frame its chat turns.
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
GEMMA_TURNS = ["<start_of_turn>", "<end_of_turn>"]
# Printable ASCII minus whitespace: any English arithmetic text then encodes without <unk>.
_ASCII_CHARS = "".join(c for c in string.printable if not c.isspace())


def train_t5_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> T5Tokenizer:
    """Train a unigram SentencePiece model on ``texts`` and wrap it with T5's special-token layout.

    ``vocab_size`` is a cap: a small corpus may support fewer pieces, and ``len(tokenizer)`` is the truth.
    """
    corpus = [text for text in texts if text.strip()]
    serialized = _train_sentencepiece(corpus, vocab_size)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(serialized)
    vocab = _unigram_scores(spm.SentencePieceProcessor(model_proto=serialized), corpus)
    if [p for p, _ in vocab[:3]] != [T5_PAD, T5_EOS, T5_UNK]:
        raise RuntimeError(f"SentencePiece put special pieces in the wrong place: {vocab[:3]}")
    return T5Tokenizer(
        vocab=vocab,
        eos_token=T5_EOS,
        unk_token=T5_UNK,
        pad_token=T5_PAD,
        extra_ids=0,
        _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap or None,
        model_max_length=model_max_length,
    )


def _train_sentencepiece(corpus: list[str], vocab_size: int) -> bytes:
    """Run the SentencePiece trainer in memory and return the serialized model proto."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        required_chars=_ASCII_CHARS,
        split_digits=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece=T5_PAD,
        eos_piece=T5_EOS,
        unk_piece=T5_UNK,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


def _unigram_scores(processor: spm.SentencePieceProcessor, corpus: list[str]) -> list[tuple[str, float]]:
    """Score each piece by its log frequency in the BPE encoding of ``corpus``, in id order.

    Pieces the encoding never emits (merge intermediates, unseen required characters) get a score below
    every seen piece, so Viterbi falls back to them only when nothing else covers the text. The three
    special pieces keep score 0, as in T5's own vocabulary.
    """
    counts = Counter(piece_id for ids in processor.encode(corpus) for piece_id in ids)
    total = sum(counts.values()) + 1
    unseen = math.log(0.5 / total)
    specials = {processor.pad_id(), processor.eos_id(), processor.unk_id()}
    return [
        (
            processor.id_to_piece(i),
            0.0 if i in specials else (math.log(counts[i] / total) if counts[i] else unseen),
        )
        for i in range(processor.get_piece_size())
    ]


def _byte_level_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str],
                    pre_tokenizer: pre_tokenizers.PreTokenizer,
                    normalizer: normalizers.Normalizer | None = None) -> Tokenizer:
    """Train a byte-level BPE whose special tokens take the first ids, in the order given."""
    backend = Tokenizer(models.BPE())
    if normalizer is not None:
        backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def _digits_then_bytes() -> pre_tokenizers.PreTokenizer:
    """GPT-2's byte-level split with every digit cut out first."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def train_gpt2_tokenizer(
    texts: Iterable[str], vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` with digits split, eos = bos = unk = pad = ``<|endoftext|>``.

    Like GPT-2 the tokenizer adds no eos when encoding; the data pipeline appends it. ``vocab_size`` is a
    cap (at least 257: the end token plus the 256-byte alphabet).
    """
    backend = _byte_level_bpe(texts, vocab_size, [GPT2_EOS], _digits_then_bytes())
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=GPT2_EOS,
        bos_token=GPT2_EOS,
        unk_token=GPT2_EOS,
        pad_token=GPT2_EOS,
        model_max_length=model_max_length,
    )


def train_llama_tokenizer(
    texts: Iterable[str], vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Train a Llama-3-style byte-level BPE: digits split, ``<|begin_of_text|>`` put before every text.

    eos ``<|end_of_text|>`` (appended by the data pipeline, not the tokenizer), pad
    ``<|finetune_right_pad_id|>``; byte-level, so no unknown token. ``vocab_size`` is a cap (at least 259).
    """
    backend = _byte_level_bpe(texts, vocab_size, [LLAMA_BOS, LLAMA_EOS, LLAMA_PAD], _digits_then_bytes())
    bos_id = backend.token_to_id(LLAMA_BOS)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{LLAMA_BOS}:0 $A:0",
                pair=f"{LLAMA_BOS}:0 $A:0 {LLAMA_BOS}:1 $B:1",
                special_tokens=[(LLAMA_BOS, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        pad_token=LLAMA_PAD,
        model_max_length=model_max_length,
    )


def train_qwen_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> Qwen2Tokenizer:
    """Train a Qwen-style byte-level BPE (Qwen2's normalizer and pre-tokenizer; digits split by its regex).

    No bos (Qwen's convention); eos ``<|im_end|>``, pad ``<|endoftext|>``, ``<|im_start|>`` reserved for
    chat turns. ``vocab_size`` is a cap (at least 259).
    """
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    specials = [QWEN_PAD, QWEN_IM_START, QWEN_EOS]
    backend = _byte_level_bpe(texts, vocab_size, specials, pre_tokenizer, normalizers.NFC())
    trained = json.loads(backend.to_str())["model"]
    merges = _merges(trained)
    return Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=QWEN_EOS,
        pad_token=QWEN_PAD,
        extra_special_tokens=[QWEN_IM_START],
        model_max_length=model_max_length,
    )


def _merges(trained: dict) -> list[tuple[str, str]]:
    """A trained BPE model's merges as pairs, whichever of its two JSON forms it was saved in."""
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]


def train_gemma_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> GemmaTokenizer:
    """Train a Gemma-style BPE on ``texts``: ``▁`` for spaces, digits split, ``<bos>`` put first, eos ``<eos>``.

    Characters outside printable ASCII and newline that training never saw become ``<unk>``. ``vocab_size`` is
    a cap (at least the 7 special tokens, printable ASCII, ``▁`` and newline).
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("▁", behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=GEMMA_SPECIALS + GEMMA_TURNS,
        initial_alphabet=[*_ASCII_CHARS, "▁", "\n"],
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    return GemmaTokenizer(
        vocab=trained["vocab"],
        merges=_merges(trained),
        add_bos_token=True,
        extra_special_tokens=GEMMA_TURNS,
        model_max_length=model_max_length,
    )
