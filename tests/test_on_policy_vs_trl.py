"""benchmarks/on_policy_vs_trl.py and trl_gkd_baseline.py, the parts that run without training: TRL's GKD
collator gets exactly our tokenized examples, the student shares the teacher's vocabulary, samples/s is read
the same way from both trainers' logs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL warns on every import of trl.experimental

import on_policy_vs_trl  # noqa: E402
import trl_gkd_baseline  # noqa: E402


def our_examples(tokenizer_dir: Path):
    from cotdistill.batching import tokenize_examples
    from cotdistill.config import load_config
    from cotdistill.modeling import load_tokenizer
    from cotdistill.run_data import load_run_problems, run_examples

    config = load_config(REPO / "recipes/demo-gpt2-synthetic.yaml", ["data.synthetic.train_size=12"])
    examples = run_examples(config, load_run_problems(config.data)[0])
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenized, _ = tokenize_examples(examples, tokenizer, True, 192, 160)
    return examples, tokenized, tokenizer


def test_trls_collator_trains_on_our_tokens_with_the_loss_where_ours_is(tiny_models):
    from trl.experimental.utils import DataCollatorForChatML

    examples, tokenized, tokenizer = our_examples(tiny_models["gpt2"])
    rows = trl_gkd_baseline.gkd_rows(tokenized, [e.source for e in examples])
    features = [{key: rows[key][i] for key in rows} for i in range(4)]
    batch = DataCollatorForChatML(tokenizer=tokenizer, max_length=400)(features)
    for i, example in enumerate(tokenized[:4]):  # TRL pads on the left
        n = len(example.input_ids)
        assert batch["input_ids"][i, -n:].tolist() == list(example.input_ids)
        assert batch["labels"][i, -n:].tolist() == list(example.labels)
        assert batch["labels"][i, :-n].eq(-100).all() and batch["attention_mask"][i].sum() == n
        prompt = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label == -100]
        assert batch["prompts"][i, -len(prompt):].tolist() == prompt  # what the student samples from


def test_an_example_without_a_target_is_refused():
    from cotdistill.batching import TokenizedExample

    with pytest.raises(ValueError, match="a target"):
        trl_gkd_baseline.gkd_rows([TokenizedExample((1, 2), (-100, -100), True)], ["q"])


def test_the_student_shares_the_teachers_vocabulary_and_special_ids(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = on_policy_vs_trl.make_student(tiny_models["gpt2"], tmp_path / "s", 32, 1, 2, seed=3)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    model = AutoModelForCausalLM.from_pretrained(student)
    assert model.config.vocab_size == teacher.config.vocab_size and model.config.n_embd == 32
    assert (model.config.eos_token_id, model.config.pad_token_id) == (teacher.config.eos_token_id,
                                                                    teacher.config.pad_token_id)
    assert AutoTokenizer.from_pretrained(student).get_vocab() == AutoTokenizer.from_pretrained(
        tiny_models["gpt2"]).get_vocab()
    again = AutoModelForCausalLM.from_pretrained(on_policy_vs_trl.make_student(tiny_models["gpt2"], tmp_path / "t",
                                                                               32, 1, 2, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_samples_per_second_counts_both_logs_alike_after_the_skipped_steps():
    ours = [{"step": s, "samples_per_s": 16 / t, "step_time_s": t} for s, t in ((1, 5.0), (2, 0.5), (3, 1.5))]
    trl = [{"step": s, "samples": 16, "step_time_s": t} for s, t in ((1, 5.0), (2, 0.5), (3, 1.5))]
    for rows in (ours, trl):
        measured = on_policy_vs_trl.throughput(rows, skip=1)
        assert measured["steps_measured"] == 2 and measured["samples"] == pytest.approx(32)
        assert measured["samples_per_s"] == pytest.approx(16.0) and measured["step_time_s"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no step after the first 3"):
        on_policy_vs_trl.throughput(ours, skip=3)


def test_a_results_file_that_cannot_be_written_stops_the_comparison_before_any_work(tmp_path):
    import subprocess

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "benchmarks/on_policy_vs_trl.py", "--teacher", str(tmp_path / "none"),
                           "--work", str(tmp_path / "work"), "--out", str(blocker / "r.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--out" in proc.stderr and str(blocker) in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "work").exists()


def test_a_warm_start_is_reused_only_when_it_was_made_with_the_same_settings(tmp_path):
    # The script reused any finished sft/ folder: a rerun with another --seed or --sft_steps compared both trainers
    # from the old student.
    warm = tmp_path / "sft"
    (warm / "final").mkdir(parents=True)
    (warm / "final" / "config.json").write_text("{}", encoding="utf-8")
    settings = {"recipe": "r.yaml", "overrides": ["train.seed=1", "train.max_steps=2000"], "ranks": 2}
    assert not on_policy_vs_trl.warm_start_reusable(warm, settings)  # no mark: made by an older script
    (warm / on_policy_vs_trl.WARM_START_MARK).write_text(json.dumps(settings), encoding="utf-8")
    assert on_policy_vs_trl.warm_start_reusable(warm, settings)
    assert not on_policy_vs_trl.warm_start_reusable(warm, {**settings, "overrides": ["train.seed=2",
                                                                                    "train.max_steps=2000"]})
    (warm / "final" / "config.json").unlink()  # an SFT run that died before its final export
    assert not on_policy_vs_trl.warm_start_reusable(warm, settings)


def test_seeds_are_summarized_with_paired_differences_on_the_same_problems(tmp_path):
    def write(work, folder, outcome, questions="same"):
        out = work / folder / "synthetic"
        out.mkdir(parents=True)
        rows = [{"index": i, "id": f"p{i}", "question": f"{questions} {i}", "gold": "1", "correct": c == "1"}
                for i, c in enumerate(outcome)]
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "metrics.json").write_text(json.dumps({"correct": outcome.count("1"), "total": len(outcome),
                                                      "accuracy": outcome.count("1") / len(outcome)}))

    works = [tmp_path / "seed-1", tmp_path / "seed-2"]
    for work, (start, ours, trl) in zip(works, [("1000", "1110", "1100"), ("1100", "1111", "1100")], strict=True):
        write(work, "start-eval", start)
        write(work, "cotdistill-eval", ours)
        write(work, "trl-gkd-eval", trl)
    text = on_policy_vs_trl.summarize_seeds(works)
    assert "| cotdistill | 75.0, 100.0 | 87.5 | 17.7 |" in text
    assert "cotdistill minus TRL GKD: +37.5 points" in text and "4 problems, 2 seeds" in text
    write(tmp_path / "seed-3", "start-eval", "1000", questions="other")
    write(tmp_path / "seed-3", "cotdistill-eval", "1000", questions="other")
    write(tmp_path / "seed-3", "trl-gkd-eval", "1000", questions="other")
    with pytest.raises(SystemExit, match="different problems"):
        on_policy_vs_trl.summarize_seeds([*works, tmp_path / "seed-3"])


def test_positions_from_mask_make_a_left_padded_row_score_like_the_unpadded_row(tiny_models):
    """TRL's loss forwards pass a mask and no positions; GPT-2 then counts positions from the first column, so a
    left-padded row is scored at shifted positions. With --positions_from_mask it scores as if unpadded, and a
    forward that brings its own positions (generation) is left alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["gpt2"]), dtype=torch.float32).eval()
    ids = torch.tensor([[5, 9, 13, 21, 8]])
    pads = 3
    padded = torch.cat([torch.zeros(1, pads, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, pads, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.inference_mode():
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        shifted = model(input_ids=padded, attention_mask=mask).logits[0, pads:]
        own = torch.arange(padded.size(1)).unsqueeze(0)
        given = model(input_ids=padded, attention_mask=mask, position_ids=own).logits[0, pads:]
        trl_gkd_baseline.fill_positions_from_mask(model)
        fixed = model(input_ids=padded, attention_mask=mask).logits[0, pads:]
        still_given = model(input_ids=padded, attention_mask=mask, position_ids=own).logits[0, pads:]
    assert (shifted - alone).abs().max() > 1e-3  # the mechanism: TRL's forward is not the unpadded one
    torch.testing.assert_close(fixed, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(still_given, given, rtol=0, atol=0)


def test_the_trl_launch_gets_its_own_flags_before_the_shared_recipe_and_overrides(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(on_policy_vs_trl.subprocess, "call", lambda cmd, **kwargs: seen.append(cmd) or 0)
    on_policy_vs_trl.run(on_policy_vs_trl.TRAINERS["TRL GKD"], "r.yaml", ["train.max_steps=3"], 2,
                         tmp_path / "log", ("--positions_from_mask",))
    (cmd,) = seen
    script = cmd.index("benchmarks/trl_gkd_baseline.py")
    assert cmd[script + 1:] == ["--positions_from_mask", "--config", "r.yaml", "train.max_steps=3"]
