"""Tiny model building, the show-config command, user-error exits, and the result table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from transformers import AutoConfig

from conftest import REPO
from cotdistill import cli
from cotdistill.config import TinyModelConfig, load_config
from cotdistill.entrypoints import run_or_exit
from cotdistill.errors import ConfigError, CotDistillError, DataError
from cotdistill.report import markdown_table, print_run_summary
from cotdistill.tiny import build_tiny_model

TEXTS = ["Tom has 3 apples. He buys 2 more. 3 + 2 = 5. The answer is 5."] * 10
SIZE = TinyModelConfig(vocab_size=300, d_model=16, num_layers=1, num_heads=2, d_ff=32, n_positions=64)


# --- build_tiny_model ------------------------------------------------------------------------------------


def test_existing_folder_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists") as err:
        build_tiny_model("gpt2", out, TEXTS, SIZE)
    assert str(out) in str(err.value)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_unknown_architecture_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="'mamba'") as err:
        build_tiny_model("mamba", tmp_path / "tiny", TEXTS, SIZE)
    assert all(name in str(err.value) for name in ("t5", "gpt2", "llama", "qwen2", "qwen3"))
    assert list(tmp_path.iterdir()) == []


def test_successful_build_leaves_only_the_finished_folder(tmp_path):
    out = build_tiny_model("gpt2", tmp_path / "tiny", TEXTS, SIZE, seed=3)
    assert out == tmp_path / "tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"], "a .tmp-* folder was left behind"
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "gpt2"
    assert (config.n_embd, config.n_layer, config.n_head) == (16, 1, 2)
    assert (out / "tokenizer.json").is_file()


def test_build_refuses_a_size_the_model_cannot_have_without_leaving_files(tmp_path):
    odd = TinyModelConfig(vocab_size=300, d_model=15, num_layers=1, num_heads=2, d_ff=32, n_positions=64)
    with pytest.raises(ConfigError, match="divisible"):
        build_tiny_model("gpt2", tmp_path / "tiny", TEXTS, odd)
    assert list(tmp_path.iterdir()) == []


# --- show-config -----------------------------------------------------------------------------------------


def test_show_config_prints_yaml_that_reloads_to_the_same_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    cli.show_config("recipes/demo-t5-synthetic.yaml", "train.lr=0.01")
    printed = capsys.readouterr().out

    values = yaml.safe_load(printed)
    assert values["train"]["lr"] == 0.01
    assert values["model"]["name_or_path"] == "runs/tiny-t5"
    copy = tmp_path / "shown.yaml"
    copy.write_text(printed, encoding="utf-8")
    expected = load_config(REPO / "recipes" / "demo-t5-synthetic.yaml", ["train.lr=0.01"])
    assert load_config(copy) == expected


def test_show_config_with_a_bad_override_exits_2_with_one_error_line(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        cli.show_config("recipes/demo-t5-synthetic.yaml", "train.lrr=0.01")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "train.lrr" in captured.err
    assert "Traceback" not in captured.err


# --- run_or_exit -----------------------------------------------------------------------------------------


def test_run_or_exit_returns_the_result_when_nothing_fails():
    assert run_or_exit(lambda: 41 + 1) == 42


@pytest.mark.parametrize("error", [ConfigError("bad key 'x'"), DataError("file.jsonl line 3: no answer"),
                                   CotDistillError("plain")])
def test_run_or_exit_turns_user_errors_into_exit_2_and_an_error_line(error, capsys):
    def fail():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_or_exit(fail)
    assert exit_info.value.code == 2
    assert exit_info.value.__cause__ is None and exit_info.value.__suppress_context__
    captured = capsys.readouterr()
    assert captured.err == f"error: {error}\n"
    assert captured.out == ""


@pytest.mark.parametrize("error", [ValueError("bug"), KeyError("k"), RuntimeError("boom")])
def test_run_or_exit_lets_programming_errors_through(error, capsys):
    def fail():
        raise error

    with pytest.raises(type(error)) as raised:
        run_or_exit(fail)
    assert raised.value is error
    assert capsys.readouterr().err == ""


# --- report ----------------------------------------------------------------------------------------------


def test_markdown_table_renders_header_separator_and_rows():
    table = markdown_table(["run", "value", "note"], [["steps", 6, None], ["loss", 0.25, "ok"]])
    assert table.splitlines() == [
        "| run | value | note |",
        "|---|---|---|",
        "| steps | 6 | None |",
        "| loss | 0.25 | ok |",
    ]


def test_markdown_table_without_rows_is_header_and_separator():
    assert markdown_table(["a"], []) == "| a |\n|---|"


def summary_inputs(tmp_path):
    config = SimpleNamespace(model=SimpleNamespace(name_or_path="runs/tiny-t5"))
    result = SimpleNamespace(steps=6, final_loss=1.23456, output_dir=tmp_path, export_dir=tmp_path / "final",
                             eval=SimpleNamespace(correct=3, total=4, accuracy=0.75))
    return config, result


def test_run_summary_on_rank_0_lists_loss_export_and_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    print_run_summary(*summary_inputs(tmp_path))
    out = capsys.readouterr().out
    assert "| final train loss | 1.2346 |" in out
    assert f"| exported weights | {tmp_path / 'final'} |" in out
    assert "| held-out accuracy | 3/4 (75.0%) |" in out


def test_run_summary_is_silent_on_other_ranks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    print_run_summary(*summary_inputs(tmp_path))
    assert capsys.readouterr().out == ""


TEXTS = [f"Q: what is {a} plus {b}? A: {a} + {b} = {a + b}. The answer is {a + b}."
         for a in range(30) for b in range(9)]


def test_random_full_size_model_keeps_its_published_vocabulary_and_a_working_tokenizer(tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.tiny import build_random_model

    spec = tmp_path / "gpt2-like.json"
    spec.write_text(json.dumps({"model_type": "gpt2", "vocab_size": 5000, "n_positions": 128, "n_embd": 32,
                                "n_layer": 2, "n_head": 4}))
    out = build_random_model(str(spec), tmp_path / "random", TEXTS, vocab_size=300)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == 5000 and len(tokenizer) <= 300
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("what is 3 plus 4?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert abs(float(loss) - torch.log(torch.tensor(5000.0))) < 1.0  # near-uniform at the start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-like.json", "random"]
    with pytest.raises(ConfigError, match="already exists"):
        build_random_model(str(spec), out, TEXTS)


def test_random_flan_t5_keeps_a_separate_lm_head_through_save_and_load(tmp_path):
    import math

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from cotdistill.memory_plan import count_parameters, resolve_model_config
    from cotdistill.tiny import build_random_model

    out = build_random_model("flan-t5-small", tmp_path / "flan", TEXTS, vocab_size=300)
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    published = count_parameters(resolve_model_config("flan-t5-small")).total_params
    assert sum(p.numel() for p in model.parameters()) == published
    ids = torch.tensor([[5, 6, 7, 8, 1]])
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
    assert abs(loss - math.log(model.config.vocab_size)) < 1.5, loss  # near-uniform, not in the hundreds
