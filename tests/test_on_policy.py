"""On-policy distillation (issue 18, items 2-3a): a teacher that scores the student's own tokens across tokenizers,
the deterministic sampling schedule, and 2-rank ZeRO-3 training of a tiny Llama scored by a tiny GPT-2 teacher
(another tokenizer), resumed exactly."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import kill_job_when, launch
from cotdistill import checkpoints as ckpt
from cotdistill.alignment import StudentVocab, scored_targets
from cotdistill.batching import TokenizedExample
from cotdistill.config import load_config
from cotdistill.errors import ConfigError
from cotdistill.objectives import IGNORE_INDEX
from cotdistill.on_policy import (
    divergence_batch,
    prompt_of,
    samples_correct,
    samples_this_micro_step,
    sampling_seed,
    score_completions,
    target_of,
)
from cotdistill.teacher.scoring import HFTokenScorer, completion_start

PROMPT = "Question: Ann has 3 apples. Ann finds 4 more apples. How many apples does Ann have now?\nAnswer:"
COMPLETION = " Ann has 3 + 4 = 7 apples. The answer is 7."


@pytest.fixture(scope="module")
def gpt2_scorer(tiny_models) -> HFTokenScorer:
    return HFTokenScorer(str(tiny_models["gpt2"]), device="cpu", precision="fp32", batch_size=2)


def test_the_teacher_scores_each_completion_token_with_its_own_log_probability(tiny_models, gpt2_scorer):
    tokens, empty = gpt2_scorer.score([(PROMPT, COMPLETION), (PROMPT, "")], top_k=4)
    assert empty == ()
    assert "".join(t.token for t in tokens) == COMPLETION
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]).eval()
    ids = tokenizer(PROMPT + COMPLETION)["input_ids"]
    start = completion_start(tokenizer(PROMPT)["input_ids"], ids)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    for offset, token in enumerate(tokens):
        position = start + offset
        assert token.logprob == pytest.approx(logp[position - 1, ids[position]].item(), abs=1e-5)
        assert len(token.top) == 4 and token.top[0][1] >= token.top[-1][1]
        assert token.top[0][1] == pytest.approx(logp[position - 1].max().item(), abs=1e-5)


def test_a_teacher_sharing_the_students_vocabulary_scores_its_ids_as_the_text_path_does(tiny_models, gpt2_scorer,
                                                                                        monkeypatch):
    """Same targets (ids, order, probabilities to 1e-6) as decoding, re-tokenizing and aligning, for completions
    in their canonical tokenization, EOS included. The completion's first token is the exception:
    across tokenizers the text path folds the teacher's whitespace variants of the first word into one ("Ann"
    and " Ann" both count for the student's " Ann"); with shared ids each variant stays its own token."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    vocab = StudentVocab(tokenizer)
    assert gpt2_scorer.shares_vocabulary(tokenizer)
    assert not gpt2_scorer.shares_vocabulary(AutoTokenizer.from_pretrained(tiny_models["llama"]))
    prompts = [tuple(tokenizer(PROMPT)["input_ids"])] * 3
    texts = [COMPLETION, " Ann has 7 apples.", ""]
    completions = [tuple(tokenizer(t)["input_ids"]) + ((tokenizer.eos_token_id,) if t else ()) for t in texts]
    by_ids = score_completions(gpt2_scorer, tokenizer, vocab, prompts, completions, top_k=4)
    monkeypatch.setattr(gpt2_scorer, "shares_vocabulary", lambda _: False)
    by_text = score_completions(gpt2_scorer, tokenizer, vocab, prompts, completions, top_k=4)
    assert [len(row) for row in by_ids] == [len(c) for c in completions] and by_ids[2] == []
    for row_ids, row_text in zip(by_ids, by_text, strict=True):
        assert [t is None for t in row_ids] == [t is None for t in row_text]
        for position, (a, b) in enumerate(zip(row_ids, row_text, strict=True)):
            if a is None:
                continue
            assert a[0][0] == b[0][0] and set(b[0]) <= set(a[0])
            if position == 0:
                continue
            probs = dict(zip(*a, strict=True))
            assert list(b[1]) == pytest.approx([probs[i] for i in b[0]], abs=1e-6)
            # what only the ids carry: tokens no text spells back to themselves (a partial UTF-8 byte, a
            # duplicate text), which text cannot name
            assert all(vocab.text(i) is None or vocab.lookup(vocab.text(i)) != i for i in set(a[0]) - set(b[0]))
    assert by_ids[0][-1][0][0] == by_text[0][-1][0][0] == tokenizer.eos_token_id  # the student learns to stop
    assert by_ids[0][0][0][0] == completions[0][0]


def test_the_id_path_scores_the_tokens_the_student_wrote_even_where_text_would_retokenize(tiny_models, gpt2_scorer):
    """A completion in a non-canonical tokenization (digits split one per token here, so a word spelled letter by
    letter) is scored token by token as written: its own token first, with the teacher's probability of it."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    prompt = tuple(tokenizer(PROMPT)["input_ids"])
    letters = tuple(tokenizer.convert_tokens_to_ids(list("Ann")))
    [targets] = gpt2_scorer.score_ids([prompt], [letters], top_k=3)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]).eval()
    with torch.no_grad():
        probs = model(input_ids=torch.tensor([prompt + letters])).logits[0].softmax(-1)
    for offset, (token, target) in enumerate(zip(letters, targets, strict=True)):
        assert target[0][0] == token
        assert target[1][0] == pytest.approx(probs[len(prompt) + offset - 1, token].item(), abs=1e-6)
        assert len(target[0]) <= 4 and len(set(target[0])) == len(target[0])


def test_a_completion_merging_with_the_prompts_last_token_is_scored_from_the_merge():
    assert completion_start([5, 6, 7], [5, 6, 7, 8, 9]) == 3
    assert completion_start([5, 6, 7], [5, 6, 70, 9]) == 2  # 7 + the completion's start became one token 70
    assert completion_start([5], [50]) == 1  # the very first token predicts nothing


def test_scored_targets_keep_the_teachers_probability_of_a_token_it_would_not_pick(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    vocab = StudentVocab(tokenizer)
    ids = tokenizer(" has 7", add_special_tokens=False)["input_ids"]
    texts = [tokenizer.decode(ids[:k + 1])[len(tokenizer.decode(ids[:k])):] for k in range(len(ids))]
    # The teacher prefers " had" over the student's " has" (0.6 > 0.3), and offers one word no student token spells.
    alternatives = [[" had", math.log(0.6)], [texts[0], math.log(0.3)], ["zqxj", math.log(0.05)]]
    teacher = [[texts[0], math.log(0.3), alternatives]]
    teacher += [[t, math.log(0.9), [[t, math.log(0.9)]]] for t in texts[1:]]
    targets = scored_targets(teacher, ids, tokenizer, vocab)
    first_ids, first_probs = targets[0]
    assert first_ids[0] == ids[0] and first_probs[0] == pytest.approx(0.3)
    if vocab.lookup(" had") is not None:
        assert dict(zip(first_ids, first_probs, strict=True))[vocab.lookup(" had")] == pytest.approx(0.6)
    assert sum(first_probs) < 1.0  # the unspellable 0.05 and the rest stay in the tail
    assert all(t is not None and t[0][0] == i for t, i in zip(targets[1:], ids[1:], strict=True))


def test_a_completion_that_stopped_gets_the_teachers_probability_of_stopping_at_its_eos(tiny_models, gpt2_scorer):
    """Across tokenizers (a Llama student, a GPT-2 teacher) the student's EOS is scored by the teacher's own EOS after
    the completion's text; before, it got no loss, and a student trained on-policy never learned to stop."""
    student = AutoTokenizer.from_pretrained(tiny_models["llama"])
    vocab = StudentVocab(student)
    prompt = tuple(student(PROMPT, add_special_tokens=False)["input_ids"])
    text = tuple(student(COMPLETION, add_special_tokens=False)["input_ids"])
    stopped, running = text + (student.eos_token_id,), text
    targets = score_completions(gpt2_scorer, student, vocab, [prompt, prompt], [stopped, running], top_k=4)
    eos_target = targets[0][-1]
    assert eos_target is not None and eos_target[0][0] == student.eos_token_id
    teacher = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]).eval()
    ids = teacher(PROMPT + COMPLETION)["input_ids"]
    with torch.no_grad():
        probs = model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
    assert eos_target[1][0] == pytest.approx(probs[teacher.eos_token_id].item(), rel=1e-4)
    assert len(targets[1]) == len(running) and targets[0][:-1] == targets[1]  # the rest is scored as before


def test_the_teachers_eos_among_its_alternatives_is_the_students_eos(tiny_models):
    from cotdistill.alignment import END_OF_TEXT

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    vocab = StudentVocab(tokenizer)
    ids = tokenizer("7.", add_special_tokens=False)["input_ids"]
    texts = [tokenizer.decode(ids[:k + 1])[len(tokenizer.decode(ids[:k])):] for k in range(len(ids))]
    teacher = [[t, math.log(0.5), [[t, math.log(0.5)], [END_OF_TEXT, math.log(0.4)]]] for t in texts]
    teacher.append([END_OF_TEXT, math.log(0.9), [[END_OF_TEXT, math.log(0.9)], [" The", math.log(0.05)]]])
    targets = scored_targets(teacher, [*ids, tokenizer.eos_token_id], tokenizer, vocab)
    for target in targets[:-1]:  # "stop here" (0.4) goes to the student's EOS, not into the tail
        assert dict(zip(*target, strict=True))[tokenizer.eos_token_id] == pytest.approx(0.4)
    assert targets[-1][0][0] == tokenizer.eos_token_id and targets[-1][1][0] == pytest.approx(0.9)


def test_which_micro_steps_sample_is_the_same_on_every_rank_and_resume_and_follows_lambda():
    draws = [samples_this_micro_step(42, index, 0.5) for index in range(2000)]
    assert draws == [samples_this_micro_step(42, index, 0.5) for index in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert all(samples_this_micro_step(42, i, 1.0) for i in range(50))
    assert not any(samples_this_micro_step(42, i, 0.0) for i in range(50))
    assert sampling_seed(42, 3, 0) != sampling_seed(42, 3, 1) == sampling_seed(42, 3, 1)


def test_a_cross_tokenizer_divergence_batch_puts_the_teachers_targets_on_the_completion_tokens(tiny_models,
                                                                                               gpt2_scorer):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    prompt = tuple(tokenizer(PROMPT)["input_ids"])
    completion = tuple(tokenizer(COMPLETION, add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,)
    example = TokenizedExample(prompt + completion, (IGNORE_INDEX,) * len(prompt) + completion, True)
    assert prompt_of(example) == prompt and target_of(example) == completion
    targets = score_completions(gpt2_scorer, tokenizer, StudentVocab(tokenizer), [prompt], [completion], top_k=4)
    assert len(targets[0]) == len(completion) and targets[0][-1][0][0] == tokenizer.eos_token_id  # EOS: scored
    assert sum(t is not None for t in targets[0]) >= len(completion) // 2
    batch = divergence_batch([prompt], [completion], targets, True, tokenizer.pad_token_id)
    labelled = (batch["labels"][0] != IGNORE_INDEX).nonzero()[:, 0].tolist()
    assert len(labelled) == len(completion) and batch["labels"][0, labelled].tolist() == list(completion)
    for position, target in zip(labelled, targets[0], strict=True):
        assert batch["token_weights"][0, position] == (target is not None)
        if target is not None:
            assert batch["kd_ids"][0, position, 0] == target[0][0]
            assert batch["kd_probs"][0, position, :len(target[1])].tolist() == pytest.approx(list(target[1]))
    assert batch["token_weights"][0, :len(prompt)].sum() == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_plain_sampling_loop_draws_what_generate_draws(tiny_models, arch, temperature):
    """Same seed, left-padded prompts of three lengths, rows finishing at different steps: the very tokens of
    ``generate(do_sample=True, top_k=0, top_p=1.0)``, pads after each row's EOS included."""
    from cotdistill.on_policy import ancestral_samples

    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    prompts = [tokenizer(p)["input_ids"] for p in (PROMPT, PROMPT[:25], "Q")]
    width, pad, eos = max(map(len, prompts)), tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    expected = None
    with torch.no_grad():
        for stop in (eos, None):
            if expected is not None:  # a random model rarely writes its EOS: stop on a token it writes often
                stop = int(torch.mode(expected[:, width:].flatten()).values)
            torch.manual_seed(5)
            expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                      top_k=0, top_p=1.0, max_new_tokens=30, pad_token_id=pad, eos_token_id=stop)
            torch.manual_seed(5)
            drawn = ancestral_samples(model, ids, mask, temperature, 30, stop, pad)
            assert torch.equal(drawn, expected)
    assert (expected[:, width:] == stop).any(dim=1).sum() >= 2  # rows that stopped, at their own steps


class ModelAsEngine:
    """The two things `student_forward` asks of the training engine, on a plain model."""

    def __init__(self, model) -> None:
        self.module, self.device = model, torch.device("cpu")

    def forward(self, **inputs):
        return self.module(**inputs)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_a_packed_divergence_batch_has_the_padded_batchs_divergence_and_gradients(tiny_models, gpt2_scorer, arch):
    """Completions of different lengths (what sampling gives), scored by the GPT-2 teacher, laid end to end as
    packed training does: the same scored tokens, the same divergence to 1e-5, the same gradients."""
    from transformers import AutoModelForSeq2SeqLM

    from cotdistill.objectives import generalized_jsd, shift_for_causal
    from cotdistill.packed_attention import use_packed_attention
    from cotdistill.training_objectives import student_forward

    causal = arch != "t5"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    auto = AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM
    prompts = [tuple(tokenizer(p)["input_ids"]) for p in (PROMPT, PROMPT[:60], PROMPT[10:])]
    texts = (COMPLETION, " 7.", " Ann has 3 apples and finds 4 more, so she has 3 + 4 = 7 apples. The answer is 7.")
    completions = [tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) + (tokenizer.eos_token_id,)
                   for t in texts]
    targets = score_completions(gpt2_scorer, tokenizer, StudentVocab(tokenizer), prompts, completions, top_k=4)

    def divergence(pack: bool):
        torch.manual_seed(0)
        model = auto.from_pretrained(tiny_models[arch], attn_implementation="sdpa").float()
        if pack:
            use_packed_attention(model)
        batch = divergence_batch(prompts, completions, targets, causal, tokenizer.pad_token_id, pack=pack)
        logits, labels, targ, shift = student_forward(ModelAsEngine(model), batch, causal)
        ids, probs, weights = targ["kd_ids"], targ["kd_probs"], targ["token_weights"]
        if shift:
            logits, labels = shift_for_causal(logits, labels)
            ids, probs, weights = ids[:, 1:], probs[:, 1:], weights[:, 1:]
        scored = (labels != IGNORE_INDEX) & (weights > 0)
        per_token = torch.where(scored, generalized_jsd(logits, ids, probs, 0.5), torch.zeros(()))
        loss = per_token.sum() / scored.sum()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss.item(), int(scored.sum()), grads, batch

    padded, packed = divergence(False), divergence(True)
    assert packed[3]["input_ids"].size(0) == 1 and packed[3]["labels"].numel() < padded[3]["labels"].numel()
    assert packed[1] == padded[1] > 0
    assert packed[0] == pytest.approx(padded[0], abs=1e-5)
    torch.testing.assert_close(packed[2], padded[2], atol=1e-5, rtol=1e-4)


def test_a_seq2seq_divergence_batch_puts_the_targets_on_the_decoder_positions(tiny_models, gpt2_scorer):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["t5"])
    prompt = tuple(tokenizer(PROMPT)["input_ids"])
    completion = tuple(tokenizer(COMPLETION)["input_ids"])  # ends with </s>
    example = TokenizedExample(prompt, completion, False)
    assert prompt_of(example) == prompt and target_of(example) == completion
    targets = score_completions(gpt2_scorer, tokenizer, StudentVocab(tokenizer), [prompt], [completion], top_k=4)
    assert len(targets[0]) == len(completion)
    assert targets[0][-1][0][0] == tokenizer.eos_token_id  # </s> gets the teacher's probability of its own EOS
    batch = divergence_batch([prompt, prompt[:5]], [completion, completion[:2]], [targets[0], targets[0][:2]],
                             False, tokenizer.pad_token_id)
    assert batch["input_ids"][0].tolist() == list(prompt)  # the encoder reads the prompt only
    assert batch["labels"][0].tolist() == list(completion)  # the decoder position t predicts completion token t
    assert batch["labels"][1, 2:].eq(IGNORE_INDEX).all() and batch["token_weights"][1, 2:].sum() == 0
    for position, target in enumerate(targets[0]):
        assert batch["token_weights"][0, position] == (target is not None)
        if target is not None:
            assert batch["kd_ids"][0, position, 0] == target[0][0]


def test_a_sentencepiece_students_completion_reaches_the_teacher_with_its_leading_space(tiny_models):
    """A T5 student's completion decoded alone loses its first space ("How many?Ann has"); the teacher must read
    the text as the student wrote it after the prompt."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["t5"])
    prompt = tokenizer("Question: Ann has 3 apples and buys 4. How many?")["input_ids"]
    completion = tokenizer(" Ann has 7 apples. The answer is 7.")["input_ids"]
    read = []

    class RecordingTeacher:
        def score(self, pairs, top_k, ended=None):
            read.extend(pairs)
            return [() for _ in pairs]

    score_completions(RecordingTeacher(), tokenizer, StudentVocab(tokenizer), [prompt], [completion], top_k=4)
    assert read[0][0].endswith("How many?") and read[0][1].startswith(" Ann has 7 apples.")


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.objective=on_policy"], "needs a teacher: set train.on_policy.teacher.model"),
    (["train.objective=on_policy", "train.on_policy.teacher.model=t", "train.on_policy.lmbda=1.5"], "lmbda"),
    (["train.objective=on_policy", "train.on_policy.teacher.model=t", "train.kd_weight=0.5"], "set kd_weight=0"),
    (["train.objective=on_policy", "train.on_policy.teacher.model=t", "train.loss_weights={zero_shot_cot: 2}"],
     "does not apply it"),
])
def test_on_policy_settings_that_cannot_work_are_refused_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("recipes/demo-gpt2-synthetic.yaml", overrides)


# --- 2 ranks under ZeRO-3: a tiny Llama student, a tiny GPT-2 teacher (another tokenizer) -----------------------


STEPS = 4
# With train.seed 42 this samples at micro-steps 0, 1, 4 and 6 of 8 (2 per step): steps 1, 3 and 4 sample, step 2
# trains on the data's targets, and the resumed part (steps 3-4) samples again.
LAMBDA = 0.75


def test_the_students_samples_are_graded_as_evaluation_grades_them():
    """The logged sample_accuracy: yes/no answers read as yes/no (a numeric reading found none), numbers within
    tolerance, and an invented next question after the answer does not decide it."""
    from cotdistill.problems.record import Problem

    yes_no = Problem(id="s1", question="Is the sky blue?", answer="yes", source="strategyqa")
    half = Problem(id="g1", question="Half of 1?", answer="0.5", source="gsm8k")
    seven = Problem(id="g2", question="3 + 4?", answer="7", source="gsm8k")
    texts = ["The sky is blue. So the answer is yes.", "1 / 2 = 0.50. The answer is 0.50.",
             "3 + 4 = 7. The answer is 7.\nQuestion: What is 2 + 2? The answer is 4.", "The answer is 7."]
    assert samples_correct([yes_no, half, seven, None], texts) == 3
    assert samples_correct([yes_no], ["The answer is no."]) == 0


def on_policy_args(student: Path, teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "recipes/demo-gpt2-synthetic.yaml", f"model.name_or_path={student}", "model.make_tiny=",
            f"output_dir={out}", "data.synthetic.train_size=64", "data.synthetic.eval_size=2",
            "train.micro_batch_size=2", "train.gradient_accumulation=2", f"train.max_steps={STEPS}",
            "train.warmup_steps=0", "train.lr=1e-3", "train.objective=on_policy", f"train.on_policy.lmbda={LAMBDA}",
            "train.on_policy.max_new_tokens=12", f"train.on_policy.teacher.model={teacher}",
            "train.on_policy.teacher.device=cpu", "checkpoint.every=2", "eval.at_end=false", *extra]


def sharp_teacher(source: Path, out: Path) -> Path:
    """The tiny GPT-2 with its logits scaled 20x: a random teacher far from the random student's near-uniform
    distributions, so the divergence is large enough to say something."""
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(20.0)
        model.transformer.ln_f.bias.mul_(20.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def on_policy_runs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("on-policy")
    student, teacher = tiny_models["llama"], sharp_teacher(tiny_models["gpt2"], root / "teacher")
    full = root / "full"
    output = launch("launchers/train.py", on_policy_args(student, teacher, full))
    # kill -9 of the whole job (launcher and both ranks) as soon as checkpoint 2 is complete: inside step 3, while
    # the ranks sample, score or step; the rerun resumes from step 2.
    resumed = root / "resumed"
    resumed.mkdir()
    kill_job_when("launchers/train.py", on_policy_args(student, teacher, resumed), root / "killed.log",
                  lambda: (c := ckpt.latest_checkpoint(resumed)) is not None and c.step == 2)
    killed_with = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    rerun = launch("launchers/train.py", on_policy_args(student, teacher, resumed))
    partitioned = root / "partitioned"
    shown = launch("launchers/train.py", on_policy_args(
        student, teacher, partitioned, "train.on_policy.teacher.device=auto", "train.on_policy.teacher.partition=true",
        "train.on_policy.gather_for_generation=false", "checkpoint.export_final=false"))
    return {"full": full, "resumed": resumed, "partitioned": partitioned, "full_output": output.stdout + output.stderr,
            "partitioned_output": shown.stdout + shown.stderr, "killed_with": killed_with,
            "rerun_output": rerun.stdout + rerun.stderr}


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_on_policy_training_logs_the_divergence_samples_and_times(on_policy_runs):
    rows = logged(on_policy_runs["full"])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        # The loss is the divergence (float32 per rank, the divergence metric summed in float64 over ranks).
        assert row["loss"] == pytest.approx(row["divergence"], rel=1e-6) and row["loss"] > 0.1
        assert 0.0 <= row["on_policy_fraction"] <= 1.0 and row["score_s"] > 0
        # the step's seconds split into generating, scoring and the rest (forward, backward, optimizer)
        assert row["train_s"] > 0
        assert row["generate_s"] + row["score_s"] + row["train_s"] == pytest.approx(row["step_time_s"], rel=1e-6)
        if row["on_policy_fraction"] > 0:
            assert row["completion_tokens"] > 0 and row["generate_s"] > 0
            assert 0.0 <= row["sample_accuracy"] <= 1.0
    schedule = [[samples_this_micro_step(42, 2 * (r["step"] - 1) + k, LAMBDA) for k in range(2)] for r in rows]
    assert [r["on_policy_fraction"] for r in rows] == [sum(s) / 2 for s in schedule]
    assert sum(map(sum, schedule[2:])) > 0 and sum(map(sum, schedule)) < 2 * STEPS
    assert (on_policy_runs["full"] / "final" / "model.safetensors").exists()


def compared(run: Path) -> list[dict]:
    """The logged values a resumed run must repeat exactly (times differ)."""
    keys = ("step", "loss", "divergence", "on_policy_fraction", "completion_tokens", "sample_accuracy", "grad_norm")
    return [{k: r[k] for k in keys} for r in logged(run)]


def test_an_on_policy_job_killed_with_sigkill_resumes_with_the_uninterrupted_losses(on_policy_runs):
    assert on_policy_runs["killed_with"] == ["step-000002"], "killed after checkpoint 2, before checkpoint 4"
    assert "(step 2, epoch 0" in on_policy_runs["rerun_output"], "the rerun resumes from checkpoint 2"
    assert compared(on_policy_runs["resumed"]) == compared(on_policy_runs["full"])
    shutil.rmtree(on_policy_runs["resumed"] / "final", ignore_errors=True)


def test_a_partitioned_teacher_and_lockstep_sampling_train_as_a_whole_teacher_and_gathered_sampling(on_policy_runs):
    """Two runs that differ in where the weights are while sampling and scoring, and in nothing they compute:
    one samples with the student's weights gathered on every rank (auto, a tiny student) and scores with the
    whole teacher on every rank; the other samples in lockstep on the ZeRO-3 partitions and scores with a teacher
    of which each rank holds half. Their losses, divergences, samples and gradient norms are equal at every step."""
    assert "on-policy sampling: the student's weights gathered on every rank" in on_policy_runs["full_output"]
    assert "on-policy sampling: in lockstep on the ZeRO-3 partitions" in on_policy_runs["partitioned_output"]
    assert "on-policy teacher: hf" in on_policy_runs["partitioned_output"]
    held = re.search(r"partitioned over 2 ranks with ZeRO-3 \(rank 0 holds ([\d,]+) of its ([\d,]+) parameters\)",
                     on_policy_runs["partitioned_output"])
    assert held, on_policy_runs["partitioned_output"][-2000:]
    part, whole = (int(n.replace(",", "")) for n in held.groups())
    assert whole > 10_000 and part < 0.6 * whole  # half of each tensor, a few padding elements more
    assert compared(on_policy_runs["partitioned"]) == compared(on_policy_runs["full"])


def test_a_partitioned_teacher_is_local_and_on_the_training_devices():
    with pytest.raises(ConfigError, match="partition=true shares a local"):
        load_config("recipes/demo-gpt2-synthetic.yaml", [
            "train.objective=on_policy", "train.on_policy.teacher.model=t", "train.on_policy.teacher.partition=true",
            "train.on_policy.teacher.device=cpu"])


def test_a_partitioned_teacher_runs_as_many_forwards_on_every_rank():
    """A rank with fewer completions to score joins the other ranks' extra forwards on a one-token input."""

    class Ranks:
        def all_gather_objects(self, value):
            return [value, 3]  # the other rank has three batches

    calls = []

    class Model:
        def __call__(self, input_ids, attention_mask=None):
            calls.append(tuple(input_ids.shape))
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 5)})()

    scorer = HFTokenScorer.__new__(HFTokenScorer)
    scorer.engine, scorer.batch_size, scorer.model, scorer.device = Ranks(), 2, Model(), torch.device("cpu")
    scorer.tokenizer = type("Tok", (), {"pad_token_id": 0})()
    scorer._score_batch = lambda chunk, top_k: [()] * len(chunk)
    assert scorer.score([("a", "b"), ("c", "d"), ("e", "f")], 4) == [(), (), ()]
    assert calls == [(1, 1)]  # two batches of its own, then one idle forward


def test_the_shipped_on_policy_recipe_trains_a_llama_scored_by_a_gpt2_teacher(tiny_models, tmp_path):
    recipe = "recipes/on-policy/gkd-llama-synthetic.yaml"
    config = load_config(recipe)
    assert config.train.objective == "on_policy" and config.model.make_tiny == "llama"
    assert config.train.on_policy.teacher.model == "runs/demo-gpt2/final"  # what `make demo` trains
    assert config.train.on_policy.beta == 0.0  # a random student under beta 0.5 collapses (EXPERIMENTS section 3)
    rows = two_sampled_steps(recipe, tiny_models["llama"], tiny_models["gpt2"], tmp_path)
    assert all(r["divergence"] > 0 and r["completion_tokens"] > 0 for r in rows)


def two_sampled_steps(recipe: str, student: Path, teacher_source: Path, tmp_path: Path,
                      *extra: str) -> list[dict]:
    """Two 1-rank steps of ``recipe`` in which the student samples every completion (8 tokens at most); the rows
    of its train_log.jsonl."""
    teacher = sharp_teacher(teacher_source, tmp_path / "teacher")
    out = tmp_path / "run"
    launch("launchers/train.py", ["--config", recipe, f"model.name_or_path={student}", "model.make_tiny=",
                                  f"output_dir={out}", f"train.on_policy.teacher.model={teacher}",
                                  "train.on_policy.teacher.device=cpu", "train.on_policy.lmbda=1.0",
                                  "train.on_policy.max_new_tokens=8", "train.micro_batch_size=2", "train.max_steps=2",
                                  "data.synthetic.train_size=16", "data.synthetic.eval_size=2", "eval.at_end=false",
                                  "checkpoint.every=0", "checkpoint.export_final=false", *extra], ranks=1)
    rows = logged(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["on_policy_fraction"] == 1.0 for r in rows)
    return rows


def test_a_t5_student_learns_on_policy_from_a_causal_teacher_with_another_tokenizer(tiny_models, tmp_path):
    rows = two_sampled_steps("recipes/demo-t5-synthetic.yaml", tiny_models["t5"], tiny_models["gpt2"], tmp_path,
                             "train.objective=on_policy")
    # the decoder's sampled tokens are scored: a loss on them, with as many as the student wrote
    assert all(r["loss"] == pytest.approx(r["divergence"], rel=1e-6) and r["divergence"] > 0 for r in rows)
    assert all(0 < r["completion_tokens"] <= 8 for r in rows)
