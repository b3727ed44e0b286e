"""Learn once, before sampling, what an OpenAI-compatible server really does with `n`, `logprobs` and `seed`.

Servers accept the whole OpenAI schema but honour parts of it: `transformers serve` ignores `n` and
`logprobs` (with a warning in its own log only) and answers one choice without log-probs. Asking first
lets the build adapt (one sample per request when `n` is ignored) or stop at once with a line that says
what to change, instead of treating every answer as malformed and retrying it, or silently writing a
dataset without the teacher distributions that were asked for.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from cotdistill.errors import ConfigError
from cotdistill.teacher.retry import RetriesExhausted, RetryPolicy, call_with_retries
from cotdistill.teacher.types import SampleRequest, SampleResponse, Sampling, Teacher, TeacherError

log = logging.getLogger(__name__)

PROBE_MAX_TOKENS = 16  # enough for two samples to differ, cheap on any server


@dataclass(frozen=True)
class Capabilities:
    """What the teacher honours. `None`: not measured (not asked for, or meaningless at temperature 0)."""

    n: bool
    logprobs: bool | None
    seed: bool | None
    samples_vary: bool | None  # two different seeds gave two different texts at temperature > 0
    probed: str  # "this run", "an earlier run" or "backend" (known from the backend, not asked)
    probe_requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One log line's worth: yes/no/not checked per capability."""
        def word(value: bool | None) -> str:
            return "not checked" if value is None else ("yes" if value else "NO")

        return (f"n honoured: {word(self.n)}; logprobs returned: {word(self.logprobs)}; seed repeats a sample: "
                f"{word(self.seed)}; different seeds differ: {word(self.samples_vary)} ({self.probed})")


LOCAL = Capabilities(n=True, logprobs=True, seed=True, samples_vary=None, probed="backend")


class ProtocolMismatch(TeacherError):
    """The server answered, validly, something other than what was asked: retrying gets the same answer."""


def where_is(description: dict[str, Any]) -> str:
    """'the teacher 'm' at URL': the start of every message about the server."""
    at = f" at {description['base_url']}" if description.get("base_url") else ""
    return f"the teacher {description.get('model')!r}{at}"


async def probe_capabilities(teacher: Teacher, prompt: str, sampling: Sampling, seed: int, where: str,
                             policy: RetryPolicy) -> Capabilities:
    """Ask two samples (with log-probs if configured), then one sample twice with another seed.

    Raises a ConfigError naming `where` and the setting to change when the build cannot be made as
    configured (log-probs asked but not returned, a choice count that is neither n nor 1).
    """
    small = replace(sampling, max_tokens=max(1, min(sampling.max_tokens, PROBE_MAX_TOKENS)))
    first = await _ask(teacher, SampleRequest(prompt, 2, small, seed + 1), where, policy)
    n_honoured = _choices_honoured(first, 2, where)
    logprobs = _logprobs_returned(first, sampling.logprobs, where)
    seed_ok = vary = None
    requests = 1
    if sampling.temperature > 0:
        again = [await _ask(teacher, SampleRequest(prompt, 1, small, seed), where, policy) for _ in range(2)]
        requests += 2
        texts = [response.completions[0].text for response in again]
        seed_ok = texts[0] == texts[1]
        vary = first.completions[0].text != texts[0]
    return Capabilities(n=n_honoured, logprobs=logprobs, seed=seed_ok, samples_vary=vary, probed="this run",
                        probe_requests=requests)


async def _ask(teacher: Teacher, request: SampleRequest, where: str, policy: RetryPolicy) -> SampleResponse:
    """One probe request with the build's retries for transient failures; a server that never answers stops."""
    try:
        return await call_with_retries(lambda: teacher.sample(request), policy)
    except RetriesExhausted as err:
        raise TeacherError(f"{where} did not answer the capability probe after {err.attempts} attempts: "
                           f"{err.cause}: {err.message}") from None


def _choices_honoured(response: SampleResponse, n: int, where: str) -> bool:
    count = len(response.completions)
    if count == n:
        return True
    if count == 1:
        return False
    raise ProtocolMismatch(f"{where} answered {count} choices to a request for n={n}; it is neither honouring "
                           "n nor ignoring it. Set teacher.samples_per_request=1 or use another server.")


def _logprobs_returned(response: SampleResponse, asked: int, where: str) -> bool | None:
    """None when not asked; stops the build when asked for and missing (the dataset would lack them)."""
    if asked <= 0:
        return None
    with_text = [c for c in response.completions if c.text]
    if with_text and all(c.tokens and all(t.top for t in c.tokens) for c in with_text):
        return True
    raise ConfigError(f"{where} does not return token log-probs: sampling.logprobs={asked} was asked and the "
                      "answer had none, so the dataset would hold no teacher distributions. Set "
                      "sampling.logprobs=0 to build without them, or serve the teacher with a server that "
                      "returns them (vLLM, or teacher.backend=hf for a local model).")


def check_response(response: SampleResponse, n: int, logprobs: int, where: str) -> None:
    """Refuse (without retrying) an answer that lacks what every request of the build needs."""
    if len(response.completions) != n:
        raise ProtocolMismatch(f"{where} answered {len(response.completions)} completion(s) to a request for "
                               f"n={n}; set teacher.samples_per_request=1 if it does not honour n")
    if logprobs > 0 and any(c.text and not c.tokens for c in response.completions):
        raise ProtocolMismatch(f"{where} answered without the token log-probs asked for "
                               f"(sampling.logprobs={logprobs}); set sampling.logprobs=0 to build without them")
