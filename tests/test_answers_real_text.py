"""Answer extraction on real model text: the public teacher traces and the official BBH CoT prompts.

Hand-written cases (tests/test_answers.py) show each rule; this corpus shows the rules together read
real generations the way the data's authors meant them, and pins how many answers come from a marker,
from a fallback, or not at all, so a change to extraction that shifts real counts has to say so here.
The trace files are parsed once per module.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import pytest

from conftest import SHARED_DATA
from cotdistill.answers import (
    EXTRACTION_METHODS,
    answers_match,
    clean_generation,
    infer_kind,
    normalize_answer,
    read_answer,
)
from cotdistill.problems import load_problems
from cotdistill.teacher.files import question_key

TRACES = SHARED_DATA / "teacher_traces"
BBH = SHARED_DATA / "bbh"


@dataclass
class Scored:
    """One trace file read against gold: per-trace verdicts plus the totals the tests assert."""

    verdicts: dict[int, tuple[str, str | None, bool]]  # file index -> (gold, extracted, correct)
    methods: Counter[str]
    correct: int
    answerless: int

    @property
    def matched(self) -> int:
        return len(self.verdicts)


def _score(file: str, dataset: str, split: str) -> Scored:
    problems = {question_key(p.question): p for p in load_problems(dataset, split, data_dir=SHARED_DATA)}
    verdicts: dict[int, tuple[str, str | None, bool]] = {}
    methods: Counter[str] = Counter()
    for index, trace in enumerate(json.loads((TRACES / file).read_text(encoding="utf-8"))):
        problem = problems.get(question_key(trace["instruction"]))
        if problem is None:
            continue
        kind = infer_kind(problem.source, problem.answer)
        extraction = read_answer(clean_generation(trace["output"]), kind)
        methods[extraction.method] += 1
        verdicts[index] = (problem.answer, extraction.answer, answers_match(extraction.answer, problem.answer, kind))
    return Scored(verdicts, methods, sum(v[2] for v in verdicts.values()),
                  sum(v[1] is None for v in verdicts.values()))


@pytest.fixture(scope="module")
def scored() -> dict[str, Scored]:
    return {
        "llama": _score("gsm8k_llama_level2_ranked.json", "gsm8k", "train"),
        "gemini": _score("gsm8k_gemini_level1_ranked.json", "gsm8k", "train"),
        "svamp": _score("SVAMP_llama_level2_ranked.json", "svamp", "all"),
        "strategyqa": _score("strategyQA_chatgpt_level_2_ranked.json", "strategyqa", "all"),
    }


# Fraction of matched traces scored correct against gold: (low, high). The data README says 1-5 % of
# the traces end in a wrong answer; every miss was read (issue 14) and is the teacher's, not extraction's:
# * llama (GSM8K, 7439 matched): 18 misses (99.76 % correct). 4 answerless: "The answer is not given ...
#   The correct answer is not 22." (x2), "The answer is not 500, it's -500.", "The answer is 17 (Wait,
#   that's not correct ... The answer should be different)"; 4 that end "the answer is <gold> ... the
#   (correct) answer should be <their own result>"; 10 plain wrong results (e.g. "The answer is 270",
#   gold 400), one debatable ("= 0.16, or 16%." read as 0.16, gold 16). The old lenient reading scored
#   the 8 self-retracting traces correct (99.87 %), above this band's top.
# * gemini (GSM8K, 7430): 102 plain wrong results (98.63 %), no answerless trace.
# * svamp (700): 4 wrong (99.43 %), e.g. "The answer is 13 is incorrect, the correct answer is 68."
# * strategyqa (1999): 86 wrong True/False verdicts (95.70 %), within the README's 5 %.
# The bands allow a few traces either way for rule tweaks; a top bound below the old reading keeps a
# return of the lenient fallback from passing.
BANDS = {"llama": (0.9965, 0.9980), "gemini": (0.980, 0.990), "svamp": (0.990, 0.997),
         "strategyqa": (0.950, 0.962)}
# Every GSM8K/SVAMP/StrategyQA trace states its answer with "The answer is"; the 4 LLaMA traces without
# any marker end on their result ("... so 60 / 2 = 30 large envelopes.") and fall back to the last number.
METHODS = {"llama": {"marker": 7431, "last_number": 4, "none": 4}, "gemini": {"marker": 7430},
           "svamp": {"marker": 700}, "strategyqa": {"marker": 1999}}
MATCHED = {"llama": 7439, "gemini": 7430, "svamp": 700, "strategyqa": 1999}


@pytest.mark.parametrize("name", list(BANDS))
def test_fraction_of_traces_scored_correct_stays_in_its_band(scored: dict[str, Scored], name: str) -> None:
    result = scored[name]
    assert result.matched == MATCHED[name]
    low, high = BANDS[name]
    assert low <= result.correct / result.matched <= high, (result.correct, result.matched)


@pytest.mark.parametrize("name", list(METHODS))
def test_how_trace_answers_were_found(scored: dict[str, Scored], name: str) -> None:
    assert dict(scored[name].methods) == METHODS[name]
    assert set(scored[name].methods) <= set(EXTRACTION_METHODS)
    assert scored[name].answerless == scored[name].methods["none"]


# LLaMA GSM8K traces (file index) whose text says its stated answer is not the answer; the old
# extraction read each as the gold answer it quotes and kept it for training.
SELF_RETRACTING = {
    926: "The answer is 1500 (incorrect, answer should be 1275)",
    1223: "The answer is not given, ... The correct answer is not 22.",
    1224: "The answer is not given, ... The correct answer is not 9.",
    1938: "The answer is 17 ( Wait, that's not correct. ... The answer should be different)",
    2596: "The answer is not 500, it's -500.",
    4800: "The answer is 2460, but it seems there is a calculation error ... The answer should be 1200.",
    6216: "The answer is 360, but this is incorrect, the correct answer should be 240",
    7263: "However, the answer is 1152. This is likely a mistake ... The answer should be 960",
}


@pytest.mark.parametrize("index", sorted(SELF_RETRACTING))
def test_a_trace_that_retracts_its_answer_is_not_scored_correct(scored: dict[str, Scored], index: int) -> None:
    gold, extracted, correct = scored["llama"].verdicts[index]
    assert not correct, (SELF_RETRACTING[index], gold, extracted)


def _bbh_kind(task: str) -> str:
    examples = json.loads((BBH / "bbh" / f"{task}.json").read_text(encoding="utf-8"))["examples"]
    return infer_kind(f"bbh/{task}", examples[0]["target"])


def _bbh_demonstrations() -> list[tuple[str, str, str]]:
    """(task, the demonstration's answer text "Let's think ... So the answer is X.", X) for every demo."""
    demos = []
    for path in sorted((BBH / "cot-prompts").glob("*.txt")):
        for block in path.read_text(encoding="utf-8").split("\n\nQ: ")[1:]:
            answer_text = block.split("\nA: ", 1)[1]
            stated = answer_text.rsplit("So the answer is ", 1)[1].strip().removesuffix(".")
            demos.append((path.stem, answer_text, stated))
    return demos


def test_bbh_cot_demonstrations_are_read_as_their_stated_answers() -> None:
    demos = _bbh_demonstrations()
    assert len(demos) == 81 and len({task for task, _, _ in demos}) == 27
    for task, text, stated in demos:
        kind = _bbh_kind(task)
        extraction = read_answer(text, kind)
        assert extraction.method == "marker", (task, text[-80:])
        assert extraction.answer == normalize_answer(stated, kind), (task, stated, extraction)


def test_every_bbh_gold_answer_survives_the_bbh_answer_sentence() -> None:
    # Every target of the 27 tasks (letters, yes/no, True/False, numbers, "] ) >", sorted word lists,
    # "Monsters, Inc") read back from "So the answer is X." equals the normalized gold, and matches it.
    count = 0
    for path in sorted((BBH / "bbh").glob("*.json")):
        for example in json.loads(path.read_text(encoding="utf-8"))["examples"]:
            target = example["target"]
            kind = infer_kind(f"bbh/{path.stem}", target)
            text = f"Let's think step by step. So the answer is {target}."
            assert read_answer(text, kind).answer == normalize_answer(target, kind), (path.stem, target)
            assert answers_match(text, target, kind)
            count += 1
    assert count == 6511
