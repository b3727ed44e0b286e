"""The one record every loader, generator, format and evaluator exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    """One Socratic step: a sub-question and the answer step that resolves it (with its equation)."""

    question: str
    answer: str


@dataclass(frozen=True)
class Problem:
    """A reasoning problem with its gold final answer.

    `answer` is the gold final answer as text (a number like "72" or "0.5", or "yes"/"no");
    `rationale` is a worked solution in plain prose when known; `steps` are Socratic
    sub-question/answer pairs when known; `source` names the data set (e.g. "gsm8k"); `teacher_tokens`
    carry the teacher's top-k log-probs over `rationale` for distribution matching.
    """

    id: str
    question: str
    answer: str
    rationale: str | None = None
    steps: tuple[Step, ...] = field(default_factory=tuple)
    source: str = ""
    # A teacher's tokens for `rationale` as the data builder stores them: [token, logprob, [[alt, logprob], ...]]
    teacher_tokens: tuple = field(default=(), compare=False, repr=False)
