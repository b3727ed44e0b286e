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

Decoding gives back the text up to SentencePiece's normalisation for T5 (NFKC, runs of whitespace
collapsed to one space, leading and trailing whitespace dropped) and exactly for GPT-2 (byte-level).
Characters never seen in training become ``<unk>`` for T5 unless they are printable ASCII, which is
always kept; byte-level BPE has no unknown characters.
"""

from __future__ import annotations

import io
import math
import string
from collections import Counter
from collections.abc import Iterable

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, T5Tokenizer

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
GPT2_EOS = "<|endoftext|>"
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


def train_gpt2_tokenizer(
    texts: Iterable[str], vocab_size: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` with digits split, eos = bos = unk = pad = ``<|endoftext|>``.

    Like GPT-2 the tokenizer adds no eos when encoding; the data pipeline appends it. ``vocab_size`` is a
    cap (at least 257: the end token plus the 256-byte alphabet).
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[GPT2_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=GPT2_EOS,
        bos_token=GPT2_EOS,
        unk_token=GPT2_EOS,
        pad_token=GPT2_EOS,
        model_max_length=model_max_length,
    )
