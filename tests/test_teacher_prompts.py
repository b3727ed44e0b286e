"""Teacher prompts: exemplar rendering, the prompt hash, templates, exemplar draws, Q/A step parsing."""

from __future__ import annotations

import re

import pytest

from conftest import SHARED_DATA
from cotdistill.errors import ConfigError
from cotdistill.problems import load_problems
from cotdistill.problems.record import Problem, Step
from cotdistill.teacher.prompts import (
    BUILTIN_EXEMPLARS,
    COT_TEMPLATE,
    DECOMPOSE_TEMPLATE,
    cot_prompt,
    decompose_prompt,
    draw_exemplars,
    parse_steps,
    read_template,
    render_steps,
)

EXAMPLE = Problem(id="ex/0", question="  Ann has 3 pens and buys 4 more. How many pens does she have?  ",
                  answer="7", rationale="She has 3 + 4 = 7 pens.", source="gsm8k")
OTHER = Problem(id="ex/1", question="What is 6 times 7?", answer="42", rationale="6 * 7 = 42.", source="gsm8k")


def _pool(n: int, with_rationale: bool = True, with_steps: bool = False) -> list[Problem]:
    return [Problem(id=f"pool/{i}", question=f"What is {i} plus {i}?", answer=str(2 * i),
                    rationale=f"{i} + {i} = {2 * i}." if with_rationale else None,
                    steps=(Step(f"What is {i} plus {i}?", f"{i} + {i} = {2 * i}."),) if with_steps else (),
                    source="gsm8k")
            for i in range(n)]


# ---------------------------------------------------------------------------------------------------------
# cot_prompt / decompose_prompt / render / hash


def test_cot_prompt_shows_each_exemplar_as_question_and_answer_block_then_the_question():
    spec = cot_prompt([EXAMPLE, OTHER])
    text = spec.render("How many legs do 2 cats have?")
    first = ("Question: Ann has 3 pens and buys 4 more. How many pens does she have?\n"
             "Answer: She has 3 + 4 = 7 pens. The answer is 7.\n\n")
    second = "Question: What is 6 times 7?\nAnswer: 6 * 7 = 42. The answer is 42.\n\n"
    assert first + second in text
    assert text.index(first) < text.index(second)
    assert text.endswith(second + "Question: How many legs do 2 cats have?\nAnswer:")
    assert spec.exemplar_ids == ("ex/0", "ex/1")
    assert spec.task == "cot"
    assert "{exemplars}" not in spec.prefix and "{question}" in spec.prefix


def test_cot_prompt_without_exemplars_is_the_template_with_only_the_question():
    spec = cot_prompt([])
    assert spec.render("Q?") == COT_TEMPLATE.replace("{exemplars}", "").replace("{question}", "Q?")
    assert spec.exemplar_ids == ()


def test_render_keeps_braces_in_the_question_literally():
    spec = cot_prompt([EXAMPLE])
    question = "Let f(x) = {x + 1} and S = {1, 2}. What is f({0})? Use {exemplars} and {question} as text."
    text = spec.render(question)
    assert text.endswith(f"Question: {question}\nAnswer:")
    assert text.count("{question}") == 1  # only the one inside the question itself


def test_render_strips_the_question():
    spec = cot_prompt([])
    assert spec.render("  \n What is 2 + 2?\n ").endswith("Question: What is 2 + 2?\nAnswer:")


def test_decompose_prompt_renders_exemplars_as_numbered_q_and_a_lines():
    exemplar = BUILTIN_EXEMPLARS[0]
    spec = decompose_prompt([exemplar])
    text = spec.render("How many?")
    block = (f"Question: {exemplar.question}\n"
             f"Q1: {exemplar.steps[0].question}\nA1: {exemplar.steps[0].answer}\n"
             f"Q2: {exemplar.steps[1].question}\nA2: {exemplar.steps[1].answer}\n\n")
    assert block in text
    assert text.endswith(block + "Question: How many?\n")
    assert spec.task == "decompose"


def test_hash_is_stable_for_the_same_template_and_exemplars():
    assert cot_prompt([EXAMPLE, OTHER]).hash == cot_prompt([EXAMPLE, OTHER]).hash
    assert len(cot_prompt([EXAMPLE]).hash) == 16


def test_hash_changes_with_the_template_the_exemplars_and_their_order():
    base = cot_prompt([EXAMPLE, OTHER]).hash
    assert cot_prompt([EXAMPLE, OTHER], COT_TEMPLATE.replace("step by step", "carefully")).hash != base
    assert cot_prompt([EXAMPLE]).hash != base
    assert cot_prompt([OTHER, EXAMPLE]).hash != base
    edited = Problem(id=EXAMPLE.id, question=EXAMPLE.question, answer="7", rationale="3 + 4 = 7.",
                     source="gsm8k")
    assert cot_prompt([edited, OTHER]).hash != base
    assert decompose_prompt(BUILTIN_EXEMPLARS[:1]).hash != cot_prompt(BUILTIN_EXEMPLARS[:1]).hash


def test_hash_does_not_depend_on_the_question_asked():
    spec = cot_prompt([EXAMPLE])
    spec.render("one question")
    assert spec.hash == cot_prompt([EXAMPLE]).hash


def test_manifest_entry_records_template_prefix_hash_and_exemplar_ids():
    spec = cot_prompt([EXAMPLE])
    entry = spec.manifest_entry()
    assert entry == {"template": COT_TEMPLATE, "prefix": spec.prefix, "hash": spec.hash, "exemplar_ids": ["ex/0"]}


# ---------------------------------------------------------------------------------------------------------
# read_template


def test_read_template_without_a_path_gives_the_default():
    assert read_template("", DECOMPOSE_TEMPLATE, "decompose.template") == DECOMPOSE_TEMPLATE


def test_read_template_reads_a_file_with_a_question_placeholder(tmp_path):
    file = tmp_path / "mine.txt"
    file.write_text("Solve these.\n\n{exemplars}Q: {question}\nA:", encoding="utf-8")
    text = read_template(str(file), COT_TEMPLATE, "cot.template")
    assert text == "Solve these.\n\n{exemplars}Q: {question}\nA:"
    assert cot_prompt([OTHER], text).render("x?").endswith("Q: x?\nA:")


def test_read_template_missing_file_names_the_file_and_the_key(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match="not found") as err:
        read_template(str(missing), COT_TEMPLATE, "cot.template")
    assert str(missing) in str(err.value) and "cot.template" in str(err.value)


def test_read_template_without_question_placeholder_names_the_file(tmp_path):
    file = tmp_path / "broken.txt"
    file.write_text("{exemplars}Question: {q}\nAnswer:", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\{question\}") as err:
        read_template(str(file), COT_TEMPLATE, "cot.template")
    assert str(file) in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# draw_exemplars


def test_draw_exemplars_is_deterministic_per_seed_and_differs_across_seeds():
    pool = _pool(50)
    first = [p.id for p in draw_exemplars(pool, 4, seed=7, usable="rationale")]
    assert first == [p.id for p in draw_exemplars(pool, 4, seed=7, usable="rationale")]
    assert len(set(first)) == 4
    others = {tuple(p.id for p in draw_exemplars(pool, 4, seed=s, usable="rationale")) for s in range(8)}
    assert len(others) > 1


def test_draw_exemplars_only_uses_problems_that_can_show_the_wanted_part():
    with_rationale = _pool(6)
    bare = [Problem(id=f"bare/{i}", question="q?", answer="1", rationale="  ", source="gsm8k") for i in range(30)]
    drawn = draw_exemplars(bare + with_rationale, 5, seed=3, usable="rationale")
    assert {p.id for p in drawn} <= {p.id for p in with_rationale}
    assert len(drawn) == 5

    stepped = _pool(4, with_rationale=False, with_steps=True)
    half_answered = [Problem(id="half", question="q?", answer="1", steps=(Step("a?", "1"), Step("b?", "")),
                             source="strategyqa")]
    drawn = draw_exemplars(half_answered + stepped + with_rationale, 4, seed=0, usable="steps")
    assert sorted(p.id for p in drawn) == sorted(p.id for p in stepped)


def test_draw_exemplars_falls_back_to_builtin_when_too_few_are_usable():
    svamp_like = _pool(20, with_rationale=False)
    drawn = draw_exemplars(svamp_like, 2, seed=0, usable="rationale")
    assert len(drawn) == 2 and all(p.id.startswith("builtin/") for p in drawn)
    two_with_steps = _pool(2, with_steps=True)
    drawn = draw_exemplars(two_with_steps, 3, seed=0, usable="steps")
    assert sorted(p.id for p in drawn) == sorted(p.id for p in BUILTIN_EXEMPLARS)


def test_draw_exemplars_with_k_zero_draws_nothing():
    assert draw_exemplars(_pool(5), 0, seed=0, usable="rationale") == []


def test_builtin_exemplars_render_in_both_prompts():
    for problem in BUILTIN_EXEMPLARS:
        assert problem.steps and problem.rationale
    cot = cot_prompt(BUILTIN_EXEMPLARS).render("q?")
    assert len(re.findall(r"\nAnswer: [^\n]* The answer is \d+\.\n\n", cot)) == len(BUILTIN_EXEMPLARS)
    dec = decompose_prompt(BUILTIN_EXEMPLARS).render("q?")
    assert parse_steps(render_steps(BUILTIN_EXEMPLARS[2].steps)) == BUILTIN_EXEMPLARS[2].steps
    assert dec.count("\nA1: ") == len(BUILTIN_EXEMPLARS)


def test_gsm8k_train_exemplars_carry_no_calculator_marks():
    train = load_problems("gsm8k", "train", data_dir=SHARED_DATA)
    exemplars = draw_exemplars(train, 8, seed=0, usable="rationale")
    assert not any(p.id.startswith("builtin/") for p in exemplars)
    prefix = cot_prompt(exemplars).prefix
    assert "<<" not in prefix and ">>" not in prefix
    assert "####" not in prefix
    for problem in exemplars:
        assert f"The answer is {problem.answer}." in prefix


# ---------------------------------------------------------------------------------------------------------
# parse_steps / render_steps


def test_parse_steps_reads_numbered_q_and_a_lines():
    text = "Q1: How many pens in total?\nA1: 3 + 4 = 7 pens.\nQ2: How many are left?\nA2: 7 - 2 = 5."
    assert parse_steps(text) == (Step("How many pens in total?", "3 + 4 = 7 pens."),
                                 Step("How many are left?", "7 - 2 = 5."))


def test_parse_steps_joins_continuation_lines_and_skips_blank_lines():
    text = "Q1: How many pens\nare there?\n\nA1: There are\n  3 + 4 = 7 pens.\n"
    assert parse_steps(text) == (Step("How many pens are there?", "There are 3 + 4 = 7 pens."),)


@pytest.mark.parametrize("text", [
    "Q1. How many?\nA1. 5 apples.",
    "q1: How many?\na1: 5 apples.",
    "Q1) How many?\nA1) 5 apples.",
    "  Q1 : How many?\n  A1 : 5 apples.",
    "**Q1**: How many?\n**A1**: 5 apples.",
    "**Q1:** How many?\n**A1:** 5 apples.",
])
def test_parse_steps_accepts_label_styles_and_markdown_bold(text):
    assert parse_steps(text) == (Step("How many?", "5 apples."),)


@pytest.mark.parametrize("text", [
    "Q1: a?\nA1: 1.\nQ3: c?\nA3: 3.",  # numbers skip
    "Q2: a?\nA2: 1.",  # does not start at 1
    "Q1: a?\nA1: 1.\nQ2: b?\nA1: 2.",  # answer number differs from its question
    "Q1: a?\nQ2: b?\nA1: 1.\nA2: 2.",  # questions first, answers after
    "A1: 1.\nQ1: a?",  # answer before its question
    "Q1: a?\nA1: 1.\nQ2: b?",  # last question unanswered
    "Q1: a?\nA1:",  # empty answer
    "Q1:\nA1: 1.",  # empty question
    "Let me break it down.\nQ1: a?\nA1: 1.",  # prose before the first label
    "",
    "   \n\n",
    "The answer is 5.",
])
def test_parse_steps_rejects_malformed_decompositions(text):
    assert parse_steps(text) is None


def test_render_steps_round_trips_through_parse_steps():
    steps = (Step("How much does one cost?", "It costs $12.50 / 5 = $2.50."),
             Step("Is 2.5 more than 2?", "Yes."),
             Step("  What is left?  ", "  9 - 4 = 5.  "))
    text = render_steps(steps)
    assert text.splitlines()[0] == "Q1: How much does one cost?"
    assert text.splitlines()[-1] == "A3: 9 - 4 = 5."
    assert parse_steps(text) == tuple(Step(s.question.strip(), s.answer.strip()) for s in steps)
