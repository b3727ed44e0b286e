"""Learning-rate schedule: warmup, then cosine, linear or constant decay toward min_lr_ratio * lr."""

from __future__ import annotations

import math

import pytest

from cotdistill.config import TrainConfig
from cotdistill.schedule import lr_at

PEAK = 2e-3


def train(**kwargs) -> TrainConfig:
    values = {"lr": PEAK, "warmup_steps": 0, "schedule": "cosine", "min_lr_ratio": 0.0}
    values.update(kwargs)
    return TrainConfig(**values)


def curve(total: int, config: TrainConfig, extra: int = 0) -> list[float]:
    return [lr_at(step, total, config) for step in range(total + extra)]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_rises_linearly_to_the_peak(schedule):
    config = train(warmup_steps=10, schedule=schedule)
    values = [lr_at(step, 100, config) for step in range(10)]
    assert values[0] == pytest.approx(PEAK / 10)
    increments = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(inc == pytest.approx(PEAK / 10) for inc in increments)
    assert values[-1] == pytest.approx(PEAK)


def test_first_update_after_warmup_is_at_the_peak():
    config = train(warmup_steps=10)
    assert lr_at(10, 100, config) == pytest.approx(PEAK)


def test_first_step_without_warmup_is_the_peak():
    assert lr_at(0, 50, train()) == pytest.approx(PEAK)


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("warmup", [0, 7])
def test_cosine_ends_at_min_lr_ratio_times_lr(ratio, warmup):
    config = train(min_lr_ratio=ratio, warmup_steps=warmup)
    assert lr_at(40, 40, config) == pytest.approx(ratio * PEAK, abs=1e-12)


def test_cosine_last_update_is_just_above_the_floor():
    total, ratio = 40, 0.1
    config = train(min_lr_ratio=ratio)
    last = lr_at(total - 1, total, config)
    expected = ratio * PEAK + (1 - ratio) * PEAK * 0.5 * (1 + math.cos(math.pi * (total - 1) / total))
    assert last == pytest.approx(expected)
    assert ratio * PEAK < last < ratio * PEAK * 1.1


def test_cosine_is_half_way_at_mid_decay():
    config = train(min_lr_ratio=0.2, warmup_steps=10)
    floor = 0.2 * PEAK
    assert lr_at(10 + 45, 100, config) == pytest.approx(floor + (PEAK - floor) / 2)


def test_cosine_decays_monotonically_after_warmup():
    config = train(warmup_steps=5, min_lr_ratio=0.1)
    values = curve(60, config)[5:]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert values[0] > values[-1]


def test_linear_decays_monotonically_to_the_floor():
    config = train(schedule="linear", warmup_steps=4, min_lr_ratio=0.25)
    values = curve(44, config)[4:]
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d < 0 for d in diffs)
    assert all(d == pytest.approx(diffs[0]) for d in diffs)
    assert lr_at(44, 44, config) == pytest.approx(0.25 * PEAK)


def test_linear_differs_from_cosine():
    cos = lr_at(25, 100, train(schedule="cosine"))
    lin = lr_at(25, 100, train(schedule="linear"))
    assert lin == pytest.approx(0.75 * PEAK)
    assert cos == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cos > lin


def test_constant_stays_at_the_peak_after_warmup():
    config = train(schedule="constant", warmup_steps=3, min_lr_ratio=0.1)
    values = curve(30, config, extra=5)[3:]
    assert all(v == pytest.approx(PEAK) for v in values)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_longer_than_run_still_reaches_the_peak(schedule):
    config = train(warmup_steps=100, schedule=schedule)
    values = curve(10, config)
    assert values[-1] == pytest.approx(PEAK)
    assert values[0] == pytest.approx(PEAK / 10)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_steps_past_the_end_stay_at_the_floor(schedule):
    config = train(schedule=schedule, min_lr_ratio=0.1)
    assert [lr_at(step, 20, config) for step in (20, 21, 50)] == pytest.approx([0.1 * PEAK] * 3)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("warmup, total", [(0, 1), (0, 17), (5, 17), (30, 17), (17, 17)])
def test_lr_is_never_negative_nor_above_peak(schedule, ratio, warmup, total):
    config = train(schedule=schedule, min_lr_ratio=ratio, warmup_steps=warmup)
    values = curve(total, config, extra=5)
    assert all(0.0 <= v <= PEAK * (1 + 1e-12) for v in values)
    assert all(v > 0 for v in values[:total])


def test_min_lr_ratio_one_keeps_the_rate_flat():
    config = train(min_lr_ratio=1.0)
    assert all(v == pytest.approx(PEAK) for v in curve(25, config))


def test_schedule_is_a_pure_function_of_the_step():
    config = train(warmup_steps=3, min_lr_ratio=0.1)
    full = curve(30, config)
    resumed = [lr_at(step, 30, config) for step in range(12, 30)]
    assert resumed == full[12:]
