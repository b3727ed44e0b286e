"""Map a teacher's per-token top-k log-probs onto a student's tokens, for distribution matching.

Fu et al. (2023) distil by matching the teacher's next-token distribution, but teacher and student
tokenize differently. Following their dynamic-programming alignment, the two token sequences of the same
text are aligned by edit distance; where a student token is aligned to a teacher token with the same text,
the teacher's top-k alternatives are mapped into the student's vocabulary by their text. Everywhere else
(and wherever the mapped distribution would not favour the student's own token) the student learns its
token one-hot, so distillation never teaches a different text than the one being trained on.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TeacherTarget = tuple[tuple[int, ...], tuple[float, ...]]

# The text a scorer gives the teacher's end-of-sequence token (chosen or among the alternatives): it maps to the
# student's own EOS, so a teacher that would stop here says so in the student's vocabulary, whatever either
# tokenizer calls its EOS ("<|endoftext|>", "</s>", "<|im_end|>").
END_OF_TEXT = "\x00<cotdistill:end-of-text>\x00"

_MARKERS = str.maketrans({"▁": " ", "Ġ": " ", "Ċ": "\n"})
_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_ANCHOR_TEXT = "a"
_INF = 1 << 30  # off-band cells; int32 keeps the table small and INF + n cannot overflow


def normalize(text: str) -> str:
    """A token's text in plain characters: sentencepiece "▁" and byte-level "Ġ" read as spaces, "Ċ" as newline.

    Teachers report alternatives in their tokenizer's spelling (a local HF teacher may show "▁the", a raw
    byte-level vocabulary "Ġthe"); the student vocabulary is keyed by plain running text.
    """
    return text.translate(_MARKERS)


def _anchor_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """A plain token to decode in front of another, so that token reads as it does inside running text."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in tokenizer.encode(_ANCHOR_TEXT, add_special_tokens=False) if i not in special]
    if not ids:
        raise ValueError(f"the tokenizer cannot encode {_ANCHOR_TEXT!r}, so token texts cannot be read")
    return ids[-1]


def _texts_after_anchor(tokenizer: PreTrainedTokenizerBase, anchor: int, ids: Sequence[int]) -> list[str | None]:
    """Each id's text when it follows the anchor token (None when that is not a clean suffix).

    Decoding a lone sentencepiece token drops its leading space ("▁the" -> "the"); after an anchor it keeps
    it (" the"). Partial UTF-8 byte tokens decode to U+FFFD and get None.
    """
    head = tokenizer.decode([anchor], clean_up_tokenization_spaces=False)
    both = tokenizer.batch_decode([[anchor, int(i)] for i in ids], clean_up_tokenization_spaces=False)
    out: list[str | None] = []
    for text in both:
        piece = text[len(head):] if text.startswith(head) else None
        out.append(piece if piece and "\ufffd" not in piece else None)
    return out


def token_spans(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]]:
    """Character span of each id in ``text`` (the decode of all ids), so the spans tile the text exactly.

    Each boundary is where the decode of the growing prefix stops agreeing with the full text: a token that
    ends inside a multi-byte character decodes to U+FFFD there, so it gets an empty span and the token that
    completes the character carries it. Spans from ``convert_ids_to_tokens`` would not tile the text
    (sentencepiece "▁", byte-level "Ġ"). Costs one decode per token.
    """
    spans, done = [], 0
    for i in range(len(ids)):
        if i == len(ids) - 1:
            end = len(text)
        else:
            prefix = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
            end = max(done, len(os.path.commonprefix([prefix, text])))
        spans.append((done, end))
        done = end
    return spans


def token_texts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """The text of each token, such that ``"".join(result) == tokenizer.decode(ids, skip_special_tokens=True)``.

    Special tokens (eos, pad, unk) map to "". The fast path reads each token after an anchor token (one
    batched decode); if that does not rebuild the decoded text exactly (a character split over byte tokens,
    decode-time clean-up of spaces) it falls back to `token_spans`, which is exact but costs a decode per
    token. A sentencepiece decode drops the text's leading space, so the first token's text does too.
    """
    ids = [int(i) for i in ids]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    plain = [i for i in ids if i not in special]
    pieces = iter(_texts_after_anchor(tokenizer, _anchor_id(tokenizer), plain) if plain else [])
    texts: list[str | None] = ["" if i in special else next(pieces) for i in ids]
    if all(t is not None for t in texts):
        fast: list[str] = [t for t in texts if t is not None]
        joined = "".join(fast)
        if joined == full:
            return fast
        # sentencepiece: the decode drops the leading whitespace the first token carries inside running text
        first = next((k for k, t in enumerate(fast) if t), None)
        if first is not None and joined.endswith(full):
            cut = len(joined) - len(full)
            if cut <= len(fast[first]) and not fast[first][:cut].strip():
                fast[first] = fast[first][cut:]
                if "".join(fast) == full:
                    return fast
    return [full[start:stop] for start, stop in token_spans(tokenizer, ids, full)]


class StudentVocab:
    """Student token ids by the text each token has inside running text (" the", "4", ","), built once.

    Every non-special vocabulary entry is decoded after an anchor token, so sentencepiece "▁the" and
    byte-level "Ġthe" both read " the". Entries without a clean text (a partial UTF-8 byte) are left out.
    When two entries share a text, a regular piece beats a sentencepiece byte-fallback "<0x20>", then the
    lower id wins.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        special = set(tokenizer.all_special_ids)
        ids = [i for i in range(len(tokenizer)) if i not in special]
        texts = _texts_after_anchor(tokenizer, _anchor_id(tokenizer), ids)
        pieces = tokenizer.convert_ids_to_tokens(ids)
        self.eos_id: int | None = tokenizer.eos_token_id
        self._by_text: dict[str, int] = {}
        self._by_id: dict[int, str] = {}
        fallback: set[int] = set()
        for token_id, text, piece in zip(ids, texts, pieces, strict=True):
            if text is None:
                continue
            self._by_id[token_id] = text
            is_fallback = bool(_BYTE_FALLBACK.match(str(piece)))
            if is_fallback:
                fallback.add(token_id)
            known = self._by_text.get(text)
            if known is None or (known in fallback and not is_fallback):
                self._by_text[text] = token_id

    def __len__(self) -> int:
        return len(self._by_text)

    def lookup(self, text: str) -> int | None:
        """The student id whose running text is `text` after normalizing "▁"/"Ġ"/"Ċ"; None when there is none."""
        return self._by_text.get(normalize(text))

    def text(self, token_id: int) -> str | None:
        """The running text of a student id (with its leading space), None for special or unclean tokens."""
        return self._by_id.get(int(token_id))


def _keys(tokens: Sequence[str]) -> list[str]:
    """Comparison keys: normalized text; leading whitespace is dropped up to and inside the first token with text.

    The student target starts with a space (" After ...") while the teacher's rationale may start without
    one ("After ...") or with a newline, and a sentencepiece decode drops it anyway: so only the text's
    leading whitespace is ignored. Whitespace-only tokens before it get the key "" and never match.
    """
    keys = [normalize(t) for t in tokens]
    for k, key in enumerate(keys):
        stripped = key.lstrip()
        keys[k] = stripped
        if stripped:
            break
    return keys


def align(teacher: Sequence[str], student: Sequence[str], band: int = 32) -> list[int | None]:
    """For each student token, the index of the teacher token it is aligned to with equal text, else None.

    Edit-distance alignment (match 0, substitution 1, insertion/deletion 1) of the normalized token texts
    (see `normalize`; the text's leading whitespace does not count, see `_keys`). A common prefix and suffix
    are matched first; the rest is computed in a band of `band` cells around the diagonal, widened by the
    length difference, one numpy row at a time (the in-row insertion chain is a running minimum), so a
    200 x 200 pair takes about a millisecond. Ties prefer a match, then a teacher-side deletion.
    """
    t_keys, s_keys = _keys(teacher), _keys(student)
    result: list[int | None] = [None] * len(s_keys)
    n, m = len(t_keys), len(s_keys)
    head = 0
    while head < min(n, m) and t_keys[head] == s_keys[head]:
        if t_keys[head]:
            result[head] = head
        head += 1
    tail = 0
    while tail < min(n, m) - head and t_keys[n - 1 - tail] == s_keys[m - 1 - tail]:
        if t_keys[n - 1 - tail]:
            result[m - 1 - tail] = n - 1 - tail
        tail += 1
    t_mid, s_mid = t_keys[head:n - tail], s_keys[head:m - tail]
    for t_index, s_index in _banded_matches(t_mid, s_mid, band):
        result[head + s_index] = head + t_index
    return result


def _edit_rows(t_keys: Sequence[str], s_keys: Sequence[str], band: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The banded edit-distance table (one full-width row per teacher prefix, cells off the band huge) and costs.

    cost[i, j] is 0 where teacher i and student j have the same non-empty key, else 1.
    """
    n, m = len(t_keys), len(s_keys)
    codes: dict[str, int] = {}
    t_codes = np.array([codes.setdefault(k, len(codes)) if k else -1 for k in t_keys], dtype=np.int32)
    s_codes = np.array([codes.setdefault(k, len(codes)) if k else -2 for k in s_keys], dtype=np.int32)
    cost = (t_codes[:, None] != s_codes[None, :]).astype(np.int32)  # empty keys never match: -1 != -2
    below, above = band + max(0, n - m), band + max(0, m - n)
    columns = np.arange(m + 1, dtype=np.int32)
    rows = [np.where(columns <= above, columns, _INF)]
    for i in range(1, n + 1):
        lo, hi = max(0, i - below), min(m, i + above)
        prev = rows[-1]
        up = prev[lo:hi + 1] + 1
        diag = np.full(hi - lo + 1, _INF, dtype=np.int32)
        start = max(lo, 1)
        diag[start - lo:] = prev[start - 1:hi] + cost[i - 1, start - 1:hi]
        span = columns[lo:hi + 1]
        # insertions chain along the row: D[j] = min over k <= j of (best[k] + j - k), a running minimum
        best = np.minimum.accumulate(np.minimum(up, diag) - span) + span
        row = np.full(m + 1, _INF, dtype=np.int32)
        row[lo:hi + 1] = best
        rows.append(row)
    return rows, cost


def _banded_matches(t_keys: Sequence[str], s_keys: Sequence[str], band: int) -> list[tuple[int, int]]:
    """(teacher index, student index) of the equal, non-empty pairs on a banded minimum edit-distance path."""
    n, m = len(t_keys), len(s_keys)
    if not n or not m:
        return []
    rows, cost = _edit_rows(t_keys, s_keys, band)
    matches = []
    i, j = n, m
    while i > 0 and j > 0:
        here = rows[i][j]
        if here == rows[i - 1][j - 1] + cost[i - 1, j - 1]:
            if not cost[i - 1, j - 1]:
                matches.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif here == rows[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    matches.reverse()
    return matches


def teacher_targets(
    teacher_tokens: Sequence[Sequence[Any]],
    target_ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    vocab: StudentVocab,
    renormalize: bool = True,
) -> list[TeacherTarget | None]:
    """Per student target position, the teacher's distribution as (student ids, probabilities), or None.

    `teacher_tokens` are ``[text, logprob, [[alt_text, alt_logprob], ...]]`` whose texts spell the
    rationale; `target_ids` are the student's target ids as batching makes them (with the appended eos or
    ``</s>``). At a student position aligned to a teacher token with the same text, the teacher's top-k
    list (plus its chosen token if the list lacks it) becomes probabilities exp(logprob); each candidate is
    mapped to the student id with the same text (a candidate spelling the student's own token maps to that
    token), candidates the student cannot spell in one token are dropped, and duplicates are summed. On the
    text's first token the candidates take the student token's leading whitespace instead of their own
(whitespace-only candidates are dropped there), since the student target always starts with one space
while a teacher's rationale may start with none or a newline.

    None means one-hot on the student's own token; it is returned for special tokens, unaligned positions
    and wherever the student's token would not be the strict argmax of the mapped distribution, so the
    target never prefers a different token than the text being learned.

    `renormalize` (train.kd_renormalize) decides what happens to the mass of the dropped candidates and of
    the tail beyond the top-k: True divides the kept probabilities by their sum (the student matches the
    teacher's shape among the tokens it can spell); False keeps them as the teacher gave them and adds the
    remaining mass (1 - sum) to the student's own token (more conservative: the target stays closer to
    one-hot). Either way every returned distribution sums to 1 and lists the student's token first.
    """
    return [None if teacher is None else _target_at(teacher, token_id, vocab, renormalize, first)
            for token_id, teacher, first in _aligned_positions(teacher_tokens, target_ids, tokenizer)]


def _aligned_positions(teacher_tokens: Sequence[Sequence[Any]], target_ids: Sequence[int],
                       tokenizer: PreTrainedTokenizerBase) -> list[tuple[int, Sequence[Any] | None, bool]]:
    """Per student position: (its id, the teacher token aligned to it or None, whether either is its text's first
    token). Special tokens and unaligned positions get None, except a final student EOS when the teacher's tokens
    end with the teacher's own (`END_OF_TEXT`, as the on-policy scorers report it): those two are aligned."""
    target_ids = [int(i) for i in target_ids]
    if (target_ids and teacher_tokens and str(teacher_tokens[-1][0]) == END_OF_TEXT
            and target_ids[-1] == tokenizer.eos_token_id):
        return [*_aligned_positions(teacher_tokens[:-1], target_ids[:-1], tokenizer),
                (target_ids[-1], teacher_tokens[-1], False)]
    special = set(tokenizer.all_special_ids)
    student = token_texts(tokenizer, target_ids)
    teacher = [str(token[0]) for token in teacher_tokens]
    aligned = align(teacher, student)
    t_first, s_first = _first_with_text(teacher), _first_with_text(student)
    return [(token_id, None, False) if token_id in special or t_index is None
            else (token_id, teacher_tokens[t_index], t_index == t_first or position == s_first)
            for position, (token_id, t_index) in enumerate(zip(target_ids, aligned, strict=True))]


def _first_with_text(tokens: Sequence[str]) -> int | None:
    """Index of the first token that is not all whitespace (the one whose leading whitespace `_keys` drops)."""
    return next((k for k, token in enumerate(tokens) if normalize(token).strip()), None)


def _target_at(token: Sequence[Any], student_id: int, vocab: StudentVocab, renormalize: bool,
               first: bool) -> TeacherTarget | None:
    """The mapped distribution of one aligned teacher token, or None when it would not favour `student_id`."""
    probs = _mapped_probs(token, student_id, vocab, first)
    mine = probs.get(student_id, 0.0)
    if mine <= 0 or any(p >= mine for i, p in probs.items() if i != student_id):
        return None
    total = sum(probs.values())
    if renormalize or total > 1.0:  # a sum past 1 can only come from rounded log-probs: renormalize then
        probs = {i: p / total for i, p in probs.items()}
    else:
        probs[student_id] = mine + (1.0 - total)
    ordered = sorted(probs.items(), key=lambda item: (item[0] != student_id, -item[1]))
    return tuple(i for i, _ in ordered), tuple(p for _, p in ordered)


def _mapped_probs(token: Sequence[Any], student_id: int, vocab: StudentVocab, first: bool) -> dict[int, float]:
    """One aligned teacher token's candidates (its top-k plus its chosen token) as probabilities over student ids,
    by their text; candidates the student cannot spell in one token are dropped, duplicates summed."""
    chosen, chosen_logprob = str(token[0]), token[1]
    alternatives = [(str(alt[0]), alt[1]) for alt in (token[2] if len(token) > 2 and token[2] else ())]
    if chosen_logprob is not None and all(normalize(text) != normalize(chosen) for text, _ in alternatives):
        alternatives.append((chosen, chosen_logprob))
    own = vocab.text(student_id)
    lead = ""
    if first and own is not None:
        lead = own[:len(own) - len(own.lstrip())]
    probs: dict[int, float] = {}
    for text, logprob in alternatives:
        if logprob is None or not math.isfinite(float(logprob)):
            continue
        if text == END_OF_TEXT:
            if vocab.eos_id is not None:
                probs[vocab.eos_id] = probs.get(vocab.eos_id, 0.0) + math.exp(float(logprob))
            continue
        plain = normalize(text)
        if first:
            if not plain.strip():  # "start with a newline instead" says nothing about the student's first word
                continue
            plain = lead + plain.lstrip()
        mapped = student_id if plain == own else vocab.lookup(plain)
        if mapped is None:
            continue
        probs[mapped] = probs.get(mapped, 0.0) + math.exp(float(logprob))
    return probs


def scored_targets(
    teacher_tokens: Sequence[Sequence[Any]],
    target_ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    vocab: StudentVocab,
) -> list[TeacherTarget | None]:
    """On-policy: per student token of a completion the student wrote, the teacher's distribution there, or None.

    Aligned like `teacher_targets`, but nothing is forced in the student's favour: the student's own token keeps
    the probability the teacher gave it (possibly far from the top), and the mass the teacher put outside the
    candidates the student can spell is left out, so the divergence's tail bucket carries it
    (``cotdistill.objectives.generalized_jsd``). None (no loss there) for special tokens, unaligned positions and
    positions where no candidate maps into the student's vocabulary. Probabilities sum to at most 1; the
    student's own token is listed first when the teacher gave it any.
    """
    out: list[TeacherTarget | None] = []
    for token_id, teacher, first in _aligned_positions(teacher_tokens, target_ids, tokenizer):
        probs = _mapped_probs(teacher, token_id, vocab, first) if teacher is not None else {}
        if not probs:
            out.append(None)
            continue
        total = sum(probs.values())
        if total > 1.0:  # only rounded log-probs sum past 1
            probs = {i: p / total for i, p in probs.items()}
        ordered = sorted(probs.items(), key=lambda item: (item[0] != token_id, -item[1]))
        out.append((tuple(i for i, _ in ordered), tuple(p for _, p in ordered)))
    return out
