"""Chat-formatted students (issue 16, item 3): ``data.chat_template`` renders prompt and target through the student
tokenizer's own chat template, with the loss on the assistant's turn, and evaluation prompts in the same layout."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_RUN, launch
from cotdistill.batching import collate, forward_batch, tokenize_examples
from cotdistill.chat import end_of_turn_id, render_chat
from cotdistill.config import (
    RunConfig,
    TinyModelConfig,
    describe_config,
    eval_config,
    load_config,
    to_yaml,
    validate_run,
)
from cotdistill.errors import ConfigError
from cotdistill.eval_sets import folder_name
from cotdistill.formats import Example
from cotdistill.generation import encode_prompts, sharded_generations
from cotdistill.modeling import load_model, load_tokenizer
from cotdistill.objectives import IGNORE_INDEX, mean_token_nll
from cotdistill.run_folder import RunFolder
from cotdistill.runs import with_run_synthetic
from cotdistill.tiny import build_tiny_model
from cotdistill.train import HELD_OUT, _eval_spec

SIZE = TinyModelConfig(vocab_size=320, d_model=32, num_layers=1, num_heads=4, d_ff=64, n_positions=256)
PROBLEMS = [(f"Q: Ann has {a} pens and buys {b} more. How many pens? A:",
             f" {a} + {b} = {a + b}. The answer is {a + b}.") for a in range(2, 40, 3) for b in range(1, 9)]
TEXTS = [q + t for q, t in PROBLEMS]
BIG = 4096


def examples(count: int) -> list[Example]:
    return [Example(source=q, target=t, format="zero_shot_cot", problem_id=str(i))
            for i, (q, t) in enumerate(PROBLEMS[:count])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    return {name: build_tiny_model(name, root / name, TEXTS, SIZE, seed=0) for name in ("qwen3", "gemma3", "gpt2")}


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- training layout ---------------------------------------------------------------------------------------


def test_a_chat_example_is_the_user_turn_then_the_assistant_turn_with_loss_on_the_answer_and_end_of_turn(tiny):
    tokenizer = load_tokenizer(tiny["qwen3"])  # the saved tiny Qwen3 carries ChatML, as Qwen instruct models do
    source, target = PROBLEMS[0]
    (example,), _ = tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=BIG,
                                      max_target_tokens=BIG, chat=True)
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    prompt = [im_start, *ids(tokenizer, f"user\n{source}"), im_end, *ids(tokenizer, "\n"), im_start,
              *ids(tokenizer, "assistant\n")]
    answer = [*ids(tokenizer, target), im_end]  # the turn's closing newline is never generated: left out
    assert list(example.input_ids) == prompt + answer
    assert list(example.labels) == [IGNORE_INDEX] * len(prompt) + answer


def test_a_gemma_chat_example_keeps_the_templates_bos_and_ends_with_end_of_turn_not_eos(tiny):
    tokenizer = load_tokenizer(tiny["gemma3"])
    (example,), _ = tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=BIG,
                                      max_target_tokens=BIG, chat=True)
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert example.input_ids[:2] == (tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<start_of_turn>"))
    assert example.input_ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, none added on top
    assert example.labels[-1] == end and tokenizer.eos_token_id not in example.labels
    assert end_of_turn_id(tokenizer) == end != tokenizer.eos_token_id


def test_evaluation_prompt_ids_equal_the_training_prompt_ids_whole_and_shortened(tiny):
    for name in ("qwen3", "gemma3"):
        tokenizer = load_tokenizer(tiny[name])
        for limit in (BIG, 12):
            (example,), stats = tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=limit,
                                                  max_target_tokens=BIG, chat=True)
            prompt = [i for i, label in zip(example.input_ids, example.labels, strict=True) if label == IGNORE_INDEX]
            (encoded,) = encode_prompts(tokenizer, True, [PROBLEMS[0][0]], max_prompt_tokens=limit, chat=True)
            assert encoded == prompt, (name, limit)
        assert stats.sources_truncated == 1 and len(encoded) == 12
        whole, _ = render_chat(tokenizer, *PROBLEMS[0])
        head = tokenizer.convert_tokens_to_ids("<|im_start|>" if name == "qwen3" else "<start_of_turn>")
        assert encoded[:encoded.index(head) + 1] == whole[:whole.index(head) + 1]  # shortened: the header stays
        assert encoded[-4:] == whole[-4:]  # ... and the assistant's header the answer follows


# --- refusals ----------------------------------------------------------------------------------------------


def test_a_tokenizer_without_a_chat_template_is_refused_naming_it(tiny):
    tokenizer = load_tokenizer(tiny["gpt2"])
    assert not tokenizer.chat_template
    with pytest.raises(ConfigError, match=rf"tokenizer of '{tiny['gpt2']}' has no chat template"):
        tokenize_examples(examples(1), tokenizer, causal=True, max_source_tokens=BIG, max_target_tokens=BIG,
                          chat=True)
    with pytest.raises(ConfigError, match="chat_template is true but the tokenizer .* has no chat template"):
        encode_prompts(tokenizer, True, ["Q: 1 + 1? A:"], max_prompt_tokens=64, chat=True)


def test_a_seq2seq_student_is_refused_before_training(tiny, tmp_path):
    tokenizer = load_tokenizer(tiny["qwen3"])
    with pytest.raises(ConfigError, match="seq2seq student"):
        tokenize_examples(examples(1), tokenizer, causal=False, max_source_tokens=BIG, max_target_tokens=BIG,
                          chat=True)
    with pytest.raises(ConfigError, match="data.chat_template is for decoder-only students"):
        load_config("recipes/demo-t5-synthetic.yaml", ["data.chat_template=true", "model.kind=seq2seq"])
    t5 = load_config("recipes/demo-t5-synthetic.yaml", ["data.chat_template=true", f"output_dir={tmp_path}/run",
                                                        f"model.name_or_path={tmp_path}/tiny-t5"])
    with pytest.raises(ConfigError, match=r"T5 \(t5\) is seq2seq and has no chat template"):
        validate_run(t5, world_size=1)


def test_chat_settings_that_contradict_the_training_layout_are_refused():
    with pytest.raises(ConfigError, match="eval.chat_template=true without data.chat_template"):
        load_config("recipes/demo-gpt2-synthetic.yaml", ["eval.chat_template=true"])
    with pytest.raises(ConfigError, match="protocol=kojima .* chat template"):
        load_config("recipes/demo-gpt2-synthetic.yaml", ["data.chat_template=true", "eval.protocol=kojima"])
    with pytest.raises(ConfigError, match="protocol=kojima"):
        eval_config({"model": "m", "chat_template": True, "protocol": "kojima"})
    assert any(line.startswith("data.chat_template") and "assistant turn" in line
               for line in describe_config(RunConfig))


# --- the model sees it -------------------------------------------------------------------------------------


def test_a_tiny_qwen3_trains_on_chat_examples_with_a_first_loss_near_ln_v(tiny):
    tokenizer = load_tokenizer(tiny["qwen3"])
    model = load_model(tiny["qwen3"], "causal")
    data, _ = tokenize_examples(examples(8), tokenizer, causal=True, max_source_tokens=BIG, max_target_tokens=BIG,
                                chat=True)
    batch = forward_batch(collate(data, tokenizer.pad_token_id), causal=True)
    loss, counted = mean_token_nll(model(**batch.inputs).logits, batch.labels, causal=not batch.aligned)
    loss.backward()
    assert counted == sum(len(render_chat(tokenizer, *PROBLEMS[i])[1]) for i in range(8))  # answer + end of turn
    assert abs(loss.item() - math.log(len(tokenizer))) < 0.1 * math.log(len(tokenizer))
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


class ScriptedEngine:
    """One rank whose ``generate`` answers every prompt with the given ids and records its arguments."""

    world_size, rank, is_main = 1, 0, True

    def __init__(self, answer: list[int]) -> None:
        self.answer, self.calls = answer, []
        self.module = SimpleNamespace(training=False)

    def eval(self) -> None: ...

    def train(self) -> None: ...

    def generate(self, input_ids, **kwargs):
        self.calls.append(kwargs)
        return torch.cat([input_ids, torch.tensor([self.answer] * len(input_ids))], dim=1)


def test_a_chat_student_stops_at_its_end_of_turn_token_and_the_answer_leaves_it_out(tiny):
    tokenizer = load_tokenizer(tiny["gemma3"])
    end = end_of_turn_id(tokenizer)
    encoded = encode_prompts(tokenizer, True, [PROBLEMS[0][0]], max_prompt_tokens=BIG, chat=True)
    answer = ids(tokenizer, "3 + 1 = 4.")
    engine = ScriptedEngine([*answer, end, tokenizer.pad_token_id])
    ((index, (text,), count, _),) = sharded_generations(engine, tokenizer, True, encoded, max_new_tokens=8,
                                                        batch_size=1, chat=True)
    assert set(engine.calls[0]["eos_token_id"]) == {end, tokenizer.eos_token_id}
    assert (index, text, count) == (0, "3 + 1 = 4.", len(answer) + 1)
    list(sharded_generations(engine, tokenizer, True, encoded, max_new_tokens=8, batch_size=1))
    assert engine.calls[1]["eos_token_id"] == tokenizer.eos_token_id  # a plain student: as before


# --- evaluation follows the run ----------------------------------------------------------------------------


def test_evaluating_a_chat_run_uses_its_chat_template_unless_told_otherwise(tmp_path):
    config = load_config("recipes/demo-gpt2-synthetic.yaml", ["data.chat_template=true"])
    assert _eval_spec(config).chat_template
    assert not _eval_spec(load_config("recipes/demo-gpt2-synthetic.yaml")).chat_template
    run = RunFolder(tmp_path / "run")
    run.final.mkdir(parents=True)
    run.config_file.write_text(to_yaml(config), encoding="utf-8")
    options, note = with_run_synthetic(str(run.final), {"datasets": "gsm8k"})
    assert eval_config({"model": "m", **options}).chat_template and "chat template" in note
    given, _ = with_run_synthetic(str(run.root), {"datasets": "gsm8k", "chat_template": False})
    assert not eval_config({"model": "m", **given}).chat_template
    outside, note = with_run_synthetic(str(tmp_path / "elsewhere"), {"datasets": "gsm8k"})
    assert "chat_template" not in outside and note is None


@pytest.mark.distributed
def test_a_one_rank_run_trains_and_evaluates_a_tiny_qwen3_in_its_chat_template(tiny, tmp_path):
    run = tmp_path / "run"
    launch("launchers/train.py", ["--config", "recipes/demo-gpt2-synthetic.yaml", *TINY_RUN,
                                  f"model.name_or_path={tiny['qwen3']}", "model.make_tiny=", f"output_dir={run}",
                                  "data.chat_template=true", "train.max_steps=3", "checkpoint.every=3",
                                  "eval.at_end=true", "eval.limit=2", "eval.max_new_tokens=8"], ranks=1)
    held_out = RunFolder(run).eval_dir() / folder_name(HELD_OUT)
    metrics = json.loads((held_out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["chat_template"] is True and metrics["total"] == 2
    predictions = [json.loads(line) for line in (held_out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and all("<|im_end|>" not in p["generated"] for p in predictions)
    assert load_tokenizer(run / "final").chat_template  # cotdistill eval of the export renders the same turns


@pytest.mark.distributed
def test_training_a_student_without_a_chat_template_in_chat_layout_stops_before_the_model_loads(tiny, tmp_path):
    run = tmp_path / "run"
    proc = launch("launchers/train.py", ["--config", "recipes/demo-gpt2-synthetic.yaml", *TINY_RUN,
                                         f"model.name_or_path={tiny['gpt2']}", "model.make_tiny=",
                                         f"output_dir={run}", "data.chat_template=true"], ranks=1, expect_ok=False)
    assert proc.returncode != 0
    assert f"the tokenizer of '{tiny['gpt2']}' has no chat template" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not run.exists()
