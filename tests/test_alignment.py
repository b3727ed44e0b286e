"""Teacher-to-student token alignment: the DP, token texts, the student vocabulary and the mapped targets."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest

from cotdistill import formats
from cotdistill.alignment import StudentVocab, _edit_rows, _keys, align, teacher_targets, token_texts
from cotdistill.batching import tokenize_examples
from cotdistill.formats import Example
from cotdistill.modeling import load_tokenizer
from cotdistill.objectives import IGNORE_INDEX
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems
from fake_openai import pieces

# Alternatives a teacher offers: plain, "▁" and "Ġ" spellings of words both tiny students have as one token,
# and strings no student token spells.
IN_VOCAB = [" more", " has", " =", "Ġ+", "▁After", "1", ",", "."]
OUT_OF_VOCAB = [" zqxj", "<nope>", "Ġstickersss", "▁Qwertyuiop"]
# Lowest share of target tokens that must get a teacher distribution (measured: t5/pieces 0.222,
# gpt2/pieces 0.083, t5 student/gpt2 teacher 0.632, gpt2 student/t5 teacher 0.423).
MIN_ALIGNED = {("t5", "pieces"): 0.15, ("gpt2", "pieces"): 0.05, ("t5", "gpt2"): 0.5, ("gpt2", "t5"): 0.3}


@pytest.fixture(scope="module")
def tokenizers(tiny_models) -> dict[str, Any]:
    return {arch: load_tokenizer(path) for arch, path in tiny_models.items()}


@pytest.fixture(scope="module")
def vocabs(tokenizers) -> dict[str, StudentVocab]:
    return {arch: StudentVocab(tok) for arch, tok in tokenizers.items()}


def student_target_ids(tokenizer, arch: str, source: str, target: str) -> list[int]:
    """The target ids exactly as batching makes them (GPT-2: + eos; T5: with </s>)."""
    causal = arch == "gpt2"
    [example], _ = tokenize_examples([Example("p", "zero_shot_cot", source, target)], tokenizer, causal,
                                     10_000, 10_000)
    return [label for label in example.labels if label != IGNORE_INDEX] if causal else list(example.labels)


def fake_teacher_tokens(texts: Sequence[str], rng: random.Random) -> list[list[Any]]:
    """Teacher records for token texts: chosen token top-1, then lower alternatives in and out of vocab.

    Every seventh token is a sampled one: an in-vocab alternative is more likely than the chosen token.
    """
    tokens = []
    for k, text in enumerate(texts):
        chosen = -rng.uniform(0.01, 0.6)
        alternatives = [[rng.choice(IN_VOCAB), chosen - 0.7], [rng.choice(OUT_OF_VOCAB), chosen - 1.1],
                        [rng.choice(IN_VOCAB), chosen - 1.9], [rng.choice(OUT_OF_VOCAB), chosen - 2.4]]
        top = [[text, chosen], *alternatives]
        if k % 7 == 3:
            top = [[rng.choice(IN_VOCAB), chosen + 0.3], *top[:-1]]
        tokens.append([text, chosen, top])
    return tokens


def teacher_texts(kind: str, tokenizers: dict[str, Any], text: str) -> list[str]:
    """The teacher's token texts of `text` with a tokenizer other than the student's."""
    if kind == "pieces":
        return pieces(text)
    tokenizer = tokenizers[kind]
    return token_texts(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize(("student", "teacher"), list(MIN_ALIGNED))
def test_aligned_teacher_targets_always_favour_the_students_own_token(tokenizers, vocabs, student, teacher):
    tokenizer, vocab = tokenizers[student], vocabs[student]
    rng = random.Random(7)
    positions = aligned = spread = 0
    for index, problem in enumerate(generate_problems(SyntheticSpec(n=30, seed=1))):
        teacher_text = problem.rationale if index % 2 else " " + problem.rationale  # with and without the space
        records = fake_teacher_tokens(teacher_texts(teacher, tokenizers, teacher_text), rng)
        assert "".join(r[0] for r in records) in (teacher_text, teacher_text.lstrip())  # sentencepiece drops it
        ids = student_target_ids(tokenizer, student, formats.prompt(problem, "zero_shot_cot"),
                                 formats.target(problem, "zero_shot_cot"))
        targets = teacher_targets(records, ids, tokenizer, vocab)
        assert len(targets) == len(ids)
        for token_id, target in zip(ids, targets, strict=True):
            positions += 1
            if target is None:  # one-hot on the student's token
                continue
            aligned += 1
            target_ids, probs = target
            best = max(range(len(probs)), key=probs.__getitem__)
            assert target_ids[best] == token_id
            assert all(p < probs[best] for k, p in enumerate(probs) if k != best)  # a strict argmax
            assert math.isclose(sum(probs), 1.0, rel_tol=1e-9)
            assert len(set(target_ids)) == len(target_ids)
            assert all(0 <= i < len(tokenizer) and i not in tokenizer.all_special_ids for i in target_ids)
            spread += len(target_ids) > 1
        assert targets[-1] is None  # the appended eos / </s>
    fraction = aligned / positions
    print(f"student {student}, teacher {teacher}: {aligned}/{positions} = {fraction:.3f} aligned")
    assert fraction >= MIN_ALIGNED[(student, teacher)]
    assert spread >= aligned // 4  # the in-vocab alternatives really reach the targets


def test_the_teacher_targets_mix_in_vocab_and_out_of_vocab_alternatives(vocabs):
    for vocab in vocabs.values():
        assert all(vocab.lookup(text) is not None for text in IN_VOCAB)
        assert all(vocab.lookup(text) is None for text in OUT_OF_VOCAB)


def test_identical_sequences_align_one_to_one():
    tokens = [" After", " buying", " 9", " more", ",", " Finn", " has", " 11", "."]
    assert align(tokens, tokens) == list(range(len(tokens)))


def test_an_extra_student_token_leaves_a_gap_and_keeps_the_rest_aligned():
    teacher = [" Finn", " has", " 2", " stickers", "."]
    student = [" Finn", " has", " 2", " new", " stickers", "."]
    assert align(teacher, student) == [0, 1, 2, None, 3, 4]


def test_a_missing_student_token_skips_its_teacher_token():
    teacher = [" Finn", " has", " 2", " new", " stickers", "."]
    student = [" Finn", " has", " 2", " stickers", "."]
    assert align(teacher, student) == [0, 1, 2, 4, 5]


def test_differences_in_the_middle_are_aligned_around():
    teacher = [" x", " a", " b", " c", " d", " y"]
    student = [" z", " a", " q", " b", " c", " d", " w"]
    assert align(teacher, student) == [None, 1, None, 2, 3, 4, None]


def test_different_tokenizations_match_only_equal_strings():
    teacher = [" 11", " stickers", "."]
    student = [" ", "1", "1", " st", "ickers", "."]
    assert align(teacher, student) == [None, None, None, None, None, 2]
    assert align([" apples", " pears"], [" x", " y", " z"]) == [None, None, None]


def test_only_the_texts_leading_whitespace_is_ignored():
    assert align(["After", " more"], [" After", " more"]) == [0, 1]
    assert align(["\nAfter", " more"], [" After", " more"]) == [0, 1]
    assert align([" ", "After", " more"], [" After", " more"]) == [1, 2]
    assert align([" After", "more"], [" After", " more"]) == [0, None]


def test_sentencepiece_and_byte_level_spellings_match_plain_text():
    assert align(["▁After", "Ġmore", "Ċ"], [" After", " more", "\n"]) == [0, 1, 2]


def test_empty_sequences_align_to_nothing():
    assert align([], [" a", " b"]) == [None, None]
    assert align([" a"], []) == []


def levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y or not x))
    return row[-1]


def test_the_banded_table_finds_the_minimum_edit_distance():
    rng = random.Random(3)
    for _ in range(200):
        a = _keys([rng.choice([" a", " b", "c", " d", " "]) for _ in range(rng.randint(1, 25))])
        b = _keys([rng.choice([" a", " b", "c", " d", " "]) for _ in range(rng.randint(1, 25))])
        rows, _ = _edit_rows(a, b, band=2)  # widened by the length difference, the band keeps an optimum here
        assert int(rows[-1][-1]) >= levenshtein(a, b)
        rows, _ = _edit_rows(a, b, band=64)
        assert int(rows[-1][-1]) == levenshtein(a, b)


def test_a_narrow_band_still_gives_ordered_equal_matches():
    rng = random.Random(5)
    for _ in range(100):
        teacher = [rng.choice([" a", " b", " c"]) for _ in range(rng.randint(0, 40))]
        student = [rng.choice([" a", " b", " c"]) for _ in range(rng.randint(0, 40))]
        result = align(teacher, student, band=1)
        matched = [(t, s) for s, t in enumerate(result) if t is not None]
        assert all(teacher[t] == student[s] for t, s in matched)
        assert all(t1 < t2 for (t1, _), (t2, _) in zip(matched, matched[1:], strict=False))


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
@pytest.mark.parametrize("text", [" After finding 9 more, Finn has 2 + 9 = 11 stickers.",
                                  "héllo wörld 😀 ok , . 's", "x\n\ny  z", " 12 + 30 = 42."])
def test_token_texts_join_back_to_the_decoded_text(tokenizers, arch, text):
    tokenizer = tokenizers[arch]
    ids = tokenizer(text, add_special_tokens=arch == "t5")["input_ids"] + [tokenizer.eos_token_id]
    texts = token_texts(tokenizer, ids)
    assert len(texts) == len(ids)
    assert "".join(texts) == tokenizer.decode(ids, skip_special_tokens=True)
    assert texts[-1] == ""  # eos


def test_token_texts_stay_exact_when_decoding_cleans_up_spaces(tiny_models):
    tokenizer = load_tokenizer(tiny_models["t5"])
    tokenizer.clean_up_tokenization_spaces = True  # " ," -> "," at decode: the per-token fast path cannot hold
    ids = tokenizer(" a , b . c 's x ! y ?", add_special_tokens=True)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "a, b. c's x! y?"
    texts = token_texts(tokenizer, ids)
    assert len(texts) == len(ids) and "".join(texts) == decoded


def test_token_texts_give_each_token_its_running_text(tokenizers):
    gpt2 = tokenizers["gpt2"]
    ids = gpt2(" Finn has 20 more", add_special_tokens=False)["input_ids"]
    assert token_texts(gpt2, ids) == [" ", "F", "in", "n", " has", " ", "2", "0", " more"]
    t5 = tokenizers["t5"]
    ids = t5(" After buying 9 more", add_special_tokens=True)["input_ids"]
    assert token_texts(t5, ids) == ["After", " buying", " ", "9", " more", ""]  # decode drops the first space


def test_student_vocab_maps_running_text_and_teacher_spellings(tokenizers, vocabs):
    for arch, tokenizer in tokenizers.items():
        vocab = vocabs[arch]
        [more] = tokenizer(" more", add_special_tokens=False)["input_ids"][-1:]
        assert vocab.lookup(" more") == vocab.lookup("▁more") == vocab.lookup("Ġmore") == more
        assert vocab.text(more) == " more"
        assert vocab.lookup("more") != more
        assert vocab.lookup("4") == tokenizer("4", add_special_tokens=False)["input_ids"][-1]
        assert vocab.lookup(" zzzz qq") is None
        assert vocab.text(tokenizer.eos_token_id) is None
    assert vocabs["gpt2"].lookup("Ċ") == vocabs["gpt2"].lookup("\n") is not None


def one_token_target(tokenizer, arch: str, word: str) -> list[int]:
    ids = student_target_ids(tokenizer, arch, "Question: x\nAnswer:", word)
    assert len(ids) == 2, tokenizer.convert_ids_to_tokens(ids)  # the word, then eos / </s>
    return ids


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_renormalize_decides_where_the_dropped_mass_goes(tokenizers, vocabs, arch):
    tokenizer, vocab = tokenizers[arch], vocabs[arch]
    ids = one_token_target(tokenizer, arch, " more")
    more, has = ids[0], vocab.lookup(" has")
    record = [[" more", math.log(0.6), [[" more", math.log(0.6)], ["Ġhas", math.log(0.2)], [" zqxj", math.log(0.1)]]]]
    scaled = teacher_targets(record, ids, tokenizer, vocab, renormalize=True)
    kept = teacher_targets(record, ids, tokenizer, vocab, renormalize=False)
    assert scaled[1] is None and kept[1] is None
    assert scaled[0] is not None and kept[0] is not None
    assert scaled[0][0] == kept[0][0] == (more, has)
    assert scaled[0][1] == pytest.approx((0.75, 0.25))  # 0.6 and 0.2 over their sum 0.8
    assert kept[0][1] == pytest.approx((0.8, 0.2))  # the 0.2 nobody kept goes to the student's token
    assert sum(scaled[0][1]) == pytest.approx(1.0) and sum(kept[0][1]) == pytest.approx(1.0)


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_a_teacher_that_prefers_another_token_gives_one_hot(tokenizers, vocabs, arch):
    tokenizer, vocab = tokenizers[arch], vocabs[arch]
    ids = one_token_target(tokenizer, arch, " more")
    record = [[" more", math.log(0.3), [[" has", math.log(0.5)], [" more", math.log(0.3)]]]]
    assert teacher_targets(record, ids, tokenizer, vocab) == [None, None]
    tied = [[" more", math.log(0.4), [[" has", math.log(0.4)], [" more", math.log(0.4)]]]]
    assert teacher_targets(tied, ids, tokenizer, vocab) == [None, None]


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_a_chosen_token_missing_from_the_top_list_still_counts(tokenizers, vocabs, arch):
    tokenizer, vocab = tokenizers[arch], vocabs[arch]
    ids = one_token_target(tokenizer, arch, " more")
    record = [[" more", math.log(0.5), [[" has", math.log(0.2)], [" =", math.log(0.1)]]]]
    [target, _] = teacher_targets(record, ids, tokenizer, vocab)
    assert target is not None
    assert target[0] == (ids[0], vocab.lookup(" has"), vocab.lookup(" ="))
    assert target[1] == pytest.approx((0.625, 0.25, 0.125))


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_the_first_tokens_alternatives_take_the_students_leading_space(tokenizers, vocabs, arch):
    tokenizer, vocab = tokenizers[arch], vocabs[arch]
    ids = student_target_ids(tokenizer, arch, "Question: x\nAnswer:", " After more")
    record = [["After", math.log(0.7), [["After", math.log(0.7)], ["more", math.log(0.2)]]],
              [" more", math.log(0.9), [[" more", math.log(0.9)], ["in", math.log(0.05)]]]]
    targets = teacher_targets(record, ids, tokenizer, vocab)
    assert vocab.lookup("After") is None and vocab.lookup("more") is None  # unspaced, neither is a token
    assert targets[0] is not None and targets[0][0] == (vocab.lookup(" After"), vocab.lookup(" more"))
    assert targets[1] is not None
    assert targets[1][0] == (vocab.lookup(" more"), vocab.lookup("in"))  # later tokens keep their own spacing
    assert vocab.lookup("in") != vocab.lookup(" in")


def test_aligning_200_by_200_tokens_is_fast(tokenizers):
    text = " ".join(p.rationale for p in generate_problems(SyntheticSpec(n=40, seed=2)))
    teacher = teacher_texts("t5", tokenizers, text)[:200]
    student = teacher_texts("gpt2", tokenizers, " " + text)[:200]
    align(teacher, student)
    best = math.inf
    for _ in range(10):
        start = time.perf_counter()
        result = align(teacher, student)
        best = min(best, time.perf_counter() - start)
    print(f"align 200 x 200: {best * 1000:.2f} ms, {sum(r is not None for r in result)} matched")
    assert sum(r is not None for r in result) > 50
    assert best < 0.05
