"""HFTeacher on the session's tiny T5 and GPT-2: micro-batching, stop strings, log-probs, seeds, errors."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, T5ForConditionalGeneration

from cotdistill.alignment import token_spans
from cotdistill.teacher.hf_local import HFTeacher
from cotdistill.teacher.types import SampleRequest, SampleResponse, Sampling, TeacherError

ARCHS = ("t5", "gpt2")
GREEDY = Sampling(temperature=0.0, max_tokens=12)
PROMPTS = [
    "Question: Gina has 9 marbles.",
    "Question: Hugo has 9 pencils. Hugo loses 2 pencils. How many",
    "x",
    "Answer: Let's think step by step. After losing 2",
    "Ann finds 8 more shells.",
]


@pytest.fixture(scope="module")
def teacher_paths(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny models, except that the T5 gets an untied random output head.

    With tied embeddings a random model's logits favour the token it was just fed; the T5 is fed its decoder
    start (= pad) and so greedily emits pad forever, an empty text. The untied head makes greedy T5 outputs
    varied text, so batching, stop and log-prob checks on them can actually fail.
    """
    out = tmp_path_factory.mktemp("teacher-t5")
    model = T5ForConditionalGeneration.from_pretrained(tiny_models["t5"])
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_models["t5"]).save_pretrained(out)
    return {"t5": out, "gpt2": tiny_models["gpt2"]}


@pytest.fixture(scope="module")
def teachers(teacher_paths) -> dict[str, HFTeacher]:
    return {arch: HFTeacher(str(path), device="cpu", precision="fp32", batch_size=4)
            for arch, path in teacher_paths.items()}


@pytest.fixture
def generate_rows(teachers, monkeypatch) -> dict[str, list[int]]:
    """Rows per generate call, recorded for each teacher."""
    rows: dict[str, list[int]] = {arch: [] for arch in ARCHS}
    for arch, teacher in teachers.items():
        original = teacher.model.generate

        def counting(*args, _arch=arch, _original=original, **kwargs):
            rows[_arch].append(int(kwargs["input_ids"].shape[0]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(teacher.model, "generate", counting)
    return rows


def sample(teacher: HFTeacher, request: SampleRequest) -> SampleResponse:
    return asyncio.run(teacher.sample(request))


def sample_all(teacher: HFTeacher, requests: list[SampleRequest]) -> list[SampleResponse]:
    async def gather() -> list[SampleResponse]:
        return list(await asyncio.gather(*(teacher.sample(r) for r in requests)))
    return asyncio.run(gather())


@pytest.mark.parametrize("arch", ARCHS)
def test_n_samples_give_n_completions_and_count_prompt_tokens_once(teachers, arch):
    teacher = teachers[arch]
    prompt = PROMPTS[1]
    response = sample(teacher, SampleRequest(prompt, 3, Sampling(temperature=1.0, max_tokens=8, logprobs=1), seed=3))
    assert len(response.completions) == 3
    assert response.usage.prompt_tokens == len(teacher.tokenizer(prompt)["input_ids"])
    assert response.usage.completion_tokens == sum(len(c.tokens) for c in response.completions) > 0
    assert all(len(c.tokens) <= 8 and c.finish_reason in ("stop", "length") for c in response.completions)
    assert teacher.describe() == {"backend": "hf", "model": str(teacher.model_name), "kind":
                                  {"t5": "seq2seq", "gpt2": "causal"}[arch], "device": "cpu", "precision": "fp32"}


@pytest.mark.parametrize("arch", ARCHS)
def test_concurrent_greedy_requests_are_batched_and_match_one_at_a_time(teachers, generate_rows, arch):
    teacher = teachers[arch]
    sampling = Sampling(temperature=0.0, max_tokens=12, logprobs=2)
    requests = [SampleRequest(p, 1, sampling) for p in PROMPTS]
    together = sample_all(teacher, requests)
    assert generate_rows[arch] == [4, 1]  # batch_size 4: the prompts of different lengths share a padded batch
    alone = [sample(teacher, r) for r in requests]
    assert generate_rows[arch][2:] == [1] * len(PROMPTS)
    assert len({r.completions[0].text for r in alone}) > 1, "outputs should depend on the prompt"
    for batched, single in zip(together, alone, strict=True):
        assert batched.usage == single.usage
        b, s = batched.completions[0], single.completions[0]
        assert (b.text, b.finish_reason) == (s.text, s.finish_reason)
        assert [t.token for t in b.tokens] == [t.token for t in s.tokens]
        assert [t.logprob for t in b.tokens] == pytest.approx([t.logprob for t in s.tokens], abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_requests_with_other_sampling_or_large_n_are_not_packed_past_batch_size(teachers, generate_rows, arch):
    teacher = teachers[arch]
    hot = Sampling(temperature=1.0, max_tokens=6)
    responses = sample_all(teacher, [SampleRequest(PROMPTS[0], 1, GREEDY), SampleRequest(PROMPTS[2], 1, hot),
                                     SampleRequest(PROMPTS[3], 1, GREEDY), SampleRequest(PROMPTS[4], 6, hot, seed=1)])
    # greedy pair, then the hot n=1 request, then the n=6 request alone in chunks of 4 and 2
    assert generate_rows[arch] == [2, 1, 4, 2]
    assert [len(r.completions) for r in responses] == [1, 1, 1, 6]
    chunked = [c.text for c in responses[3].completions]
    assert len(set(chunked)) == 6, "chunks of one request must not repeat each other's samples"


@pytest.mark.parametrize("arch", ARCHS)
def test_logprob_tokens_tile_the_text_and_greedy_picks_the_top_alternative(teachers, arch):
    teacher = teachers[arch]
    sampling = Sampling(temperature=0.0, max_tokens=12, logprobs=3)
    for response in sample_all(teacher, [SampleRequest(p, 1, sampling) for p in PROMPTS]):
        completion = response.completions[0]
        assert "".join(t.token for t in completion.tokens) == completion.text
        assert len(completion.tokens) == response.usage.completion_tokens
        for token in completion.tokens:
            assert token.logprob <= 0
            assert len(token.top) == 3
            values = [value for _, value in token.top]
            assert values == sorted(values, reverse=True)
            assert token.top[0] == (token.token, pytest.approx(token.logprob, abs=1e-6))


@pytest.mark.parametrize("arch", ARCHS)
def test_logprobs_come_from_the_raw_distribution_whatever_the_sampling(teachers, arch):
    """The first step's alternatives do not depend on temperature or top-p: they are the model's own."""
    teacher = teachers[arch]
    greedy = sample(teacher, SampleRequest(PROMPTS[0], 1, Sampling(temperature=0.0, max_tokens=4, logprobs=4)))
    hot = sample(teacher, SampleRequest(PROMPTS[0], 1, Sampling(temperature=1.5, top_p=0.5, max_tokens=4,
                                                                logprobs=4), seed=0))
    completion = hot.completions[0]
    assert "".join(t.token for t in completion.tokens) == completion.text
    first_greedy, first_hot = greedy.completions[0].tokens[0].top, completion.tokens[0].top
    assert [text for text, _ in first_hot] == [text for text, _ in first_greedy]
    assert [value for _, value in first_hot] == pytest.approx([value for _, value in first_greedy], abs=1e-5)
    ids = torch.tensor([teacher.tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        if arch == "t5":
            start = torch.tensor([[teacher.model.config.decoder_start_token_id]])
            logits = teacher.model(input_ids=ids, decoder_input_ids=start).logits[0, -1]
        else:
            logits = teacher.model(input_ids=ids).logits[0, -1]
    expected = logits.log_softmax(-1).topk(4).values.tolist()
    assert [value for _, value in first_hot] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_token_spans_tile_the_text_across_spaces_and_split_characters(tiny_models, arch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    ids = tokenizer("Gina has 9 marbles, café über 12 ok", add_special_tokens=False)["input_ids"]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    spans = token_spans(tokenizer, ids, text)
    pieces = [text[start:stop] for start, stop in spans]
    assert "".join(pieces) == text
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert " has" in pieces  # the space of "▁has" / "Ġhas" is kept, not dropped or spelled "▁"
    if arch == "gpt2":  # byte-level: "é" is two byte tokens; the first waits for the second to complete it
        assert pieces[pieces.index("é") - 1] == ""


@pytest.mark.parametrize(("arch", "prompt"), [("t5", PROMPTS[0]), ("gpt2", PROMPTS[2])])
def test_stop_string_is_cut_out_of_the_text(teachers, arch, prompt):
    teacher = teachers[arch]
    full = sample(teacher, SampleRequest(prompt, 1, GREEDY)).completions[0].text
    stop = full[-3:]
    expected = full[:full.find(stop)]
    assert expected and len(expected) < len(full) - 3, f"pick another prompt: {full!r} gives a trivial cut"
    sampling = Sampling(temperature=0.0, max_tokens=12, stop=("@@never@@", stop), logprobs=2)
    response = sample(teacher, SampleRequest(prompt, 1, sampling))
    completion = response.completions[0]
    assert completion.text == expected
    assert completion.finish_reason == "stop"
    assert "".join(t.token for t in completion.tokens) == expected
    assert response.usage.completion_tokens == len(completion.tokens) < 12


@pytest.mark.parametrize("arch", ARCHS)
def test_running_out_of_max_tokens_is_reported_as_length(teachers, arch):
    teacher = teachers[arch]
    sampling = Sampling(temperature=0.0, max_tokens=5)
    responses = sample_all(teacher, [SampleRequest(p, 1, sampling) for p in PROMPTS])
    reasons = [r.completions[0].finish_reason for r in responses]
    assert "length" in reasons
    for reason, response in zip(reasons, responses, strict=True):
        # without stop strings a completion ends early only on eos
        assert (reason == "length") == (response.usage.completion_tokens == 5), (reason, response)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_reproduces_samples_and_another_seed_changes_them(teachers, arch):
    teacher = teachers[arch]
    hot = Sampling(temperature=1.0, max_tokens=10)
    first = sample(teacher, SampleRequest(PROMPTS[1], 3, hot, seed=7))
    again = sample(teacher, SampleRequest(PROMPTS[1], 3, hot, seed=7))
    other = sample(teacher, SampleRequest(PROMPTS[1], 3, hot, seed=8))
    assert first == again
    assert first.completions != other.completions
    assert len({c.text for c in first.completions}) == 3


def test_worker_errors_reach_every_waiting_caller_and_the_teacher_recovers(teachers, monkeypatch):
    teacher = teachers["gpt2"]

    def broken(*args, **kwargs):
        raise RuntimeError("device fell over")

    requests = [SampleRequest(p, 1, GREEDY) for p in PROMPTS[:3]]
    with monkeypatch.context() as patch:
        patch.setattr(teacher.model, "generate", broken)

        async def gather() -> list[object]:
            return await asyncio.wait_for(asyncio.gather(*(teacher.sample(r) for r in requests),
                                                         return_exceptions=True), timeout=30)
        results = asyncio.run(gather())
    assert all(isinstance(r, TeacherError) and "device fell over" in str(r) for r in results), results
    assert sample(teacher, requests[0]).completions[0].text


def test_bad_requests_fail_alone_before_reaching_the_model(teachers):
    teacher = teachers["gpt2"]
    with pytest.raises(TeacherError, match="max_tokens"):
        sample(teacher, SampleRequest("x", 1, Sampling(max_tokens=0)))
    with pytest.raises(TeacherError, match="512 positions"):
        sample(teacher, SampleRequest("x " * 300, 1, Sampling(max_tokens=300)))


def test_missing_model_path_gives_an_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-teacher"
    with pytest.raises(TeacherError, match=re.escape(str(missing))):
        HFTeacher(str(missing), device="cpu", precision="fp32")


def test_unknown_precision_is_refused(teacher_paths):
    with pytest.raises(TeacherError, match="fp8"):
        HFTeacher(str(teacher_paths["gpt2"]), device="cpu", precision="fp8")


def test_closed_teacher_refuses_requests(teacher_paths):
    teacher = HFTeacher(str(teacher_paths["gpt2"]), device="cpu", precision="fp16", batch_size=2)
    assert teacher.describe()["precision"] == "fp32"  # fp16 falls back to fp32 on CPU

    async def use_then_close() -> None:
        await teacher.sample(SampleRequest("x", 1, GREEDY))
        await teacher.close()
        with pytest.raises(TeacherError, match="closed"):
            await teacher.sample(SampleRequest("x", 1, GREEDY))
    asyncio.run(use_then_close())
    assert teacher.model is None
