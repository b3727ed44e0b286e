"""`cotdistill eval --protocol lm-eval` against EleutherAI's lm-evaluation-harness itself (issue 14, item 5).

A figure reported under the lm-eval protocol must be the figure the harness gives, so the harness (the `peer`
extra) is run here offline, on its own GSM8K task pointed at local files, next to cotdistill on the same student
and problems (benchmarks/lm_eval_compare.py does both), and every problem must agree.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, SHARED_DATA

if os.environ.get("CI"):  # make install brings the peer extra: in CI a missing harness is a failure, not a skip
    import lm_eval
else:
    lm_eval = pytest.importorskip("lm_eval", reason="the peer evaluator: pip install -e '.[peer]' (make install does)")

BENCH = REPO / "benchmarks" / "lm_eval_compare.py"
TEMPLATE = REPO / "benchmarks" / "lm_eval_gsm8k_local.yaml"
FILTERS = ("strict-match", "flexible-extract")


def harness_gsm8k_task() -> dict[str, Any]:
    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())


def local_task() -> dict[str, Any]:
    return yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))


def test_local_task_is_the_harness_gsm8k_task_but_for_data_sampler_and_budget():
    ours, theirs = local_task(), harness_gsm8k_task()
    for task in (ours, theirs):
        for key in ("task", "dataset_path", "dataset_name", "dataset_kwargs", "fewshot_config"):
            task.pop(key, None)
    budget = ours["generation_kwargs"].pop("max_gen_toks")
    assert budget == 256  # the harness HF backend's default max_gen_toks, stated
    assert ours == theirs
    assert local_task()["fewshot_config"] == {"sampler": "first_n"}


def harness_filters(text: str) -> dict[str, str]:
    """The harness's own filter pipelines of its gsm8k task applied to one response."""
    from lm_eval.filters import build_filter_ensemble

    out = {}
    for spec in harness_gsm8k_task()["filter_list"]:
        ensemble = build_filter_ensemble(spec["name"], [(f["function"], {k: v for k, v in f.items() if k != "function"})
                                                        for f in spec["filter"]])
        resps: Any = [[text]]
        for make in ensemble.filters:
            resps = make().apply(resps, [{}])
        (out[spec["name"]],) = list(resps)
    return out


def harness_exact_match(prediction: str, target: str) -> bool:
    """The harness's exact_match with the options of its gsm8k task, against the full GSM8K target text."""
    from lm_eval.api.registry import get_metric

    options = copy.deepcopy(harness_gsm8k_task()["metric_list"][0])
    name = options.pop("metric")
    for key in ("aggregation", "higher_is_better"):
        options.pop(key)
    metric = get_metric(name)
    return bool(metric(references=[target], predictions=[prediction], **options)[name])


RESPONSES = [
    " She makes 9 * 2 = $18.\n#### 18",
    " 16 - 3 - 4 = 9\n#### 18.\nSo it is 19",
    " The answer is 18.",
    " #### $18",
    " #### 1,800\n\n",
    " #### -18.0 and then 7",
    " 12 apples, 13 pears, $1,800.",
    " nothing numeric here",
    "",
    " 5 #### 18 #### 20",
    " 18.\n",
    " -.5",
    " 0,0,0,0,0\nAnswer: 20,0,0,0,0",
    " ...",
]


@pytest.mark.parametrize("text", RESPONSES)
@pytest.mark.parametrize("gold", ["18", "1800", "-18"])
def test_strict_flexible_and_exact_match_equal_the_harness_on_tricky_responses(text, gold):
    from cotdistill.answers import lm_eval_exact_match, lm_eval_flexible, lm_eval_strict

    theirs = harness_filters(text)
    ours = {"strict-match": lm_eval_strict(text), "flexible-extract": lm_eval_flexible(text)}
    assert ours == theirs
    target = f"Some work, $3 and 4.\n#### {gold}"  # what the harness compares with: the whole GSM8K solution
    for name in FILTERS:
        assert lm_eval_exact_match(ours[name], gold) == harness_exact_match(theirs[name], target), (name, ours[name])


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict[str, Any]:
    """benchmarks/lm_eval_compare.py on 8 GSM8K test problems, 0-shot and 2-shot, with a memorizing tiny GPT-2."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"no GSM8K under {SHARED_DATA}")
    root = tmp_path_factory.mktemp("lm-eval-peer")
    out = root / "result.json"
    cmd = [sys.executable, str(BENCH), "--model", str(root / "memorizer"), "--make_memorizer",
           "--memorizer_steps", "150", "--problems", "8", "--k_shot", "0", "2", "--max_new_tokens", "48",
           "--data_dir", str(SHARED_DATA), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if not out.exists():
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    report = json.loads(out.read_text(encoding="utf-8"))
    report["stdout"] = proc.stdout
    return report


@pytest.mark.parametrize("run", ["0-shot", "2-shot"])
def test_harness_and_cotdistill_agree_on_every_problem(compared, run):
    result = compared["runs"][run]
    assert result["problems"] == 8 and result["truncated"] == 0
    assert result["differing"] == [], compared["stdout"]
    assert all(count == 8 for count in result["agree"].values()), result["agree"]
    assert result["lm_eval_accuracy"] == result["cotdistill_accuracy"]


def test_memorizer_makes_the_comparison_read_marked_answers_and_score_right_ones(compared):
    runs = compared["runs"].values()
    assert sum(run["strict_valid"] for run in runs) >= 3  # "#### N" lines were generated and read
    assert any(accuracy > 0 for run in runs for accuracy in run["lm_eval_accuracy"].values())
