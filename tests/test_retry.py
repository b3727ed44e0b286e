"""Backoff and the retry loop, with a fake sleep that records the delays instead of waiting."""

from __future__ import annotations

import asyncio
import random

import pytest

from cotdistill.teacher.retry import RetriesExhausted, RetryPolicy, call_with_retries
from cotdistill.teacher.types import TeacherError, TransientTeacherError


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Flaky:
    """Fails with the given errors in order, then returns 'ok'; counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(coro):
    return asyncio.run(coro)


def test_delay_stays_under_a_doubling_ceiling_capped_at_maximum():
    policy = RetryPolicy(max_retries=10, initial=0.5, maximum=5.0)
    rng = random.Random(0)
    for retry, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]):
        delays = [policy.delay(retry, rng) for _ in range(300)]
        assert min(delays) >= 0.0
        assert max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling  # full jitter reaches the ceiling, not just its neighbourhood of 0
        assert min(delays) < 0.2 * ceiling


def test_delay_is_jittered_not_constant():
    policy = RetryPolicy()
    rng = random.Random(1)
    assert len({policy.delay(3, rng) for _ in range(20)}) == 20


def test_delay_is_repeatable_for_a_seeded_rng():
    policy = RetryPolicy()
    first = [policy.delay(r, random.Random(7)) for r in range(5)]
    assert first == [policy.delay(r, random.Random(7)) for r in range(5)]


def test_delay_never_undercuts_the_servers_retry_after():
    policy = RetryPolicy(initial=0.01, maximum=60.0)
    rng = random.Random(2)
    assert all(policy.delay(0, rng, retry_after=3.0) >= 3.0 for _ in range(50))


def test_retry_after_is_capped_at_maximum():
    policy = RetryPolicy(initial=0.01, maximum=2.0)
    assert policy.delay(0, random.Random(3), retry_after=3600.0) == 2.0


def test_zero_retry_after_leaves_the_jittered_delay():
    policy = RetryPolicy(initial=1.0, maximum=60.0)
    assert policy.delay(2, random.Random(4), retry_after=0.0) == policy.delay(2, random.Random(4))


def test_huge_retry_counts_do_not_overflow():
    assert 0.0 <= RetryPolicy(maximum=60.0).delay(5000, random.Random(5)) <= 60.0


@pytest.mark.parametrize("kwargs", [{"max_retries": -1}, {"initial": -1.0}, {"initial": 10.0, "maximum": 1.0}])
def test_policy_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_success_after_transient_failures_reports_each_cause_and_sleeps_between():
    call = Flaky(TransientTeacherError("rate_limit", "429"), TransientTeacherError("timeout", "slow"))
    sleep, causes = FakeSleep(), []
    policy = RetryPolicy(max_retries=5, initial=1.0, maximum=10.0)
    result = run(call_with_retries(call, policy, on_retry=causes.append, sleep=sleep, rng=random.Random(0)))
    assert result == "ok"
    assert call.calls == 3
    assert causes == ["rate_limit", "timeout"]
    assert len(sleep.delays) == 2
    assert 0 <= sleep.delays[0] <= 1.0 and 0 <= sleep.delays[1] <= 2.0


def test_first_success_does_not_sleep():
    sleep = FakeSleep()
    assert run(call_with_retries(Flaky(), RetryPolicy(), sleep=sleep)) == "ok"
    assert sleep.delays == []


def test_gives_up_after_exactly_max_retries_plus_one_calls():
    call = Flaky(*[TransientTeacherError("server_error", f"HTTP 500 #{i}") for i in range(10)])
    sleep, causes = FakeSleep(), []
    with pytest.raises(RetriesExhausted) as info:
        run(call_with_retries(call, RetryPolicy(max_retries=3), on_retry=causes.append, sleep=sleep))
    assert call.calls == 4
    assert causes == ["server_error"] * 3  # the final failure is not a retry
    assert len(sleep.delays) == 3
    err = info.value
    assert (err.cause, err.attempts, err.message) == ("server_error", 4, "HTTP 500 #3")
    assert "4 attempts" in str(err) and "HTTP 500 #3" in str(err)


def test_zero_retries_means_one_attempt():
    call = Flaky(TransientTeacherError("connection", "refused"))
    with pytest.raises(RetriesExhausted) as info:
        run(call_with_retries(call, RetryPolicy(max_retries=0), sleep=FakeSleep()))
    assert call.calls == 1 and info.value.attempts == 1


def test_retry_after_from_the_error_reaches_the_sleep():
    call = Flaky(TransientTeacherError("rate_limit", "429", retry_after=7.5))
    sleep = FakeSleep()
    run(call_with_retries(call, RetryPolicy(initial=0.001, maximum=60.0), sleep=sleep))
    assert sleep.delays[0] >= 7.5


@pytest.mark.parametrize("error", [TeacherError("HTTP 401: bad key"), KeyError("bug")])
def test_permanent_errors_and_bugs_are_not_retried(error):
    call, sleep, causes = Flaky(error), FakeSleep(), []
    with pytest.raises(type(error)):
        run(call_with_retries(call, RetryPolicy(), on_retry=causes.append, sleep=sleep))
    assert call.calls == 1
    assert sleep.delays == [] and causes == []
