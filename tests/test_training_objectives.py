"""The trainer's pluggable objectives (cotdistill.training_objectives): choosing one, refusing contradictions,
what each computes on a real tiny model, and a plugged-in objective trained on 2 ZeRO-3 ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from conftest import launch
from cotdistill.batching import TokenizedExample, collate, run_batch_order, tokenize_examples
from cotdistill.config import TrainConfig, load_config
from cotdistill.errors import ConfigError
from cotdistill.objectives import IGNORE_INDEX, mean_token_nll
from cotdistill.packed_attention import use_packed_attention
from cotdistill.run_data import load_run_problems, run_examples
from cotdistill.training_objectives import (
    OBJECTIVES,
    DistributionMatching,
    MicroBatch,
    SupervisedFineTuning,
    TrainingSetup,
    make_objective,
    objective_name,
)


def micro_batch(batch: list[TokenizedExample]) -> MicroBatch:
    return MicroBatch(tuple(range(len(batch))), tuple(batch), index=0, rank=0)


def prepared(objective, tokenizer, causal: bool, packed: bool):
    objective.prepare(TrainingSetup(None, tokenizer, causal, packed, world_size=1))
    return objective


class ModelAsEngine:
    """What an objective uses of cotdistill's Engine: its module, device and forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module = model
        self.device = torch.device("cpu")

    def forward(self, **inputs):
        return self.module(**inputs)


def test_auto_is_distribution_matching_with_a_kd_weight_and_sft_without():
    assert objective_name(TrainConfig()) == "sft"
    assert objective_name(TrainConfig(kd_weight=0.5)) == "kd"
    assert isinstance(make_objective(TrainConfig(objective="kd", kd_weight=1.0)), DistributionMatching)
    assert set(OBJECTIVES) >= {"sft", "kd"}


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.objective=sft", "train.kd_weight=0.5"], "train.objective=sft .* train.kd_weight=0.5"),
    (["train.objective=kd"], "train.objective=kd .* train.kd_weight, which is 0"),
    (["train.objective=grpo"], "train.objective='grpo' is not one of auto, sft, kd"),
])
def test_contradicting_or_unknown_objectives_are_refused_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("recipes/demo-gpt2-synthetic.yaml", overrides)


def examples(tokenizer, causal: bool, teacher: bool) -> list[TokenizedExample]:
    """Two examples of different lengths; with ``teacher``, each target token gets a two-token distribution."""
    out = []
    for source, target in [("Ann has 3 apples.", "3 + 4 = 7"), ("Bob has 12 pens and 5 more.", "12 + 5 = 17")]:
        src, tgt = tokenizer(source)["input_ids"], tokenizer(" " + target)["input_ids"] + [tokenizer.eos_token_id]
        dists = [((t, (t + 1) % len(tokenizer)), (0.7, 0.3)) for t in tgt] if teacher else None
        if causal:
            out.append(TokenizedExample(tuple(src + tgt), tuple([IGNORE_INDEX] * len(src) + tgt), True,
                                        "zero_shot_cot", dists))
        else:
            out.append(TokenizedExample(tuple(src), tuple(tgt), False, "zero_shot_cot", dists))
    return out


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
@pytest.mark.parametrize("packed", [False, True])
def test_sft_is_the_mean_target_nll_and_kd_with_a_one_hot_teacher_equals_it(tiny_models, arch, packed):
    causal = arch == "gpt2"
    model = (AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM).from_pretrained(tiny_models[arch]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    engine = ModelAsEngine(model)
    batch = examples(tokenizer, causal, teacher=False)
    if packed:  # as load_model(packed=True) does for training; padded forwards keep plain attention
        use_packed_attention(model)
    sft = prepared(SupervisedFineTuning(TrainConfig()), tokenizer, causal, packed)
    kd = prepared(DistributionMatching(TrainConfig(kd_weight=0.7)), tokenizer, causal, packed)
    with torch.no_grad():
        found = sft.loss(engine, micro_batch(batch))
        one_hot = kd.loss(engine, micro_batch(batch))
        # The reference: the plain padded forward, every target token scored by hand.
        padded = collate(batch, tokenizer.pad_token_id)
        inputs = {k: v for k, v in padded.items() if k != "labels"}
        if not causal:
            inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=padded["labels"])
        expected, n = mean_token_nll(model(**inputs).logits, padded["labels"], causal)
    assert found.tokens == one_hot.tokens == n == sum(sum(t != IGNORE_INDEX for t in e.labels) for e in batch)
    assert math.isclose(found.loss.item(), expected.item(), rel_tol=1e-5)
    assert math.isclose(one_hot.loss.item(), expected.item(), rel_tol=1e-5)


def test_kd_moves_the_loss_towards_the_teachers_distribution(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    engine = ModelAsEngine(model)
    with_teacher = examples(tokenizer, True, teacher=True)
    sft = prepared(SupervisedFineTuning(TrainConfig()), tokenizer, True, False)
    kd = prepared(DistributionMatching(TrainConfig(kd_weight=1.0)), tokenizer, True, False)
    with torch.no_grad():
        nll = sft.loss(engine, micro_batch(with_teacher)).loss.item()
        kl = kd.loss(engine, micro_batch(with_teacher)).loss.item()
    # KL(p || q) = -H(p) - sum p log q with p = (0.7, 0.3): not the NLL of the text, and smaller than the
    # cross-entropy to p, which is at most the NLL's 0.7 share plus 0.3 x the other token's NLL.
    assert kl != pytest.approx(nll) and kl > 0


def tokenized_run_examples(config, model: Path) -> list[TokenizedExample]:
    problems, _ = load_run_problems(config.data)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenized, _ = tokenize_examples(run_examples(config, problems), tokenizer, True, config.data.max_source_tokens,
                                     config.data.max_target_tokens)
    return tokenized


def test_a_plugged_in_objective_trains_on_two_ranks_and_its_metric_reaches_the_log(tiny_models, tmp_path: Path):
    run = tmp_path / "run"
    proc = launch("tests/scripts/train_plugged_objective.py", [
        "--config", "recipes/demo-gpt2-synthetic.yaml", f"model.name_or_path={tiny_models['gpt2']}",
        "model.make_tiny=", f"output_dir={run}", "train.objective=sft_logged", "train.max_steps=4",
        "train.micro_batch_size=4", "train.gradient_accumulation=2", "data.synthetic.train_size=64",
        "data.synthetic.eval_size=2", "checkpoint.every=0", "eval.at_end=false"])
    assert "objective sft_logged" in proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:  # summed over 2 ranks x 2 micro-batches, divided by the step's tokens: the step's loss
        assert row["nll"] == pytest.approx(row["loss"], rel=1e-9)
    # The first examples' indices averaged over the step's 4 micro-batches: the batch order's, as replayed here.
    config = load_config("recipes/demo-gpt2-synthetic.yaml", [f"model.name_or_path={tiny_models['gpt2']}",
                                                              "train.micro_batch_size=4", "train.max_steps=4",
                                                              "train.gradient_accumulation=2",
                                                              "data.synthetic.train_size=64"])
    order = run_batch_order(tokenized_run_examples(config, tiny_models["gpt2"]), True, 2, config.train, False, True)
    stream = order.stream(order.position(0))
    for row in rows:
        firsts = [batch[0] for _ in range(2) for batch in stream.next_step()]
        assert row["first_example"] == pytest.approx(sum(firsts) / 4, rel=1e-12)
    assert rows[-1]["loss"] < rows[0]["loss"]
