"""Evaluation data sets by name on the real public data, scoring known generations, the summary table and
the evaluation config.

Nothing here loads a model or starts ranks: the sets are resolved and the predictions are scored with
`make_prediction`, the function every rank scores generations with.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from conftest import SHARED_DATA
from cotdistill.answers import clean_generation, infer_kind, normalize_answer
from cotdistill.config import DataConfig, EvalRunConfig, SyntheticDataConfig, eval_config
from cotdistill.errors import ConfigError, DataError
from cotdistill.eval_sets import EVAL_SETS, resolve_eval_set, resolve_eval_sets
from cotdistill.evaluate import EvalReport, Prediction, make_prediction, summary_table
from cotdistill.problems.record import Problem
from cotdistill.run_data import synthetic_problems

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} not found")

SCORED_SETS = ("gsm8k", "svamp", "asdiv", "multiarith", "strategyqa")
MATH_SETS = ("gsm8k", "svamp", "asdiv", "multiarith")


def config(**values) -> EvalRunConfig:
    return EvalRunConfig(model="x", data_dir=str(SHARED_DATA), **values)


@pytest.fixture(scope="module")
def real_sets() -> dict[str, list[Problem]]:
    """The default evaluation split of every real set, loaded once for the scoring tests."""
    return {found.name: found.problems for found in resolve_eval_sets(config(datasets=list(SCORED_SETS)))}


def kind_of(problem: Problem) -> str:
    return infer_kind(problem.source, problem.answer)


def gold_value(problem: Problem) -> Decimal:
    return Decimal(normalize_answer(problem.answer, "number"))


def plain(value: Decimal) -> str:
    return format(value, "f")


def with_commas(value: Decimal) -> str:
    """1250 -> "1,250"; -1250.5 -> "-1,250.5"."""
    whole, _, frac = plain(abs(value)).partition(".")
    text = f"{int(whole):,}" + (f".{frac}" if frac else "")
    return "-" + text if value < 0 else text


def correct_texts(problem: Problem) -> list[str]:
    """Generations that state the gold answer, in every form a student may write it."""
    texts = [f"Step one. The answer is {problem.answer}."]
    kind = kind_of(problem)
    if kind == "number":
        value = gold_value(problem)
        texts.append(f"Step one. The answer is {plain(value)}.")
        if abs(value) >= 1000:
            texts.append(f"Step one. The answer is {with_commas(value)}.")
    elif kind == "yesno":
        texts.append(f"Step one. The answer is {problem.answer.lower()}.")
    return texts


def wrong_answer(problem: Problem) -> str:
    """A wrong final answer: gold + 1 (wrong even for golds of millions), or the opposite of yes/no."""
    if kind_of(problem) == "yesno":
        return "no" if problem.answer.strip().lower() == "yes" else "yes"
    return plain(gold_value(problem) + 1)


def score(problem: Problem, text: str, index: int = 0) -> Prediction:
    return make_prediction(index, problem, "Question: ...\nAnswer:", text, 7)


# ---------------------------------------------------------------------------------------------------------
# Resolving data sets by name


@pytest.mark.parametrize(
    ("spec", "label", "count", "id_prefix"),
    [
        ("gsm8k", "gsm8k", 1319, "gsm8k/test/"),
        ("svamp", "svamp", 1000, "svamp/"),
        ("svamp:test", "svamp:test", 300, "svamp/"),
        ("asdiv", "asdiv", 2305, "asdiv/"),
        ("multiarith", "multiarith", 600, "multiarith/"),
        ("multiarith:test", "multiarith:test", 180, "multiarith/"),
        ("strategyqa", "strategyqa", 229, "strategyqa/"),
    ],
)
def test_named_set_loads_its_default_or_named_split_with_the_published_count(spec, label, count, id_prefix):
    found = resolve_eval_set(spec, config())
    assert found.name == label
    assert len(found.problems) == count
    assert len({p.id for p in found.problems}) == count
    assert all(p.id.startswith(id_prefix) for p in found.problems)
    assert all(p.question.strip() and p.answer.strip() for p in found.problems)


def test_split_that_is_the_default_is_labelled_by_the_bare_name():
    assert resolve_eval_set("gsm8k:test", config()).name == "gsm8k"
    assert resolve_eval_set("svamp:all", config()).name == "svamp"
    assert resolve_eval_set(" strategyqa : dev ", config()).name == "strategyqa"


def test_svamp_test_split_is_a_subset_of_all_svamp():
    everything = {p.id for p in resolve_eval_set("svamp", config()).problems}
    test = [p.id for p in resolve_eval_set("svamp:test", config()).problems]
    assert set(test) <= everything and len(set(test)) == 300


def test_strategyqa_dev_problems_never_appear_in_its_demo_pool():
    found = resolve_eval_set("strategyqa", config(strategy="few_shot_cot", k_shot=2))
    pool_ids = {p.id for p in found.demo_pool}
    pool_questions = {p.question for p in found.demo_pool}
    assert not any(p.id in pool_ids or p.question in pool_questions for p in found.problems)
    assert {kind_of(p) for p in found.problems} == {"yesno"}


def test_synthetic_set_is_eval_size_held_out_problems_disjoint_from_training():
    synthetic = SyntheticDataConfig(train_size=150, eval_size=12, operand_max=30)
    found = resolve_eval_set("synthetic", config(synthetic=synthetic))
    train, _ = synthetic_problems(DataConfig(dataset="synthetic", synthetic=synthetic))
    assert found.name == "synthetic"
    assert len(found.problems) == 12
    questions = [p.question for p in found.problems]
    assert len(set(questions)) == 12
    assert not set(questions) & {p.question for p in train}
    assert all(kind_of(p) == "number" for p in found.problems)
    assert all(score(p, f"The answer is {p.answer}.").correct for p in found.problems)


EXPERIMENT_SYNTHETIC = SyntheticDataConfig(train_size=2000, eval_size=100, min_steps=1, max_steps=3, eval_steps=3,
                                           operand_max=9)


def _numbers(question: str) -> list[int]:
    import re

    return [int(n) for n in re.findall(r"\d+", question)]


@pytest.mark.parametrize("split", ["more_steps", "larger_numbers"])
def test_out_of_distribution_synthetic_splits_are_unseen_and_differ_from_training_in_their_one_respect(split):
    found = resolve_eval_set(f"synthetic:{split}", config(synthetic=EXPERIMENT_SYNTHETIC))
    train, held_out = synthetic_problems(DataConfig(dataset="synthetic", synthetic=EXPERIMENT_SYNTHETIC))
    assert found.name == f"synthetic:{split}" and len(found.problems) == 100
    assert {p.question for p in found.demo_pool} == {p.question for p in train}  # demonstrations stay in distribution
    questions = {p.question for p in found.problems}
    assert len(questions) == 100 and not questions & {p.question for p in train + held_out}
    assert all(score(p, f"The answer is {p.answer}.").correct for p in found.problems)
    steps = {len(p.steps) for p in found.problems}
    if split == "more_steps":  # every problem one operation longer than any training problem
        assert steps == {4} and max(len(p.steps) for p in train) == 3
        assert max(max(_numbers(p.question)) for p in found.problems) <= 9
    else:  # every operand past the training range, the held-out set's number of operations
        assert steps == {3}
        assert min(min(_numbers(p.question)) for p in found.problems) >= 10
        assert max(max(_numbers(p.question)) for p in train) <= 9


def test_the_in_distribution_synthetic_split_is_the_held_out_set_by_either_name():
    plain = resolve_eval_set("synthetic", config(synthetic=EXPERIMENT_SYNTHETIC))
    named = resolve_eval_set("synthetic:held_out", config(synthetic=EXPERIMENT_SYNTHETIC))
    assert named.name == plain.name == "synthetic" and named.problems == plain.problems


def test_an_unknown_synthetic_split_is_refused_listing_the_known_ones():
    with pytest.raises(DataError, match="unknown synthetic split 'longer'.*held_out.*more_steps.*larger_numbers"):
        resolve_eval_set("synthetic:longer", config(synthetic=EXPERIMENT_SYNTHETIC))


@pytest.mark.parametrize("name", MATH_SETS)
def test_few_shot_math_sets_draw_demonstrations_from_gsm8k_train(name):
    found = resolve_eval_set(name, config(strategy="few_shot_cot", k_shot=4))
    assert len(found.demo_pool) == 7473
    assert all(p.id.startswith("gsm8k/train/") and p.rationale for p in found.demo_pool)
    pool_questions = {p.question for p in found.demo_pool}
    assert not any(p.question in pool_questions for p in found.problems)


def test_few_shot_strategyqa_draws_demonstrations_from_its_train_split():
    found = resolve_eval_set("strategyqa", config(strategy="few_shot_cot", k_shot=4))
    assert len(found.demo_pool) == 2061
    assert {p.source for p in found.demo_pool} == {"strategyqa"}
    assert all(p.rationale for p in found.demo_pool)


@pytest.mark.parametrize("strategy", ["answer_only", "zero_shot_cot"])
def test_strategies_without_demonstrations_load_no_demo_pool(strategy):
    sets = resolve_eval_sets(config(strategy=strategy, datasets=list(SCORED_SETS)))
    assert [s.name for s in sets] == list(SCORED_SETS)
    assert all(s.demo_pool == [] for s in sets)


def test_limit_caps_every_set_to_its_first_problems():
    full = {s.name: s.problems for s in resolve_eval_sets(config(datasets=["gsm8k", "multiarith:test"]))}
    capped = resolve_eval_sets(config(datasets=["gsm8k", "multiarith:test"], limit=5))
    assert {s.name: s.problems for s in capped} == {name: problems[:5] for name, problems in full.items()}
    larger = resolve_eval_set("multiarith:test", config(limit=10_000))
    assert len(larger.problems) == 180


def test_limit_does_not_shrink_the_demo_pool():
    found = resolve_eval_set("svamp", config(strategy="few_shot_cot", limit=3))
    assert len(found.problems) == 3
    assert len(found.demo_pool) == 7473


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


RECORDS = [
    {"question": "Ann has 2 apples and buys 3 more. How many apples?", "answer": "5"},
    {"question": "A box holds 1,250 pins; 250 fall out. How many are left?", "answer": "1000"},
    {"question": "Is seven odd?", "answer": "yes"},
]


def test_jsonl_file_loads_under_its_stem(tmp_path):
    path = write_jsonl(tmp_path / "my_probe_set.jsonl", RECORDS)
    found = resolve_eval_set(path, config())
    assert found.name == "my_probe_set"
    assert [p.question for p in found.problems] == [r["question"] for r in RECORDS]
    assert [p.answer for p in found.problems] == ["5", "1000", "yes"]
    assert [kind_of(p) for p in found.problems] == ["number", "number", "yesno"]
    assert score(found.problems[1], "So 1,000 pins. The answer is 1,000.").correct


def test_jsonl_file_sits_beside_named_sets_and_obeys_limit(tmp_path):
    path = write_jsonl(tmp_path / "probe.jsonl", RECORDS)
    sets = resolve_eval_sets(config(datasets=["multiarith:test", path], limit=2))
    assert [s.name for s in sets] == ["multiarith:test", "probe"]
    assert [len(s.problems) for s in sets] == [2, 2]


def test_unknown_name_is_refused_listing_known_names():
    with pytest.raises(DataError) as err:
        resolve_eval_sets(config(datasets=["gsm8kk"]))
    message = str(err.value)
    assert "'gsm8kk'" in message
    assert all(name in message for name in EVAL_SETS)
    assert ".jsonl" in message


@pytest.mark.parametrize(("spec", "valid"), [("gsm8k:dev", ("train", "test")), ("asdiv:test", ("all",)),
                                             ("strategyqa:test", ("train", "dev"))])
def test_unknown_split_is_refused_listing_valid_splits(spec, valid):
    with pytest.raises(DataError) as err:
        resolve_eval_set(spec, config())
    message = str(err.value)
    assert repr(spec.split(":")[1]) in message and repr(spec.split(":")[0]) in message
    assert all(split in message for split in valid)


def test_bad_names_and_splits_fail_before_any_file_is_read(tmp_path):
    missing_dir = EvalRunConfig(model="x", data_dir=str(tmp_path / "no-such-data"))
    with pytest.raises(DataError, match="unknown evaluation data set 'nope'"):
        resolve_eval_set("nope", missing_dir)
    with pytest.raises(DataError, match="unknown split 'dev' for 'gsm8k'"):
        resolve_eval_set("gsm8k:dev", missing_dir)
    with pytest.raises(DataError, match="data folder not found"):
        resolve_eval_set("gsm8k", missing_dir)


def test_missing_jsonl_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "held_out.jsonl"
    with pytest.raises(DataError) as err:
        resolve_eval_sets(config(datasets=["svamp:test", str(missing)]))
    assert str(missing) in str(err.value)
    assert "not found" in str(err.value)


@pytest.mark.parametrize("datasets", [["svamp", "svamp"], ["gsm8k", "gsm8k:test"], ["svamp:all", "svamp"]])
def test_data_set_named_twice_is_refused(datasets):
    with pytest.raises(DataError, match="named twice: (gsm8k|svamp)$"):
        resolve_eval_sets(config(datasets=datasets))


def test_two_files_with_the_same_stem_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_jsonl(tmp_path / "a" / "probe.jsonl", RECORDS)
    second = write_jsonl(tmp_path / "b" / "probe.jsonl", RECORDS)
    with pytest.raises(DataError, match="named twice: probe"):
        resolve_eval_sets(config(datasets=[first, second]))


# ---------------------------------------------------------------------------------------------------------
# Scoring known generations on every real problem


def failures(problems: list[Problem], texts_for, expect: bool) -> list[tuple[str, str, str, str | None]]:
    bad = []
    for index, problem in enumerate(problems):
        for text in texts_for(problem):
            prediction = score(problem, text, index)
            if prediction.correct is not expect:
                bad.append((problem.id, problem.answer, text, prediction.extracted))
    return bad


@pytest.mark.parametrize("name", SCORED_SETS)
def test_generation_stating_the_gold_answer_is_correct_for_every_problem(real_sets, name):
    bad = failures(real_sets[name], correct_texts, expect=True)
    assert not bad, f"{len(bad)} correct generations scored wrong in {name}, e.g. {bad[:5]}"


@pytest.mark.parametrize("name", SCORED_SETS)
def test_generation_stating_a_wrong_answer_is_wrong_for_every_problem(real_sets, name):
    problems = [p for p in real_sets[name] if kind_of(p) != "text"]
    bad = failures(problems, lambda p: [f"Step one. The answer is {wrong_answer(p)}."], expect=False)
    assert not bad, f"{len(bad)} wrong generations scored correct in {name}, e.g. {bad[:5]}"


def test_comma_form_is_exercised_on_large_golds(real_sets):
    large = [p for name in MATH_SETS for p in real_sets[name] if kind_of(p) == "number" and gold_value(p) >= 1000]
    assert len(large) > 50
    assert all(score(p, f"The answer is {with_commas(gold_value(p))}.").correct for p in large)
    assert any("," in with_commas(gold_value(p)) for p in large)


@pytest.mark.parametrize("name", SCORED_SETS)
@pytest.mark.parametrize("junk", ["", "I don't know", "   \n "])
def test_empty_or_answerless_generation_scores_wrong_without_raising(real_sets, name, junk):
    for index, problem in enumerate(real_sets[name]):
        prediction = score(problem, junk, index)
        assert prediction.correct is False, (problem.id, junk)
        if kind_of(problem) != "text" or not junk.strip():
            assert prediction.extracted is None, (problem.id, junk, prediction.extracted)


def test_answerless_text_is_read_as_a_text_answer_for_text_golds(real_sets):
    problem = next(p for p in real_sets["asdiv"] if p.answer == "Mrs. Hilt")
    prediction = score(problem, "I don't know")
    assert prediction.extracted == "i don't know"
    assert prediction.correct is False


@pytest.mark.parametrize("name", SCORED_SETS)
def test_generation_that_rambles_into_a_next_question_keeps_only_its_answer(real_sets, name):
    bad = []
    for index, problem in enumerate(real_sets[name]):
        answer = f"Step one. The answer is {problem.answer}."
        wrong = problem.answer + " or so" if kind_of(problem) == "text" else wrong_answer(problem)
        kept = score(problem, answer + "\nQuestion: Tom has 3 pens. How many? The answer is 999", index)
        dropped = score(problem, f"The answer is {wrong}.\nQuestion: Next one? The answer is {problem.answer}")
        if kept.generated != answer or not kept.correct or dropped.correct:
            bad.append((problem.id, problem.answer, kept.generated, kept.correct, dropped.correct))
    assert not bad, f"{len(bad)} problems in {name}, e.g. {bad[:5]}"


def test_clean_generation_cuts_at_the_first_invented_question():
    assert clean_generation(" 3 + 4 = 7. The answer is 7.\nQuestion: A? The answer is 1\nQuestion: B?") == (
        "3 + 4 = 7. The answer is 7.")
    assert clean_generation("Question: is not cut without a line break") == (
        "Question: is not cut without a line break")
    assert clean_generation("\nQuestion: only an invented question") == ""


def test_asdiv_non_numeric_golds_are_text_answers_that_score_themselves_correct(real_sets):
    asdiv = real_sets["asdiv"]
    texts = [p for p in asdiv if kind_of(p) == "text"]
    yesno = [p for p in asdiv if kind_of(p) == "yesno"]
    assert len(texts) == 208
    assert sorted(p.answer for p in yesno) == ["No", "No", "Yes", "Yes", "Yes"]
    assert len(asdiv) - len(texts) - len(yesno) == 2092
    assert {"Mrs. Hilt", "3:30 p.m.", "2:3", "They are equal"} <= {p.answer for p in texts}
    for problem in texts:
        assert score(problem, problem.answer).correct, problem.id
        assert score(problem, f"Step one. The answer is {problem.answer}\nQuestion: x").correct, problem.id
        assert not score(problem, "Step one. The answer is something else entirely.").correct, problem.id


def test_prediction_carries_problem_prompt_and_token_count(real_sets):
    problem = real_sets["gsm8k"][3]
    prediction = make_prediction(3, problem, "PROMPT", f"  Step one. The answer is {problem.answer}.  ", 11)
    assert (prediction.index, prediction.id, prediction.question, prediction.gold) == (
        3, problem.id, problem.question, problem.answer)
    assert prediction.prompt == "PROMPT"
    assert prediction.generated == f"Step one. The answer is {problem.answer}."
    assert prediction.extracted == normalize_answer(problem.answer)
    assert prediction.generated_tokens == 11


# ---------------------------------------------------------------------------------------------------------
# Reports and the summary table


def report(outcomes: list[bool], seconds: float = 2.0) -> EvalReport:
    problem = Problem(id="p", question="q", answer="4", source="gsm8k")
    texts = ["The answer is 4." if ok else "The answer is 5." for ok in outcomes]
    return EvalReport([make_prediction(i, problem, "", t, 3) for i, t in enumerate(texts)], seconds)


def table_rows(table: str) -> dict[str, list[str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_summary_of_two_sets_ends_with_the_mean_accuracy():
    reports = {"gsm8k": report([True, True, True, False]), "svamp": report([True, False])}
    rows = table_rows(summary_table(reports))
    assert list(rows) == ["gsm8k", "svamp", "average"]
    assert rows["gsm8k"][:3] == ["4", "3", "75.0%"]
    assert rows["svamp"][:3] == ["2", "1", "50.0%"]
    # mean of the per-set accuracies (62.5%), not the pooled 4/6
    assert rows["average"][2] == "62.5%"
    assert rows["average"][:2] == ["", ""]


def test_summary_of_one_set_has_no_average_row():
    table = summary_table({"strategyqa": report([True, False, False])})
    rows = table_rows(table)
    assert list(rows) == ["strategyqa"]
    assert rows["strategyqa"][:3] == ["3", "1", "33.3%"]
    assert "average" not in table


def test_report_metrics_and_empty_report_do_not_divide_by_zero():
    metrics = report([True, False, True, True], seconds=2.0).metrics()
    assert metrics["accuracy"] == 0.75 and metrics["correct"] == 3 and metrics["total"] == 4
    assert metrics["mean_generated_tokens"] == 3.0
    assert metrics["examples_per_s"] == 2.0
    empty = EvalReport([], 0.0)
    assert empty.accuracy == 0.0
    assert empty.metrics()["examples_per_s"] == 0.0
    assert table_rows(summary_table({"a": empty}))["a"][:3] == ["0", "0", "0.0%"]


# ---------------------------------------------------------------------------------------------------------
# The evaluation config


def test_eval_config_turns_cli_values_into_typed_fields():
    built = eval_config({"model": "m", "datasets": ("gsm8k", "svamp"), "limit": 5, "synthetic.operand_max": 9})
    assert built.model == "m"
    assert built.datasets == ["gsm8k", "svamp"]
    assert built.limit == 5 and isinstance(built.limit, int)
    assert built.synthetic.operand_max == 9 and isinstance(built.synthetic.operand_max, int)
    assert built.synthetic.operand_min == SyntheticDataConfig().operand_min
    assert built.strategy == "" and built.zero_stage == "auto"  # decided when the model is known


def test_eval_config_reads_comma_lists_and_dashed_keys():
    built = eval_config({"model": "m", "datasets": "gsm8k, svamp:test", "max-new-tokens": 8, "zero-stage": "2"})
    assert built.datasets == ["gsm8k", "svamp:test"]
    assert built.max_new_tokens == 8 and built.zero_stage == "2"


@pytest.mark.parametrize(("key", "valid"), [("modle", "model, datasets, output_dir"),
                                            ("synthetic.operand_maximum", "operand_min")])
def test_eval_config_refuses_unknown_keys_listing_valid_ones(key, valid):
    with pytest.raises(ConfigError) as err:
        eval_config({"model": "m", key: 1})
    assert key in str(err.value)
    assert valid in str(err.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy": "chain_of_thought"}, "strategy='chain_of_thought' is not one of"),
        ({"precision": "fp8"}, "precision='fp8' is not one of: bf16, fp16, fp32"),
        ({"zero_stage": 4}, "zero_stage='4' is not one of: auto, 0, 1, 2, 3"),
        ({"zero_stage": -1}, "zero_stage='-1' is not one of"),
        ({"protocol": "helm"}, "protocol='helm' is not one of: cotdistill, kojima, lm-eval"),
        ({"protocol": "kojima", "strategy": "few_shot_cot"}, "protocol=kojima is zero-shot"),
        ({"protocol": "lm-eval", "strategy": "socratic"}, "has no socratic form"),
        ({"protocol": "kojima", "samples": 3}, "answers greedily in two stages"),
        ({"demos": "demos.txt"}, "demos must be a .json or .jsonl file"),
        ({"strategy": "few_shot_cot", "k_shot": 0}, "k_shot must be > 0"),
        ({"limit": -1}, "limit must be >= 0"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"datasets": ""}, "datasets is empty"),
    ],
)
def test_eval_config_refuses_bad_settings(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        eval_config({"model": "m", **values})


def test_eval_config_accepts_zero_k_shot_without_few_shot_and_every_valid_choice():
    assert eval_config({"model": "m", "strategy": "answer_only", "k_shot": 0}).k_shot == 0
    for strategy in ("answer_only", "zero_shot_cot", "few_shot_cot"):
        assert eval_config({"model": "m", "strategy": strategy}).strategy == strategy
    for precision in ("bf16", "fp16", "fp32"):
        assert eval_config({"model": "m", "precision": precision}).precision == precision
    for stage in range(4):
        assert eval_config({"model": "m", "zero_stage": stage}).zero_stage == str(stage)
    for protocol in ("cotdistill", "kojima", "lm-eval"):
        assert eval_config({"model": "m", "protocol": protocol}).protocol == protocol


@pytest.mark.parametrize("values", [{}, {"model": ""}])
def test_eval_config_refuses_an_empty_model(values):
    with pytest.raises(ConfigError, match="model is empty"):
        eval_config(values)


@pytest.mark.parametrize("spec, count", [("gsm8k:default", 1319), ("strategyqa:default", 229)])
def test_default_split_means_the_evaluation_split(spec, count):
    found = resolve_eval_set(spec, EvalRunConfig(model="m", data_dir=str(SHARED_DATA)))
    assert len(found.problems) == count
    assert found.name == spec.split(":")[0]


# --- BIG-Bench Hard ----------------------------------------------------------------------------------------


def bbh_config(strategy: str = "few_shot_cot", **extra) -> EvalRunConfig:
    return EvalRunConfig(model="m", datasets=["bbh"], data_dir=str(SHARED_DATA), strategy=strategy, **extra)


def test_bbh_expands_to_27_tasks_with_6511_problems():
    sets = resolve_eval_sets(bbh_config())
    assert len(sets) == 27
    assert all(s.name.startswith("bbh/") for s in sets)
    assert sum(len(s.problems) for s in sets) == 6511
    assert all(s.prompts is not None and len(s.prompts) == len(s.problems) for s in sets)


def test_bbh_few_shot_prompt_is_the_official_three_shot_prompt_then_the_question():
    found = resolve_eval_set("bbh:date_understanding", bbh_config())
    prompt, problem = found.prompts[0], found.problems[0]
    assert prompt.startswith("Infer the date from context.")
    assert prompt.count("\nA: Let's think step by step.") == 4
    assert prompt.endswith(f"Q: {problem.question}\nA: Let's think step by step.")
    assert "canary" not in prompt.lower()


@pytest.mark.parametrize("strategy, ending", [("zero_shot_cot", "\nA: Let's think step by step."),
                                              ("answer_only", "\nA:")])
def test_bbh_prompts_without_demonstrations(strategy, ending):
    found = resolve_eval_set("bbh:boolean_expressions", bbh_config(strategy))
    assert found.prompts[0] == f"Q: {found.problems[0].question}{ending}"


def test_bbh_without_a_task_and_unknown_tasks_are_refused():
    with pytest.raises(DataError, match="bbh:<task>"):
        resolve_eval_set("bbh", bbh_config())
    with pytest.raises(DataError, match="date_understanding"):
        resolve_eval_set("bbh:dates", bbh_config())


def test_every_bbh_target_scores_correct_after_so_the_answer_is():
    misses = []
    for found in resolve_eval_sets(bbh_config("zero_shot_cot")):
        for i, problem in enumerate(found.problems):
            if not make_prediction(i, problem, "", f"Some steps. So the answer is {problem.answer}.", 5).correct:
                misses.append((found.name, problem.answer))
    assert misses == []


def test_summary_reports_bbh_as_the_mean_over_its_tasks():
    def report(correct: int, total: int) -> EvalReport:
        rows = [Prediction(i, str(i), "q", "1", "p", "t", "1", i < correct, 3) for i in range(total)]
        return EvalReport(rows, 1.0)

    table = summary_table({"bbh/a": report(1, 2), "bbh/b": report(4, 4), "gsm8k": report(0, 4)})
    assert "| bbh (mean of 2 tasks) |  |  | 75.0% |" in table


def test_training_dev_eval_and_cotdistill_eval_share_one_set_of_defaults():
    """The drift this guards against: max_new_tokens 160 during training vs 256 in cotdistill eval, and
    max_step_tokens 48 vs 64, so a run's logged dev accuracy was not what cotdistill eval gave."""
    from cotdistill.config import EvalConfig, EvalSpec, eval_spec

    assert eval_spec(EvalConfig()) == eval_spec(EvalRunConfig()) == EvalSpec()
    assert EvalSpec().zero_stage == "auto" and EvalSpec().protocol == "cotdistill"


def test_a_run_folder_lends_its_synthetic_settings_to_an_evaluation_that_gives_none(tmp_path):
    from cotdistill.config import load_config, to_yaml
    from cotdistill.run_folder import RunFolder
    from cotdistill.runs import with_run_synthetic

    run = RunFolder(tmp_path / "run")
    run.final.mkdir(parents=True)
    run.config_file.write_text(to_yaml(load_config("recipes/demo-gpt2-synthetic.yaml")), encoding="utf-8")
    options, note = with_run_synthetic(str(run.final), {"datasets": "synthetic,gsm8k"})
    assert options["synthetic.operand_max"] == 9 and options["synthetic.train_size"] == 5000
    assert str(run.config_file) in note
    assert eval_config({"model": "m", **options}).synthetic.operand_max == 9
    given, note = with_run_synthetic(str(run.root), {"datasets": ["synthetic"], "synthetic.operand_max": 50})
    assert given == {"datasets": ["synthetic"], "synthetic.operand_max": 50} and "given" in note
    assert with_run_synthetic(str(run), {"datasets": "gsm8k"}) == ({"datasets": "gsm8k"}, None)
    outside, note = with_run_synthetic(str(tmp_path / "elsewhere"), {"datasets": "synthetic"})
    assert "synthetic.operand_max" not in outside and "defaults" in note


def test_a_training_runs_synthetic_dev_set_is_the_one_cotdistill_eval_scores_for_the_run():
    """`eval.datasets: [synthetic]` in a training run generated the generator's defaults (100 problems, operands to
    20) while `cotdistill eval` of the run's checkpoints and the experiment harness's size check used the run's
    `data.synthetic` (300 problems, operands to 9): the run reported accuracy on other, fewer problems."""
    from cotdistill.config import load_config
    from cotdistill.train import _dev_sets

    config = load_config("recipes/demo-gpt2-synthetic.yaml", [
        "eval.datasets=[synthetic]", "data.synthetic.eval_size=7", "data.synthetic.operand_max=5"])
    [dev] = [s for s in _dev_sets(config, [], []) if s.name == "synthetic"]
    [run_settings] = resolve_eval_sets(EvalRunConfig(model="-", datasets=["synthetic"],
                                                     synthetic=config.data.synthetic))
    assert len(dev.problems) == 7
    assert [p.question for p in dev.problems] == [p.question for p in run_settings.problems]
