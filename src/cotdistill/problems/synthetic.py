"""Seeded multi-step arithmetic word problems with gold rationales and Socratic steps.

Real data sets are too irregular for a tiny model to learn on a laptop CPU in minutes; these
templated stories are regular enough that it can, so the whole distillation pipeline can be
exercised end to end and its effect measured. Every number is known, so every rationale is
correct by construction.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from cotdistill.errors import ConfigError
from cotdistill.problems.record import Problem, Step

OPERATIONS = ("add", "sub", "mul")
_SIGNS = {"add": "+", "sub": "-", "mul": "*"}
_FACTOR_WORDS = {  # factor -> ({times}, {times_verb}, {times_ing})
    2: ("twice", "doubles", "doubling"),
    3: ("three times", "triples", "tripling"),
    4: ("four times", "quadruples", "quadrupling"),
}
_MAX_ATTEMPTS = 100
_REDRAWS = 5
PLACEHOLDERS = (
    "name", "item", "items", "start", "start_noun", "n", "n_noun", "times", "times_verb", "times_ing",
    "prev", "result", "result_noun", "equation", "clause",
)  # fmt: skip


@dataclass(frozen=True)
class Item:
    """A countable thing a story is about; `food` items may also be eaten."""

    singular: str
    plural: str
    food: bool = False


@dataclass(frozen=True)
class OpPhrase:
    """One way to tell one operation: a story sentence and a clause reused by the step and sub-question.

    `op` is "add", "sub" or "mul"; `food_only` phrases ("eats") are used only with food items.
    Placeholders are those documented on `Template`.
    """

    op: str
    event: str  # e.g. "{name} buys {n} more {n_noun}."
    clause: str  # e.g. "buying {n} more" -> "After buying 3 more, ..."
    food_only: bool = False


DEFAULT_PHRASES = (
    OpPhrase("add", "{name} buys {n} more {n_noun}.", "buying {n} more"),
    OpPhrase("add", "{name} finds {n} more {n_noun}.", "finding {n} more"),
    OpPhrase("add", "{name} receives {n} more {n_noun} from a friend.", "receiving {n} more"),
    OpPhrase("sub", "{name} gives away {n} {n_noun}.", "giving away {n}"),
    OpPhrase("sub", "{name} loses {n} {n_noun}.", "losing {n}"),
    OpPhrase("sub", "{name} eats {n} {n_noun}.", "eating {n}", food_only=True),
    OpPhrase("mul", "{name} {times_verb} the number of {items}.", "{times_ing} the {items}"),
)


@dataclass(frozen=True)
class Template:
    """Format strings for one story shape.

    Placeholders (all strings, here and in `OpPhrase`):
      {name} the person; {item} / {items} the thing, singular / plural;
      {start} the first amount and {start_noun} the noun agreeing with it ("1 apple", "2 apples");
      {n} the operand (amount added or removed, or the factor) and {n_noun} the noun agreeing with it;
      {times} "twice" / "three times" / "four times", {times_verb} "doubles" ..., {times_ing}
      "doubling" ... (multiplications only; empty otherwise);
      {prev} the amount before the step, {result} after it, {result_noun} the noun agreeing with it,
      {equation} "prev sign n = result" (e.g. "5 + 3 = 8"); {clause} the operation's clause, already
      filled in (in `step` and `sub_question` only).
    """

    intro: str = "{name} has {start} {start_noun}."
    step: str = "After {clause}, {name} has {equation} {result_noun}."
    sub_question: str = "How many {items} does {name} have after {clause}?"
    question: str = "How many {items} does {name} have now?"
    phrases: tuple[OpPhrase, ...] = DEFAULT_PHRASES


DEFAULT_TEMPLATES = (
    Template(),
    Template(
        intro="{name} starts with {start} {start_noun}.",
        question="How many {items} does {name} have in the end?",
    ),
)
DEFAULT_NAMES = ("Ann", "Ben", "Carl", "Dana", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack", "Kate", "Liam")
DEFAULT_ITEMS = (
    Item("apple", "apples", food=True),
    Item("cookie", "cookies", food=True),
    Item("orange", "oranges", food=True),
    Item("candy", "candies", food=True),
    Item("marble", "marbles"),
    Item("pencil", "pencils"),
    Item("sticker", "stickers"),
    Item("book", "books"),
    Item("shell", "shells"),
    Item("card", "cards"),
)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: `n` problems of `min_steps`..`max_steps` operations each, deterministic for `seed`.

    Added and removed amounts and the first amount lie in `operand_min`..`operand_max`; factors are
    2..4; no amount ever exceeds `max_total` or goes below 0, so numbers stay small.
    """

    n: int = 1000
    seed: int = 0
    min_steps: int = 2
    max_steps: int = 4
    operand_min: int = 1
    operand_max: int = 20
    operations: tuple[str, ...] = OPERATIONS
    templates: tuple[Template, ...] | None = None
    max_total: int = 100
    names: tuple[str, ...] = DEFAULT_NAMES
    items: tuple[Item, ...] = DEFAULT_ITEMS

    def __post_init__(self) -> None:
        object.__setattr__(self, "operations", tuple(self.operations))
        if self.templates is not None:
            object.__setattr__(self, "templates", tuple(self.templates))
        _check_spec(self)


def generate_problems(spec: SyntheticSpec) -> list[Problem]:
    """`spec.n` problems; problem i depends only on (seed, i), so a longer run extends a shorter one."""
    return [_generate_one(spec, index) for index in range(spec.n)]


def split_problems(problems: Sequence[Problem], held_out: int) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out): the last `held_out` problems are held out (generation already shuffles)."""
    if not 0 <= held_out <= len(problems):
        raise ConfigError(f"held_out must be between 0 and {len(problems)}, got {held_out}")
    cut = len(problems) - held_out
    return list(problems[:cut]), list(problems[cut:])


def _generate_one(spec: SyntheticSpec, index: int) -> Problem:
    rng = random.Random(f"synthetic/{spec.seed}/{index}")
    for _ in range(_MAX_ATTEMPTS):
        problem = _attempt(spec, index, rng)
        if problem is not None:
            return problem
    raise ConfigError(
        f"cannot build problem {index} from {spec}: no allowed operation fits the amounts; "
        "allow 'add', or raise max_total"
    )


def _attempt(spec: SyntheticSpec, index: int, rng: random.Random) -> Problem | None:
    """One try at a story; None when the chosen operations paint it into a corner (e.g. only 'sub' at 0)."""
    template = rng.choice(spec.templates or DEFAULT_TEMPLATES)
    name, item = rng.choice(spec.names), rng.choice(spec.items)
    amount = rng.randint(spec.operand_min, spec.operand_max)
    base = {"name": name, "item": item.singular, "items": item.plural}
    events = [template.intro.format(**base, start=amount, start_noun=_noun(item, amount))]
    steps: list[Step] = []
    for _ in range(rng.randint(spec.min_steps, spec.max_steps)):
        drawn = _draw_step(spec, template, item, base, amount, steps, rng)
        if drawn is None:
            return None
        event, step, amount = drawn
        events.append(event)
        steps.append(step)
    events.append(template.question.format(**base))
    return Problem(
        id=f"synthetic/{spec.seed}/{index}",
        question=" ".join(events),
        answer=str(amount),
        rationale=" ".join(step.answer for step in steps),
        steps=tuple(steps),
        source="synthetic",
    )


def _draw_step(
    spec: SyntheticSpec,
    template: Template,
    item: Item,
    base: dict[str, str],
    amount: int,
    earlier: list[Step],
    rng: random.Random,
) -> tuple[str, Step, int] | None:
    """(story sentence, Step, new amount) for one operation, or None when no allowed operation fits.

    A draw whose sub-question repeats an earlier one is redrawn a few times, so that each
    sub-question names a single step; when the spec leaves no alternative, the repeat is kept.
    """
    choices = [op for op in spec.operations if _fits(op, amount, spec)]
    if not choices:
        return None
    asked = {step.question for step in earlier}
    for _ in range(_REDRAWS):
        op = rng.choice(choices)
        n = _operand(op, amount, spec, rng)
        result = amount + n if op == "add" else amount - n if op == "sub" else amount * n
        phrase = rng.choice([p for p in template.phrases if p.op == op and (item.food or not p.food_only)])
        values = {
            **base,
            **_times(op, n),
            "n": n,
            "n_noun": _noun(item, n),
            "prev": amount,
            "result": result,
            "result_noun": _noun(item, result),
            "equation": f"{amount} {_SIGNS[op]} {n} = {result}",
        }
        clause = phrase.clause.format(**values)
        question = template.sub_question.format(**values, clause=clause)
        if question not in asked:
            break
    step = Step(question=question, answer=template.step.format(**values, clause=clause))
    return phrase.event.format(**values), step, result


def _fits(op: str, amount: int, spec: SyntheticSpec) -> bool:
    if op == "add":
        return amount + spec.operand_min <= spec.max_total
    if op == "sub":
        return amount >= spec.operand_min
    return amount >= 1 and amount * 2 <= spec.max_total


def _operand(op: str, amount: int, spec: SyntheticSpec, rng: random.Random) -> int:
    if op == "add":
        return rng.randint(spec.operand_min, min(spec.operand_max, spec.max_total - amount))
    if op == "sub":
        return rng.randint(spec.operand_min, min(spec.operand_max, amount))
    return rng.randint(2, min(max(_FACTOR_WORDS), spec.max_total // amount))


def _times(op: str, n: int) -> dict[str, str]:
    words = _FACTOR_WORDS.get(n, ("", "", "")) if op == "mul" else ("", "", "")
    return dict(zip(("times", "times_verb", "times_ing"), words, strict=True))


def _noun(item: Item, count: int) -> str:
    return item.singular if count == 1 else item.plural


def _check_spec(spec: SyntheticSpec) -> None:
    """Reject a spec that could not generate, with the field to fix named."""
    if spec.n < 0:
        raise ConfigError(f"n must be >= 0, got {spec.n}")
    if not 1 <= spec.min_steps <= spec.max_steps:
        raise ConfigError(f"need 1 <= min_steps <= max_steps, got {spec.min_steps} and {spec.max_steps}")
    if not 1 <= spec.operand_min <= spec.operand_max:
        raise ConfigError(
            f"need 1 <= operand_min <= operand_max, got {spec.operand_min} and {spec.operand_max}"
        )
    if spec.max_total < spec.operand_max:
        raise ConfigError(f"max_total ({spec.max_total}) must be >= operand_max ({spec.operand_max})")
    if not spec.operations or len(set(spec.operations)) != len(spec.operations):
        raise ConfigError(f"operations must be a non-empty list without repeats, got {spec.operations}")
    unknown = [op for op in spec.operations if op not in OPERATIONS]
    if unknown:
        raise ConfigError(f"unknown operation(s) {unknown}; valid: {', '.join(OPERATIONS)}")
    if not spec.names or not spec.items:
        raise ConfigError("names and items must not be empty")
    if spec.templates is not None and not spec.templates:
        raise ConfigError("templates must not be empty (use None for the built-in ones)")
    for number, template in enumerate(spec.templates or DEFAULT_TEMPLATES):
        _check_template(template, number, spec.operations)


def _check_template(template: Template, number: int, operations: Sequence[str]) -> None:
    """Every placeholder must be known, and every allowed operation needs a phrase usable with any item."""
    sample = dict.fromkeys(PLACEHOLDERS, "x")
    strings = {f"templates[{number}].{key}": getattr(template, key) for key in Template.__dataclass_fields__}
    strings.pop(f"templates[{number}].phrases")
    for index, phrase in enumerate(template.phrases):
        if phrase.op not in OPERATIONS:
            raise ConfigError(f"templates[{number}].phrases[{index}]: unknown op {phrase.op!r}")
        strings[f"templates[{number}].phrases[{index}].event"] = phrase.event
        strings[f"templates[{number}].phrases[{index}].clause"] = phrase.clause
    for where, text in strings.items():
        try:
            text.format(**sample)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"{where}: bad placeholder in {text!r} ({err!r})") from err
    for op in operations:
        if not any(p.op == op and not p.food_only for p in template.phrases):
            raise ConfigError(
                f"templates[{number}] has no phrase for operation {op!r} usable with every item"
            )
