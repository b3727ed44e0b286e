"""A served teacher that scores the student's completions token by token (``train.on_policy.teacher.backend=openai``).

Each (prompt, completion) pair is one request to an OpenAI-compatible server (vLLM; the OpenAI legacy API) with the
text prompt + completion echoed back with log-probs (``OpenAITeacher.echo_logprobs`` documents the request). The
tokens that reach past the prompt are the completion's; one that straddles the boundary (a merge across it)
counts as the completion's, as ``completion_start`` does for a local teacher. Requests run ``concurrency`` at a
time with the builder's retries and backoff; a teacher that stays down past them raises ``TeacherUnavailable``,
which the trainer turns into a checkpoint and one line (``cotdistill.train``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from cotdistill.errors import TeacherUnavailable
from cotdistill.teacher.openai_backend import EchoedToken, OpenAITeacher
from cotdistill.teacher.retry import RetriesExhausted, RetryPolicy, call_with_retries
from cotdistill.teacher.types import TokenLogprob


def completion_tokens(echoed: Sequence[EchoedToken], prompt_chars: int, text_chars: int) -> tuple[TokenLogprob, ...]:
    """The tokens of the completion: those whose text ends after the prompt's ``prompt_chars`` characters."""
    out = []
    for i, item in enumerate(echoed):
        end = echoed[i + 1].offset if i + 1 < len(echoed) else text_chars
        if end > prompt_chars:
            out.append(item.token)
    return tuple(out)


class OpenAITokenScorer:
    """Scores completions through a served teacher; a ``TokenScorer`` (``cotdistill.teacher.scoring``)."""

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 concurrency: int = 16, retry: RetryPolicy | None = None) -> None:
        self.teacher = OpenAITeacher(model, base_url, api="completions", api_key_env=api_key_env, timeout=timeout,
                                     concurrency=concurrency)
        self.retry = retry or RetryPolicy()
        self.retries: Counter[str] = Counter()  # retries by cause, over the scorer's life
        self._loop = asyncio.new_event_loop()  # one loop for the client's life: its connections belong to it

    def describe(self) -> dict[str, object]:
        return {**self.teacher.describe(), "scoring": "completions echo=true max_tokens=0 logprobs=k"}

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.teacher.close())
            self._loop.close()

    def score(self, pairs: Sequence[tuple[str, str]], top_k: int,
              ended: Sequence[bool] | None = None) -> list[tuple[TokenLogprob, ...]]:
        """``ended`` is not used: an echoed prompt is plain text, and whether a server reads an EOS written into
        it as its special token differs by server, so a served teacher does not score the student's EOS."""
        return self._loop.run_until_complete(self._score_all(pairs, top_k))

    async def _score_all(self, pairs: Sequence[tuple[str, str]], top_k: int) -> list[tuple[TokenLogprob, ...]]:
        gate = asyncio.Semaphore(self.teacher.concurrency)

        async def one(prompt: str, completion: str) -> tuple[TokenLogprob, ...]:
            text = prompt + completion
            if not completion:
                return ()
            async with gate:
                try:
                    echoed = await call_with_retries(lambda: self.teacher.echo_logprobs(text, top_k), self.retry,
                                                     on_retry=lambda cause: self.retries.update([cause]))
                except RetriesExhausted as err:
                    raise TeacherUnavailable(f"teacher {self.teacher.model!r} at {self.teacher.base_url} "
                                             f"{err}") from None
            return completion_tokens(echoed, len(prompt), len(text))

        # Every request finishes (each within the retry budget) before a failure is raised: none is left running.
        results = await asyncio.gather(*(one(p, c) for p, c in pairs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)  # type: ignore[arg-type]
