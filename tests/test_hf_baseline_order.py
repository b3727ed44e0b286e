"""benchmarks/hf_trainer_baseline.py --batch_order cotdistill: the Trainer's ranks get our trainer's batches.

The dealing is accelerate's own (`BatchSamplerShard`, what the Trainer's prepared dataloader uses on several
processes), checked against `run_batch_order`'s per-rank micro-batches, the ones `launchers/train.py` trains on.
"""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO
from cotdistill.batching import run_batch_order
from cotdistill.config import TrainConfig

SPEC = importlib.util.spec_from_file_location("hf_trainer_baseline", REPO / "benchmarks" / "hf_trainer_baseline.py")
baseline = importlib.util.module_from_spec(SPEC)
sys.modules["hf_trainer_baseline"] = baseline
SPEC.loader.exec_module(baseline)


def example(length: int) -> SimpleNamespace:
    return SimpleNamespace(length=length, input_ids=[5] * length, labels=[-100] * (length - 2) + [7, 8],
                           format="zero_shot_cot")


def config(tmp_path, **train) -> SimpleNamespace:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 1}')
    return SimpleNamespace(train=TrainConfig(**train), model=SimpleNamespace(name_or_path=str(model)),
                           data=SimpleNamespace(single_format_batches=False))


@pytest.mark.parametrize("pack", [True, False])
def test_each_trainer_rank_draws_exactly_our_ranks_micro_batches(tmp_path, pack):
    from accelerate.data_loader import BatchSamplerShard

    tokenized = [example(3 + (i * 7) % 40) for i in range(53)]  # 53: the epoch wraps around inside 6 steps
    cfg = config(tmp_path, micro_batch_size=4, gradient_accumulation=2, max_steps=6, seed=5, pack_sequences=pack)
    indices = baseline.cotdistill_order(cfg, tokenized, True, world_size=2)
    trainer = baseline.with_sampler(object, indices)()  # any base class: only the sampler method is added
    drawn = list(trainer._get_train_sampler())
    assert drawn == indices

    order = run_batch_order(tokenized, True, 2, cfg.train, False, pack)
    for rank in range(2):
        ours = [next(batch) for batch in [order.iterate(rank)] for _ in range(6 * 2)]
        batches = torch.utils.data.BatchSampler(drawn, batch_size=4, drop_last=False)
        theirs = list(BatchSamplerShard(batches, num_processes=2, process_index=rank))
        assert theirs == ours
    assert len(set(map(tuple, ours))) > 1  # the steps differ: a constant order would pass trivially


def test_cotdistill_order_refuses_partial_micro_batches(tmp_path, monkeypatch):
    tokenized = [example(5) for _ in range(8)]
    cfg = config(tmp_path, micro_batch_size=4, max_steps=2, seed=1)
    monkeypatch.setattr("cotdistill.batching.BatchStream.next_step", lambda self: [[0, 1, 2], [3, 4, 5, 6]])
    with pytest.raises(SystemExit, match="full micro-batches"):
        baseline.cotdistill_order(cfg, tokenized, True, world_size=2)
