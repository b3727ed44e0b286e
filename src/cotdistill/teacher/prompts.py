"""Teacher prompts: a few-shot chain-of-thought prompt and a Socratic decomposition prompt.

A template is text with two placeholders, ``{exemplars}`` and ``{question}`` (replaced literally, so
braces in math stay as they are). Exemplars are rendered once per build; the rendered prefix is hashed,
and the hash keys the sample cache, so editing a template or drawing other exemplars never reuses
samples made with the old prompt. Both prompts end in the question block ``Question: ...`` and stop at
the next one, like the student formats in ``cotdistill.formats``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cotdistill.errors import ConfigError
from cotdistill.formats import prompt as format_prompt
from cotdistill.formats import target as format_target
from cotdistill.problems.record import Problem, Step

COT_TEMPLATE = (
    "Answer each question. Reason step by step, then end with \"The answer is\" and the answer.\n\n"
    "{exemplars}Question: {question}\nAnswer:"
)
DECOMPOSE_TEMPLATE = (
    "Break each problem into sub-questions Q1, Q2, ... Answer each sub-question (A1, A2, ...) with one "
    "step of reasoning or one calculation. The last sub-question asks for what the problem asks.\n\n"
    "{exemplars}Question: {question}\n"
)
EXEMPLARS, QUESTION = "{exemplars}", "{question}"

# Written for this project, used when the problems carry no gold steps (or rationales) to draw from.
BUILTIN_EXEMPLARS = (
    Problem(
        id="builtin/0",
        question="A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30 of them. "
        "How many muffins are left?",
        answer="12",
        rationale="She makes 24 + 18 = 42 muffins. After selling 30, 42 - 30 = 12 muffins are left.",
        steps=(
            Step("How many muffins does the baker make in total?", "She makes 24 + 18 = 42 muffins."),
            Step("How many muffins are left after she sells 30?", "42 - 30 = 12 muffins are left."),
        ),
        source="builtin",
    ),
    Problem(
        id="builtin/1",
        question="Tom reads 15 pages a day for 6 days and 20 pages on the seventh day. How many pages does "
        "he read that week?",
        answer="110",
        rationale="In 6 days he reads 15 * 6 = 90 pages. With the seventh day he reads 90 + 20 = 110 pages.",
        steps=(
            Step("How many pages does Tom read in the first 6 days?", "He reads 15 * 6 = 90 pages."),
            Step("How many pages does he read in the whole week?", "He reads 90 + 20 = 110 pages."),
        ),
        source="builtin",
    ),
    Problem(
        id="builtin/2",
        question="A box holds 8 pencils. A teacher buys 5 boxes and gives 3 pencils to each of her 12 "
        "students. How many pencils does she have left?",
        answer="4",
        rationale="She buys 5 * 8 = 40 pencils and gives away 3 * 12 = 36 pencils, so 40 - 36 = 4 are left.",
        steps=(
            Step("How many pencils does the teacher buy?", "She buys 5 * 8 = 40 pencils."),
            Step("How many pencils does she give away?", "She gives away 3 * 12 = 36 pencils."),
            Step("How many pencils does she have left?", "She has 40 - 36 = 4 pencils left."),
        ),
        source="builtin",
    ),
)

# "Q1:", "A2.", "Q3)", "**Q1:**", "**Q1**:"; a closing "**" only counts when the label opened with one.
_STEP_LABEL = re.compile(r"^\s*(\*\*)?\s*([QA])(\d+)\s*(?:\*\*)?\s*[:.)]\s*(?(1)(?:\*\*)?)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class PromptSpec:
    """One task's prompt: the template, the prefix with exemplars filled in, and the prefix's hash."""

    task: str
    template: str
    prefix: str  # the template with {exemplars} filled; {question} still in it
    exemplar_ids: tuple[str, ...]

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.prefix.encode("utf-8")).hexdigest()[:16]

    def render(self, question: str) -> str:
        return self.prefix.replace(QUESTION, question.strip())

    def request_hash(self, question: str) -> str:
        """The hash of the exact prompt one question is asked with: the sample cache's key, so a cached answer is
        reused only for the same text (an id whose question changed, e.g. another data file with the same ids, is
        asked again, never given another question's samples)."""
        return hashlib.sha256(self.render(question).encode("utf-8")).hexdigest()[:16]

    def manifest_entry(self) -> dict[str, object]:
        return {"template": self.template, "prefix": self.prefix, "hash": self.hash,
                "exemplar_ids": list(self.exemplar_ids)}


def read_template(path: str, default: str, what: str) -> str:
    """The template text from a file, or the built-in one; it must hold {question}."""
    if not path:
        return default
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what}: template file not found: {file}")
    text = file.read_text(encoding="utf-8")
    if QUESTION not in text:
        raise ConfigError(f"{what}: template {file} has no {QUESTION} placeholder")
    return text


def draw_exemplars(pool: Sequence[Problem], k: int, seed: int, usable: str) -> list[Problem]:
    """k exemplars drawn with a fixed seed from the problems that can show `usable` (rationale | steps).

    Falls back to the built-in exemplars when the problems have none (SVAMP has no rationales, GSM8K's
    train split no steps), so a prompt always shows the teacher the expected shape.
    """
    if k == 0:
        return []
    eligible = [p for p in pool if _usable(p, usable)]
    if len(eligible) < k:
        eligible = list(BUILTIN_EXEMPLARS)
    return random.Random(seed).sample(eligible, min(k, len(eligible)))


def cot_prompt(exemplars: Sequence[Problem], template: str = COT_TEMPLATE) -> PromptSpec:
    """Few-shot CoT: each exemplar as the student's question block and its gold rationale + answer."""
    blocks = "".join(format_prompt(p, "answer_only") + format_target(p, "zero_shot_cot") + "\n\n" for p in exemplars)
    return PromptSpec("cot", template, template.replace(EXEMPLARS, blocks), tuple(p.id for p in exemplars))


def decompose_prompt(exemplars: Sequence[Problem], template: str = DECOMPOSE_TEMPLATE) -> PromptSpec:
    """Socratic decomposition: each exemplar's question, then Q1/A1, Q2/A2, ... lines."""
    blocks = "".join(f"Question: {p.question.strip()}\n{render_steps(p.steps)}\n\n" for p in exemplars)
    return PromptSpec("decompose", template, template.replace(EXEMPLARS, blocks), tuple(p.id for p in exemplars))


def render_steps(steps: Sequence[Step]) -> str:
    return "\n".join(f"Q{i}: {s.question.strip()}\nA{i}: {s.answer.strip()}" for i, s in enumerate(steps, 1))


def parse_steps(text: str) -> tuple[Step, ...] | None:
    """Q1/A1, Q2/A2, ... lines into steps, or None when they are not a clean numbered sequence.

    A line without a label continues the previous item. Every sub-question needs its answer, numbers
    must run 1, 2, 3 with each Qk before its Ak; anything else is a malformed decomposition.
    """
    items: list[list[str]] = []  # [label, number, text]
    for line in text.splitlines():
        if not line.strip():
            continue
        label = _STEP_LABEL.match(line)
        if label:
            items.append([label.group(2).upper(), label.group(3), line[label.end():].strip()])
        elif items:
            items[-1][2] = f"{items[-1][2]} {line.strip()}"
        else:
            return None  # prose before the first label
    if not items or len(items) % 2:
        return None
    steps = []
    for number, (question, answer) in enumerate(zip(items[::2], items[1::2], strict=True), 1):
        if (question[0], answer[0]) != ("Q", "A") or int(question[1]) != number or int(answer[1]) != number:
            return None
        if not question[2] or not answer[2]:
            return None
        steps.append(Step(question=question[2], answer=answer[2]))
    return tuple(steps)


def _usable(problem: Problem, usable: str) -> bool:
    if usable == "rationale":
        return bool((problem.rationale or "").strip())
    return bool(problem.steps) and all(s.question.strip() and s.answer.strip() for s in problem.steps)
