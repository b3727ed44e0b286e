"""What a teacher backend is asked and what it answers: the contract between backends and the builder.

A backend only turns one :class:`SampleRequest` into a :class:`SampleResponse`. Retries, caching,
verification and statistics live in the builder, so every backend (OpenAI-compatible HTTP, a local
Hugging Face model, a fake test server) gets them for free and behaves the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cotdistill.errors import CotDistillError


@dataclass(frozen=True)
class Sampling:
    """Decoding settings sent with every request (OpenAI semantics: `stop` strings are not returned)."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    logprobs: int = 0  # top-k log-probs per generated token; 0: none


@dataclass(frozen=True)
class SampleRequest:
    """`n` completions of one prompt; `seed` makes a seeded server (vLLM, the test server) repeatable."""

    prompt: str
    n: int
    sampling: Sampling
    seed: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its log-probability, and the top-k alternatives at that position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    """One sampled continuation; `tokens` is empty unless log-probs were asked for and given."""

    text: str
    finish_reason: str = ""
    tokens: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class SampleResponse:
    """The `n` completions of a request, in choice order, and the tokens the teacher billed for them."""

    completions: tuple[Completion, ...]
    usage: Usage = field(default_factory=Usage)


class Teacher(Protocol):
    """A backend. `describe()` goes into the manifest, so it must never contain a secret."""

    async def sample(self, request: SampleRequest) -> SampleResponse: ...

    def describe(self) -> dict[str, object]: ...

    async def close(self) -> None: ...


class TeacherError(CotDistillError):
    """A request the teacher answered in a way that retrying cannot fix (bad key, unknown model, 400)."""


class TransientTeacherError(Exception):
    """A failure worth retrying. `cause` names it in the statistics: one of RETRY_CAUSES.

    `retry_after` is the delay the server asked for (a 429's Retry-After header), in seconds.
    """

    def __init__(self, cause: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        if cause not in RETRY_CAUSES:
            raise ValueError(f"unknown retry cause {cause!r}; known: {', '.join(RETRY_CAUSES)}")
        self.cause = cause
        self.retry_after = retry_after


# rate_limit: 429; server_error: 5xx (and 408/409); timeout: no answer in time; connection: refused or
# dropped; malformed: an answer that is not a valid response (truncated JSON, missing choices).
RETRY_CAUSES = ("rate_limit", "server_error", "timeout", "connection", "malformed")
