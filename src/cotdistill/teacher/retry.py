"""Retrying a teacher request: exponential backoff with full jitter, honouring a server's Retry-After.

Full jitter (a uniform delay up to the exponential ceiling) spreads the retries of many concurrent
requests that failed together, so a rate-limited server is not hit by them all again at once.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from cotdistill.teacher.types import TransientTeacherError

T = TypeVar("T")
_MAX_EXPONENT = 64  # 2**64 seconds is beyond any maximum; avoids float overflow for absurd retry counts


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_retries` retries; retry r waits uniform(0, min(maximum, initial * 2**r)) seconds."""

    max_retries: int = 8
    initial: float = 1.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {self.max_retries}")
        if not (0 <= self.initial <= self.maximum):
            raise ValueError(f"backoff needs 0 <= initial <= maximum, got initial={self.initial}, "
                             f"maximum={self.maximum}")

    def delay(self, retry: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (from 0); at least the server's `retry_after`, capped."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(retry, _MAX_EXPONENT))
        wait = rng.uniform(0.0, ceiling)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            wait = max(wait, min(retry_after, self.maximum))
        return wait


class RetriesExhausted(Exception):
    """Every attempt failed with a transient error; `cause` and `message` describe the last failure."""

    def __init__(self, cause: str, attempts: int, message: str) -> None:
        super().__init__(f"gave up after {attempts} attempts; the last failed with {cause}: {message}")
        self.cause = cause
        self.attempts = attempts
        self.message = message


async def call_with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy,
                            on_retry: Callable[[str], None] | None = None,
                            sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                            rng: random.Random | None = None) -> T:
    """`await call()`, retrying transient failures; anything else (a TeacherError, a bug) propagates at once.

    `on_retry(cause)` runs before each retry's sleep, so it counts retries, not the final failure.
    """
    rng = rng if rng is not None else random.Random()
    for retry in range(policy.max_retries + 1):
        try:
            return await call()
        except TransientTeacherError as err:
            if retry == policy.max_retries:
                raise RetriesExhausted(err.cause, retry + 1, str(err)) from err
            if on_retry is not None:
                on_retry(err.cause)
            await sleep(policy.delay(retry, rng, err.retry_after))
    raise AssertionError("unreachable: the loop returns or raises")
