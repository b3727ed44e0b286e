"""Socratic CoT (Shridhar, Stolfo, Sachan): the decomposer's and the solver's prompts and targets.

The decomposer reads a problem and writes its sub-questions in order; the solver reads the problem, the
earlier sub-questions with their answers and the current sub-question, and writes that sub-question's
answer step (with its equation). The final answer is the last step's. Each prompt opens with its task
line, so one unified model can learn both tasks and be told which one to do; two separate models see
the same prompts. Training (`formats.build_examples`) and inference (`socratic_eval`) render them here,
so the two never drift apart.

    decomposer  "Ask the sub-questions.\\nQuestion: {q}\\nSub-questions:"   ->  " Q1: ...\\nQ2: ..."
    solver      "Answer the sub-question.\\nQuestion: {q}\\nQ1: ...\\nA1: ...\\nQ2: ...\\nA2:"  ->  " {answer 2}"
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cotdistill.problems.record import Problem, Step

SOCRATIC_FORMATS = ("decomposer", "solver")
DECOMPOSER_TASK = "Ask the sub-questions."
SOLVER_TASK = "Answer the sub-question."
_SUBQUESTION = re.compile(r"^\s*Q(\d+)\s*:\s*(.*)$")
_LABEL_WITHOUT_NEWLINE = re.compile(r"[ \t]+(?=Q\d+\s*:)")
# Where a generation stops being useful: the decomposer's list ends at a blank line or an invented next
# problem; the solver's answer is one line.
DECOMPOSER_STOPS = ("\n\n", "\nQuestion:", "\nA1:")
SOLVER_STOPS = ("\n",)


def cut_at(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops`, stripped."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.strip()


def decomposer_prompt(question: str) -> str:
    return f"{DECOMPOSER_TASK}\nQuestion: {question.strip()}\nSub-questions:"


def decomposer_target(steps: Sequence[Step]) -> str:
    return " " + "\n".join(f"Q{i}: {step.question.strip()}" for i, step in enumerate(steps, 1))


def solver_prompt(question: str, earlier: Sequence[Step], current: str) -> str:
    """The problem, every earlier sub-question with its answer, and the sub-question to answer now."""
    lines = [SOLVER_TASK, f"Question: {question.strip()}"]
    for i, step in enumerate(earlier, 1):
        lines += [f"Q{i}: {step.question.strip()}", f"A{i}: {step.answer.strip()}"]
    number = len(earlier) + 1
    lines.append(f"Q{number}: {current.strip()}")
    return "\n".join(lines) + f"\nA{number}:"


def solver_target(step: Step) -> str:
    return " " + step.answer.strip()


def solver_examples(problem: Problem) -> list[tuple[str, str]]:
    """(prompt, target) for every step of a problem: one solver example per sub-question."""
    steps = problem.steps
    return [(solver_prompt(problem.question, steps[:i], steps[i].question), solver_target(steps[i]))
            for i in range(len(steps))]


def parse_subquestions(text: str) -> list[str]:
    """The decomposer's sub-questions from its generation: `Qk:` lines in order, until the list ends.

    Numbering must run 1, 2, 3...; a line that breaks it (or any unlabelled line) ends the list, so a
    model that rambles on keeps the sub-questions it wrote before rambling.
    """
    # T5 tokenizers have no newline token, so a T5 decomposer writes "Q1: a? Q2: b?" on one line.
    text = _LABEL_WITHOUT_NEWLINE.sub("\n", cut_at(text, DECOMPOSER_STOPS))
    questions: list[str] = []
    for line in text.strip().splitlines():
        match = _SUBQUESTION.match(line)
        if not match or int(match.group(1)) != len(questions) + 1 or not match.group(2).strip():
            break
        questions.append(match.group(2).strip())
    return questions


def clean_solver_answer(text: str) -> str:
    """The solver's answer step: its first line."""
    return cut_at(text, SOLVER_STOPS)


def socratic_problem_errors(problem: Problem, fmt: str) -> str | None:
    """Why `problem` cannot make a `fmt` example, or None when it can."""
    if not problem.steps:
        return (f"problem {problem.id!r} has no Socratic steps, so it cannot make a {fmt} example; train on "
                "decompositions (teacher_data split decompositions, gsm8k_socratic, synthetic)")
    if fmt == "solver" and any(not s.answer.strip() for s in problem.steps):
        return (f"problem {problem.id!r} has sub-questions without answers (StrategyQA-style), so it cannot "
                "make solver examples; use it for the decomposer only")
    return None
