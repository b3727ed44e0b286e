"""The experiment harness (cotdistill.experiments, benchmarks/experiment.py): arms from a YAML file, resume after a
kill, the statistics on known inputs, the report, and one real tiny run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from cotdistill.checkpoints import MARKER
from cotdistill.experiments import (
    INIT_MARK,
    ExperimentError,
    InitSpec,
    LaunchRunner,
    ResultStore,
    answer_notes,
    answer_profile,
    build_init,
    changed_from_defaults,
    collapse_note,
    comparisons,
    eval_options,
    load_experiment,
    paired_difference,
    read_eval,
    resolve_run,
    run_experiment,
    sample_sd,
    select_arms,
    select_seeds,
    summarize,
    wilson_interval,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/demo-gpt2-synthetic.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths in experiment files are relative to the repository root


def write_experiment(tmp_path: Path, body: dict, name: str = "exp") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def two_arms(tmp_path: Path, **extra) -> dict:
    return {"output_dir": str(tmp_path / "out"), "overrides": {"train.max_steps": 7, "data.synthetic.eval_size": 300},
            "evals": [{"name": "held-out"}],
            "arms": {"cot": {"recipe": RECIPE},
                     "mix": {"recipe": RECIPE, "overrides": {"data.formats": {"zero_shot_cot": 1, "answer_only": 1},
                                                             "train.max_steps": 9},
                             "evals": [{"name": "held-out"},
                                       {"name": "few-shot", "spec": {"strategy": "few_shot_cot", "k_shot": 3}}]}},
            **extra}


def test_arm_resolution(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, two_arms(tmp_path)))
    assert exp.name == "exp" and exp.seeds == [1, 2, 3] and exp.baseline == "cot" and exp.min_eval_problems == 300
    assert select_arms(exp, "") == ["cot", "mix"] and select_arms(exp, "mix, cot") == ["mix", "cot"]
    assert select_seeds(exp, None) == [1, 2, 3] and select_seeds(exp, 5) == [1, 2, 3, 4, 5]
    assert select_seeds(exp, None, "3,2") == [3, 2]
    for bad, message in [("2,x", "comma-separated integer"), ("2,2", "named twice")]:
        with pytest.raises(ExperimentError, match=message):
            select_seeds(exp, None, bad)
    with pytest.raises(ExperimentError, match="not both"):
        select_seeds(exp, 2, "2")
    with pytest.raises(ExperimentError, match="no arm named nope; arms: cot, mix"):
        select_arms(exp, "cot,nope")

    run = resolve_run(exp, "mix", 2)
    # common overrides, then the arm's (which win), then the harness's seed, folder and per-seed tiny model
    assert run.config.train.max_steps == 9 and run.config.train.seed == 2
    assert run.config.data.formats == {"zero_shot_cot": 1.0, "answer_only": 1.0}
    assert run.run_dir == tmp_path / "out" / "mix" / "seed-2" and run.config.output_dir == str(run.run_dir)
    assert run.config.model.make_tiny == "gpt2"  # the recipe's tiny model, built per seed with train.seed
    assert run.config.model.name_or_path == str(tmp_path / "out" / "models" / "mix" / "seed-2")
    assert [e.name for e in run.arm.evals] == ["held-out", "few-shot"]
    assert [e.from_training for e in run.arm.evals] == [True, False]
    # a spec evaluation starts from the run's eval section (the recipe's budget), then the spec's keys
    assert eval_options(run.config, run.arm.evals[1]) == {"strategy": "few_shot_cot", "k_shot": 3,
                                                          "max_new_tokens": 120, "batch_size": 25}
    assert [e.name for e in resolve_run(exp, "cot", 1).arm.evals] == ["held-out"]  # the default evals
    assert resolve_run(exp, "mix", 2).fingerprint == run.fingerprint != resolve_run(exp, "mix", 3).fingerprint

    shared = two_arms(tmp_path, init={"family": "gpt2", "recipe": RECIPE}, seeds=2, first_seed=10)
    exp = load_experiment(write_experiment(tmp_path, shared, "shared"))
    run = resolve_run(exp, "cot", 11)
    assert exp.seeds == [10, 11] and run.init_dir == tmp_path / "out" / "init" / "seed-11"
    assert run.config.model.name_or_path == str(run.init_dir) and run.config.model.make_tiny == ""
    assert run.overrides[-4:] == ["train.seed=11", f"output_dir={run.run_dir}", f"model.name_or_path={run.init_dir}",
                                  "model.make_tiny="]


def test_the_shipped_experiment_resolves():
    exp = load_experiment(REPO / "recipes" / "experiments" / "socratic-vs-cot.yaml")
    assert list(exp.arms) == ["answer-only", "cot", "socratic", "socratic-equal-epochs", "socratic-solver",
                              "socratic-two-model"] and exp.seeds == [1, 2, 3]
    assert resolve_run(exp, "socratic-equal-epochs", 1).config.train.max_steps == 3 * 1800


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_resolves_with_at_least_300_problems_and_its_shared_init(path):
    exp = load_experiment(path)
    assert exp.seeds == [1, 2, 3]
    for arm in exp.arms:
        run = resolve_run(exp, arm, 1)
        assert run.config.data.synthetic.eval_size >= 300 and run.config.model.make_tiny == ""


@pytest.mark.parametrize("body, key, message", [
    ({"arms": {"a": {"recipe": RECIPE}}, "evals": [{"name": "x"}], "sedes": 3}, "sedes", "unknown key"),
    ({"arms": {}}, "arms", "expected a mapping of arm names"),
    ({"arms": {"a": {"recipe": "recipes/none.yaml"}}, "evals": [{"name": "x"}]}, "arms.a.recipe", "recipe not found"),
    ({"arms": {"a": {"recipe": RECIPE}}}, "arms.a.evals", "no evaluations"),
    ({"arms": {"a": {"recipe": RECIPE, "overides": {}}}, "evals": [{"name": "x"}]}, "arms.a.overides",
     "unknown key"),
    ({"arms": {"a": {"recipe": RECIPE, "evals": [{"name": "x", "spec": {"strategy": "nope"}}]}}},
     "arms.a.evals[0].spec", "strategy='nope' is not one of"),
    ({"arms": {"a": {"recipe": RECIPE, "evals": [{"name": "x"}, {"name": "x"}]}}}, "arms.a.evals", "used twice"),
    ({"arms": {"a": {"recipe": RECIPE}}, "evals": [{"name": "x"}], "seeds": 0}, "seeds", "integer >= 1"),
    ({"arms": {"a": {"recipe": RECIPE}}, "evals": [{"name": "x"}], "baseline": "b"}, "baseline", "not an arm"),
    ({"arms": {"a": {"recipe": RECIPE}}, "evals": [{"name": "x"}], "init": {"family": "lstm", "recipe": RECIPE}},
     "init.family", "is not one of"),
])
def test_bad_experiment_names_file_and_key(tmp_path, body, key, message):
    path = write_experiment(tmp_path, body, "bad")
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and message in str(err.value)


def test_bad_override_names_the_arm(tmp_path):
    path = write_experiment(tmp_path, {"arms": {"a": {"recipe": RECIPE, "overrides": {"train.max_stepz": 3}}},
                                       "evals": [{"name": "x"}]})
    with pytest.raises(ExperimentError, match=r"exp.yaml: arms.a: unknown config key 'train.max_stepz'"):
        resolve_run(load_experiment(path), "a", 1)


def fake_results(run, correct: int = 150, total: int = 300) -> dict:
    outcome = "1" * correct + "0" * (total - correct)
    return {e.name: {"correct": correct, "total": total, "accuracy": correct / total, "strategy": "zero_shot_cot",
                     "problems_sha": "same", "per_problem": outcome} for e in run.arm.evals}


def test_resume_after_kill_runs_only_what_is_missing(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, two_arms(tmp_path)))
    calls = []

    def killed_on_third(run):
        calls.append(run.key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the harness dies in the middle of the third run
        return fake_results(run)

    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, ["cot", "mix"], [1, 2, 3], killed_on_third, log=lambda line: None)
    store = ResultStore(exp.results_file)
    assert sorted(store.done()) == [("cot", 1), ("cot", 2)]
    assert not list(exp.output_dir.glob("results.json.tmp*"))  # written whole, renamed into place

    calls.clear()
    ran = run_experiment(exp, ["cot", "mix"], [1, 2, 3], lambda run: calls.append(run.key) or fake_results(run),
                         log=lambda line: None)
    assert calls == ran == [("cot", 3), ("mix", 1), ("mix", 2), ("mix", 3)]
    data = json.loads(exp.results_file.read_text())
    assert len(data["runs"]) == 6 and data["experiment"] == "exp"
    assert set(data["runs"][-1]["evals"]) == {"held-out", "few-shot"}
    calls.clear()
    assert run_experiment(exp, ["mix"], [1, 2, 3, 4], lambda run: calls.append(run.key) or fake_results(run),
                          log=lambda line: None) == [("mix", 4)]

    # the same file with another configuration: stored results are not mixed with new ones
    changed = two_arms(tmp_path)
    changed["arms"]["cot"]["overrides"] = {"train.lr": 1e-3}
    exp = load_experiment(write_experiment(tmp_path, changed))
    with pytest.raises(ExperimentError, match="cot seed 1, cot seed 2, cot seed 3 from another configuration"):
        run_experiment(exp, ["cot"], [1, 2, 3], fake_results, log=lambda line: None)


def test_a_run_resumed_from_an_earlier_attempt_says_its_minutes_are_that_attempts_only(tmp_path):
    """An attempt killed after a checkpoint (or after training) leaves it in the run folder; the rerun resumes
    from it and takes less time than a whole run, so its result says so rather than passing for a run's time."""
    exp = load_experiment(write_experiment(tmp_path, two_arms(tmp_path)))
    for seed, left in ((1, "checkpoint"), (2, "final")):
        run_dir = resolve_run(exp, "cot", seed).run_dir
        if left == "checkpoint":
            (run_dir / "checkpoints" / "step-000040").mkdir(parents=True)  # killed while writing step 60's
            (run_dir / "checkpoints" / "step-000030").mkdir()
            (run_dir / "checkpoints" / "step-000030" / MARKER).write_text("{}")
        else:
            (run_dir / "final").mkdir(parents=True)
    lines = []
    run_experiment(exp, ["cot"], [1, 2, 3], fake_results, log=lines.append)
    runs = {entry["seed"]: entry for entry in json.loads(exp.results_file.read_text())["runs"]}
    assert runs[1]["earlier_attempt"] == "resumes from the step-30 checkpoint of an earlier attempt"
    assert runs[2]["earlier_attempt"] == "its training finished in an earlier attempt"
    assert "earlier_attempt" not in runs[3]
    said = [line for line in lines if "this attempt only" in line]
    assert len(said) == 2 and said[0].startswith("   cot seed 1: held-out 150/300 ("), said
    assert any(line.endswith("(resumes from the step-30 checkpoint of an earlier attempt)") for line in lines)


def test_small_evaluation_sets_are_refused_naming_the_arm(tmp_path):
    body = two_arms(tmp_path)
    body["arms"]["mix"]["overrides"]["data.synthetic.eval_size"] = 100
    exp = load_experiment(write_experiment(tmp_path, body))
    with pytest.raises(ExperimentError, match=r"arm 'mix', evaluation 'held-out' \(held-out\): 100 problems, fewer "
                                              r"than min_eval_problems=300"):
        run_experiment(exp, ["cot", "mix"], [1], fake_results, log=lambda line: None)
    assert not exp.results_file.exists()  # refused before anything ran
    warnings = []
    run_experiment(exp, ["cot", "mix"], [1], fake_results, allow_small_eval=True, log=warnings.append)
    assert sum(line.startswith("warning: arm 'mix'") for line in warnings) == 2  # held-out and few-shot


def test_statistics_on_known_inputs():
    low, high = wilson_interval(0.8, 100)  # the textbook example: 80/100
    assert (round(low, 4), round(high, 4)) == (0.7112, 0.8666)
    low, high = wilson_interval(0.5, 300)
    assert (round(low, 4), round(high, 4)) == (0.4438, 0.5562)  # +-5.6 points at 300 problems
    assert wilson_interval(0.0, 10)[0] == 0.0 and round(wilson_interval(0.0, 10)[1], 4) == 0.2775
    assert sample_sd([0.5, 0.6, 0.7]) == pytest.approx(0.1) and sample_sd([0.5]) is None

    d, low, high = paired_difference(["1100", "1110"], ["1000", "1000"])
    # per problem (seed means): A 1, 1, .5, 0; B 1, 0, 0, 0; differences 0, 1, .5, 0: mean .375, sd .478714
    half = 1.959963984540054 * math.sqrt(0.6875 / 3) / 2
    assert d == pytest.approx(0.375) and (low, high) == pytest.approx((0.375 - half, 0.375 + half))
    assert round(low, 4) == -0.0941 and round(high, 4) == 0.8441

    def entry(arm: str, seed: int, correct: int) -> dict:
        outcome = "1" * correct + "0" * (300 - correct)
        return {"arm": arm, "seed": seed,
                "evals": {"e": {"correct": correct, "total": 300, "per_problem": outcome, "problems_sha": "x"}}}

    runs = [entry("b", 1, 150), entry("b", 2, 180), entry("b", 3, 165)] + [entry("a", s, 150) for s in (1, 2, 3)]
    first, second = summarize(runs, ["b", "a"])
    assert (first.arm, first.eval, first.seeds) == ("b", "e", [1, 2, 3])
    assert first.accuracies == pytest.approx([0.5, 0.6, 0.55]) and first.mean == pytest.approx(0.55)
    assert first.sd == pytest.approx(0.05) and (first.low, first.high) == pytest.approx(wilson_interval(0.55, 300))
    assert (round(first.low, 4), round(first.high, 4)) == (0.4934, 0.6053) and first.problems == 300
    assert second.arm == "a" and second.sd == 0.0
    ((arm, name, d, low, high),) = comparisons(runs, "a")
    assert (arm, name) == ("b", "e") and d == pytest.approx(0.05)  # problems 151-180 right in some seeds of b only


def test_evaluations_of_other_problems_under_the_same_ids_are_not_paired(tmp_path):
    # A generator run with other settings reuses ids ("synthetic/<seed>/<i>") for other problems: the ids' hash
    # matched, and the two arms were paired problem by problem over different problems.
    def folder(name: str, questions: list[str], outcome: str) -> dict:
        out = tmp_path / name
        out.mkdir()
        rows = [{"index": i, "id": f"p{i}", "question": q, "gold": "7", "correct": c == "1"}
                for i, (q, c) in enumerate(zip(questions, outcome, strict=True))]
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "metrics.json").write_text(json.dumps({"correct": outcome.count("1"), "total": len(outcome),
                                                      "accuracy": outcome.count("1") / len(outcome)}))
        return read_eval(out)

    same = [f"What is {i} + 3?" for i in range(4)]
    other = [f"What is {i} + 9?" for i in range(4)]
    base = {"arm": "a", "seed": 1, "evals": {"e": folder("a", same, "1100")}}
    paired = {"arm": "b", "seed": 1, "evals": {"e": folder("b", same, "1110")}}
    moved = {"arm": "c", "seed": 1, "evals": {"e": folder("c", other, "1111")}}
    assert base["evals"]["e"]["problems_sha"] == moved["evals"]["e"]["problems_sha"]  # the ids are the same
    assert [c[0] for c in comparisons([base, paired, moved], "a")] == ["b"]
    legacy = {**moved["evals"]["e"]}
    del legacy["problems_text_sha"]  # stored before the text hash existed: judged by its ids, as before
    assert [c[0] for c in comparisons([base, {"arm": "c", "seed": 1, "evals": {"e": legacy}}], "a")] == ["c"]


def test_a_run_that_gives_one_answer_to_most_problems_is_named_beside_the_constant_answer_floor(tmp_path):
    """Every on-policy seed of the fp32 rerun answered '1' to all 300 problems and scored 5.7% (the problems whose
    answer is 1), which read as a (poor) accuracy; the report now says what a constant answer scores and names the
    collapsed runs."""
    golds = ["1", "2", "2", "3", "4", "2", "5", "6", "2", "7"]

    def evaluated(name: str, answers: list[str | None]) -> dict:
        out = tmp_path / name
        out.mkdir()
        rows = [{"index": i, "id": f"p{i}", "question": f"q{i}", "gold": g, "extracted": a, "correct": a == g}
                for i, (g, a) in enumerate(zip(golds, answers, strict=True))]
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        correct = sum(r["correct"] for r in rows)
        (out / "metrics.json").write_text(json.dumps({"correct": correct, "total": len(rows),
                                                      "accuracy": correct / len(rows)}))
        return read_eval(out)

    varied = {"arm": "sft", "seed": 1, "evals": {"e": evaluated("sft", ["1", "2", "9", "3", "4", "0", "5", "6", "2",
                                                                       "8"])}}
    constant = {"arm": "op", "seed": 2, "evals": {"e": evaluated("op", ["1"] * 10)}}
    silent = {"arm": "op", "seed": 3, "evals": {"e": evaluated("silent", [None] * 6 + ["2", "3", "4", "5"])}}
    assert constant["evals"]["e"]["answers"] == {"top": "1", "top_count": 10, "gold_top": "2", "gold_top_count": 4,
                                                 "total": 10}
    notes = answer_notes([varied, constant, silent])
    assert notes[0] == "A constant answer scores at most 40.0% on e (gold answer '2' for 4 of 10 problems)."
    assert notes[1].endswith("op seed 2 on e ('1' for 10 of 10); op seed 3 on e ('(none)' for 6 of 10).")
    assert "sft" not in notes[1]
    # A result stored before profiles existed is profiled from its folder's predictions, while they are there.
    legacy = {**constant, "evals": {"e": {k: v for k, v in constant["evals"]["e"].items() if k != "answers"}}}
    assert answer_notes([legacy]) == answer_notes([constant])
    gone = {**legacy, "evals": {"e": {**legacy["evals"]["e"], "folder": str(tmp_path / "deleted")}}}
    assert answer_notes([gone]) == []
    assert answer_notes([varied]) == [notes[0]]
    assert answer_profile([])["total"] == 0 and not collapse_note({"answers": answer_profile([])})  # no predictions


def test_report_writes_markdown_and_png(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, two_arms(tmp_path)))
    assert write_report(exp) is None  # nothing finished yet
    run_experiment(exp, ["cot", "mix"], [1, 2], lambda run: fake_results(run, 140 + 20 * run.seed),
                   log=lambda line: None)
    markdown, png = write_report(exp)
    text = markdown.read_text()
    assert "| cot | held-out | zero_shot_cot | 2 | 53.3, 60.0 | 56.7 | 4.7 | [51.0, 62.2] | 300 |" in text
    assert "| mix | few-shot |" in text and "Paired against cot" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_a_report_leaves_out_results_of_an_arm_changed_since_they_ran(tmp_path):
    """Running other arms after changing one (its results stale) reported the changed arm's old numbers beside the
    new ones, without a word."""
    exp = load_experiment(write_experiment(tmp_path, two_arms(tmp_path)))
    run_experiment(exp, ["cot", "mix"], [1], lambda run: fake_results(run, 240), log=lambda line: None)
    changed = two_arms(tmp_path)
    changed["arms"]["mix"]["overrides"]["train.max_steps"] = 11
    exp = load_experiment(write_experiment(tmp_path, changed))
    markdown, _ = write_report(exp)
    text = markdown.read_text()
    assert "| cot | held-out |" in text and "| mix |" not in text
    assert "Left out, made by another configuration than the experiment file's now (rerun them): mix seed 1" in text


TINY = {"data.synthetic.train_size": 64, "data.synthetic.eval_size": 6, "model.tiny.d_model": 32,
        "model.tiny.num_layers": 1, "model.tiny.num_heads": 2, "model.tiny.d_ff": 64, "model.tiny.vocab_size": 300}


def test_an_init_folder_is_reused_only_when_built_by_the_same_init(tmp_path):
    # The harness kept any existing init folder: an experiment whose init changed (family, size) trained every arm
    # from the old model.
    spec = InitSpec("llama", RECIPE, ["model.tiny.d_model=128"])
    folder = tmp_path / "init" / "seed-1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ExperimentError, match="older harness or by hand"):
        build_init(spec, 1, folder)
    record = {"family": "llama", "recipe": RECIPE, "overrides": ["model.tiny.d_model=128"], "seed": 1}
    (folder / INIT_MARK).write_text(json.dumps(record))
    assert build_init(spec, 1, folder) == folder
    with pytest.raises(ExperimentError, match="another init"):
        build_init(InitSpec("gpt2", RECIPE, ["model.tiny.d_model=128"]), 1, folder)
    with pytest.raises(ExperimentError, match="another init"):
        build_init(spec, 2, folder)


def test_an_init_build_killed_before_its_mark_leaves_no_init_and_the_next_build_succeeds(tmp_path, monkeypatch):
    # The model used to take its final name before the mark was written: a harness killed in between left an
    # unmarked init that every later run refused as "built by an older harness".
    spec = InitSpec("llama", RECIPE, [f"{k}={v}" for k, v in TINY.items()])
    folder = tmp_path / "init" / "seed-1"
    real_write = Path.write_text

    def killed_at_the_mark(self, *args, **kwargs):
        if self.name == INIT_MARK:
            raise KeyboardInterrupt  # what SIGINT / the end of the job does at this point
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", killed_at_the_mark)
    with pytest.raises(KeyboardInterrupt):
        build_init(spec, 1, folder, log=lambda line: None)
    monkeypatch.setattr(Path, "write_text", real_write)
    assert not folder.exists()
    assert build_init(spec, 1, folder, log=lambda line: None) == folder
    assert json.loads((folder / INIT_MARK).read_text())["seed"] == 1 and (folder / "config.json").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["seed-1"]  # the killed build's staging is gone


@pytest.mark.distributed
def test_one_real_tiny_run_end_to_end(tmp_path):
    """One DeepSpeed rank, 3 steps: the shared init is built per seed, training writes its held-out evaluation,
    a spec evaluation runs through launchers/evaluate.py, and the results file holds what they wrote."""
    body = {"seeds": 1, "output_dir": str(tmp_path / "out"), "min_eval_problems": 0,
            "init": {"family": "gpt2", "recipe": RECIPE, "overrides": TINY},
            "overrides": {**TINY, "train.micro_batch_size": 4, "train.max_steps": 3, "train.warmup_steps": 1,
                          "checkpoint.every": 0, "eval.max_new_tokens": 12, "eval.batch_size": 6},
            "arms": {"cot": {"recipe": RECIPE, "evals": [
                {"name": "held-out"}, {"name": "answer-only", "spec": {"strategy": "answer_only"}}]}}}
    exp = load_experiment(write_experiment(tmp_path, body))
    launched = []
    runner = LaunchRunner(ranks=1, repo=REPO, log=launched.append)
    assert run_experiment(exp, ["cot"], [1], runner, log=lambda line: None) == [("cot", 1)]
    run_dir = exp.run_dir("cot", 1)
    assert (exp.init_dir(1) / "config.json").is_file() and (run_dir / "final").is_dir()
    assert json.loads((exp.init_dir(1) / INIT_MARK).read_text())["seed"] == 1  # what it was built with
    (entry,) = ResultStore(exp.results_file).runs()
    trained = json.loads((run_dir / "eval" / "held-out" / "metrics.json").read_text())
    held_out = entry["evals"]["held-out"]
    assert (held_out["correct"], held_out["total"], held_out["strategy"]) == (trained["correct"], 6, "zero_shot_cot")
    assert len(held_out["per_problem"]) == 6
    answer_only = entry["evals"]["answer-only"]
    assert answer_only["strategy"] == "answer_only" and answer_only["total"] == 6
    assert answer_only["problems_sha"] == held_out["problems_sha"]  # the run's own held-out problems
    assert any("evaluate.py" in line and "--max_new_tokens=12" in line for line in launched)
    # run again: nothing left to do
    assert run_experiment(exp, ["cot"], [1], runner, log=lambda line: None) == []


def write_fake_eval(folder: Path, outcome: str, strategy: str) -> None:
    folder.mkdir(parents=True)
    rows = [{"index": i, "id": f"p{i}", "correct": c == "1"} for i, c in enumerate(outcome)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    (folder / "metrics.json").write_text(json.dumps({"correct": outcome.count("1"), "total": len(outcome),
                                                     "accuracy": outcome.count("1") / len(outcome),
                                                     "strategy": strategy}))


class FakeLaunches(LaunchRunner):
    """LaunchRunner with the DeepSpeed launches replaced by writing what they would write."""

    def __init__(self) -> None:
        super().__init__(ranks=2, repo=REPO, log=lambda line: None)
        self.launched: list[tuple[str, list[str]]] = []

    def _launch(self, script: str, args: list[str]) -> None:
        self.launched.append((script, args))
        if script == "train.py":
            run_dir = Path(next(a for a in args if a.startswith("output_dir=")).partition("=")[2])
            (run_dir / "final").mkdir()
            write_fake_eval(run_dir / "eval" / "held-out", "1100", "zero_shot_cot")
        else:
            out = Path(next(a for a in args if a.startswith("--output_dir=")).partition("=")[2])
            write_fake_eval(out / "synthetic", "1000", "few_shot_cot")


def test_launch_runner_trains_once_and_redoes_only_evaluations(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, two_arms(tmp_path)))
    run = resolve_run(exp, "mix", 1)
    runner = FakeLaunches()
    results = runner(run)
    assert [script for script, _ in runner.launched] == ["train.py", "evaluate.py"]
    assert runner.launched[0][1] == ["--config", RECIPE, *run.overrides]
    assert runner.launched[1][1][:2] == [str(run.run_dir / "final"), "--datasets=synthetic"]
    assert "--strategy=few_shot_cot" in runner.launched[1][1] and "--k_shot=3" in runner.launched[1][1]
    assert results["held-out"]["per_problem"] == "1100" and results["held-out"]["correct"] == 2
    assert results["few-shot"]["per_problem"] == "1000" and results["few-shot"]["strategy"] == "few_shot_cot"

    # killed after training, before the result was recorded: training is not repeated, the evaluation is redone
    runner.launched.clear()
    assert runner(run) == results and [script for script, _ in runner.launched] == ["evaluate.py"]

    # a run folder made by another configuration of the same arm and seed is not reused
    changed = two_arms(tmp_path)
    changed["arms"]["mix"]["overrides"]["train.lr"] = 1e-4
    other = resolve_run(load_experiment(write_experiment(tmp_path, changed)), "mix", 1)
    with pytest.raises(ExperimentError, match="was made by another configuration of mix seed 1"):
        runner(other)


def test_cli_dry_run_lists_the_runs(tmp_path):
    import subprocess
    import sys

    path = write_experiment(tmp_path, two_arms(tmp_path, seeds=3))
    store = ResultStore(tmp_path / "out" / "results.json")
    store.add({"arm": "cot", "seed": 1, "fingerprint": resolve_run(load_experiment(path), "cot", 1).fingerprint,
               "evals": {}})
    store.add({"arm": "cot", "seed": 3, "fingerprint": "made-by-an-older-file", "evals": {}})
    proc = subprocess.run([sys.executable, "benchmarks/experiment.py", str(path), "--arms", "cot", "--dry_run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == ["cot seed 1: done", "cot seed 2: to run",
                                                         "cot seed 3: stale (other config)"]
    assert "--config recipes/demo-gpt2-synthetic.yaml train.max_steps=7 data.synthetic.eval_size=300 train.seed=2" \
        in lines[1]
    proc = subprocess.run([sys.executable, "benchmarks/experiment.py", str(path), "--arms", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {path}: no arm named nope; arms: cot, mix"


def test_an_arm_must_write_what_its_evaluations_read(tmp_path):
    body = two_arms(tmp_path)
    body["arms"]["mix"]["overrides"]["checkpoint.export_final"] = False
    exp = load_experiment(write_experiment(tmp_path, body))
    with pytest.raises(ExperimentError, match="arms.mix: evaluations with a spec evaluate RUN/final"):
        resolve_run(exp, "mix", 1)
    body["arms"]["cot"]["overrides"] = {"eval.at_end": False}
    exp = load_experiment(write_experiment(tmp_path, body))
    with pytest.raises(ExperimentError, match="arms.cot: evaluations without a spec read the training run's"):
        resolve_run(exp, "cot", 1)
    body["arms"]["cot"]["overrides"] = {"eval.datasets": ["svamp"]}
    body["arms"]["cot"]["evals"] = [{"name": "gsm8k"}, {"name": "gsm", "dataset": "gsm8k"}]
    exp = load_experiment(write_experiment(tmp_path, body))
    with pytest.raises(ExperimentError, match=r"evaluation 'gsm' reads the training run's 'gsm8k' evaluation, but the "
                                              r"run's eval.datasets \['svamp'\] does not name it"):
        resolve_run(exp, "cot", 1)


def two_model(tmp_path: Path) -> dict:
    """A decomposer-only arm evaluated with the solver-only arm's model of the same seed (Shridhar et al.'s two
    models)."""
    socratic = {"data.per_problem": True, "eval.at_end": False}
    return {"output_dir": str(tmp_path / "out"), "overrides": {"train.max_steps": 7, "data.synthetic.eval_size": 300},
            "arms": {
                "solver": {"recipe": RECIPE, "overrides": {**socratic, "data.formats": {"solver": 1},
                                                           "eval.at_end": True},
                           "evals": [{"name": "held-out"}]},
                "two-model": {"recipe": RECIPE, "overrides": {**socratic, "data.formats": {"decomposer": 1}},
                              "evals": [{"name": "held-out", "solver_arm": "solver",
                                         "spec": {"strategy": "socratic"}}]}}}


def test_a_two_model_arm_asks_with_its_model_and_answers_with_the_solver_arms_model_of_the_same_seed(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, two_model(tmp_path)))
    assert select_arms(exp, "two-model") == ["solver", "two-model"]  # the solver's arm is trained first
    run = resolve_run(exp, "two-model", 2)
    runner = FakeLaunches()
    runner(resolve_run(exp, "solver", 2))
    runner.launched.clear()
    runner(run)
    script, args = runner.launched[1]
    assert script == "evaluate.py" and args[0] == str(run.run_dir / "final")
    assert f"--solver={exp.run_dir('solver', 2) / 'final'}" in args and "--strategy=socratic" in args
    # the solver arm's configuration is part of the two-model arm's result
    changed = two_model(tmp_path)
    changed["arms"]["solver"]["overrides"]["train.lr"] = 1e-4
    assert resolve_run(load_experiment(write_experiment(tmp_path, changed, "changed")), "two-model", 2).fingerprint \
        != run.fingerprint


@pytest.mark.parametrize("solver_arm, spec, message", [
    ("nope", {"strategy": "socratic"}, "'nope' is not an arm"),
    ("two-model", {"strategy": "socratic"}, "must be another arm"),
    ("solver", {"strategy": "zero_shot_cot"}, "needs strategy: socratic"),
])
def test_a_solver_arm_that_cannot_work_is_refused_naming_the_key(tmp_path, solver_arm, spec, message):
    body = two_model(tmp_path)
    body["arms"]["two-model"]["evals"][0].update(solver_arm=solver_arm, spec=spec)
    with pytest.raises(ExperimentError, match="solver_arm") as err:
        load_experiment(write_experiment(tmp_path, body))
    assert message in str(err.value)


def test_a_config_key_added_with_its_default_keeps_stored_fingerprints(tmp_path, monkeypatch):
    import cotdistill.experiments as experiments

    exp = load_experiment(write_experiment(tmp_path, two_arms(tmp_path)))
    before = resolve_run(exp, "mix", 1).fingerprint
    real = experiments.to_dict

    def with_new_key(value: str):
        def to_dict(config):
            out = real(config)
            out["train"]["new_option"] = value if config.output_dir != "runs/default" else "off"
            return out
        return to_dict

    # a new key whose value is its default (code, like the rest of the package) leaves the result valid
    monkeypatch.setattr(experiments, "to_dict", with_new_key("off"))
    assert resolve_run(exp, "mix", 1).fingerprint == before
    # the same key set to something else by the configuration is a different run
    monkeypatch.setattr(experiments, "to_dict", with_new_key("on"))
    assert resolve_run(exp, "mix", 1).fingerprint != before
    found = changed_from_defaults({"a": {"b": 1, "c": [2]}, "d": 3}, {"a": {"b": 1, "c": [1]}, "d": 3})
    assert found == {"a": {"c": [2]}}


DATA_RECIPE = "recipes/data/gsm8k-vllm-cot.yaml"


def with_prepare(tmp_path: Path) -> dict:
    """A teacher trained once and the data it writes, shared by every arm and seed."""
    body = two_arms(tmp_path)
    body["prepare"] = [{"name": "teacher", "train": RECIPE, "overrides": {"train.max_steps": 5}},
                       {"name": "teacher-data", "build_data": DATA_RECIPE,
                        "overrides": {"teacher.backend": "hf", "teacher.model": "{prepare:teacher}/final"}}]
    body["arms"]["cot"]["overrides"] = {"train.kd_weight": 0.5, "data.dataset": "teacher_data", "data.split": "cot",
                                        "data.path": "{prepare:teacher-data}"}
    body["arms"]["cot"]["evals"] = [{"name": "synthetic", "dataset": "synthetic",
                                     "spec": {"strategy": "zero_shot_cot"}}]
    return body


class FakePrepareLaunches(FakeLaunches):
    def _run(self, cmd: list[str], what: str) -> None:
        """The data build: the builder's own check of its folder (it refuses files it did not write), then a
        complete manifest."""
        from cotdistill.teacher.builder import _check_output_dir

        self.launched.append((what, cmd))
        out = Path(next(a for a in cmd if a.startswith("output_dir=")).partition("=")[2])
        _check_output_dir(out)
        (out / "manifest.json").write_text(json.dumps({"complete": True}))

    def _launch(self, script: str, args: list[str]) -> None:
        out = Path(next((a for a in args if a.startswith("output_dir=")), "=").partition("=")[2])
        if "prepare" in out.parts:  # the teacher's training: its export
            self.launched.append((script, args))
            (out / "final").mkdir(parents=True)
            (out / "final" / "config.json").write_text("{}")
            return
        super()._launch(script, args)


def test_prepare_steps_are_made_once_before_the_arms_and_their_folders_reach_the_arms(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, with_prepare(tmp_path)))
    teacher, data = exp.prepare_dir("teacher"), exp.prepare_dir("teacher-data")
    run = resolve_run(exp, "cot", 1)
    assert run.config.data.path == str(data) and run.config.train.kd_weight == 0.5
    runner = FakePrepareLaunches()
    run_experiment(exp, ["cot"], [1, 2], runner, log=lambda line: None, sizer=lambda r, e: 300)
    steps = [(script, next((a for a in args if a.startswith("output_dir=")), "")) for script, args in runner.launched]
    runs = [("train.py", f"output_dir={exp.run_dir('cot', seed)}") for seed in (1, 2)]
    assert [step for step in steps if step[0] != "evaluate.py"] == [
        ("train.py", f"output_dir={teacher}"), ("build_data.py", f"output_dir={data}"), *runs]
    assert f"model.name_or_path={tmp_path / 'out' / 'models' / 'prepare' / 'teacher'}" in runner.launched[0][1]
    build = runner.launched[1][1]
    assert build[2:4] == ["--config", DATA_RECIPE] and f"teacher.model={teacher}/final" in build
    runner.launched.clear()
    run_experiment(exp, ["mix"], [1], runner, log=lambda line: None, sizer=lambda r, e: 300)
    assert [script for script, _ in runner.launched] == ["train.py", "evaluate.py"]  # nothing made again

    # a prepare step's configuration is part of every arm's result, and of its folder's
    changed = with_prepare(tmp_path)
    changed["prepare"][0]["overrides"]["train.max_steps"] = 6
    other = load_experiment(write_experiment(tmp_path, changed, "changed"))
    assert resolve_run(other, "mix", 1).fingerprint != resolve_run(exp, "mix", 1).fingerprint
    with pytest.raises(ExperimentError, match="was made by another configuration of prepare step teacher"):
        FakePrepareLaunches().prepare(other)  # a finished teacher of another configuration is not reused


@pytest.mark.parametrize("change, key, message", [
    (lambda b: b["arms"]["cot"]["overrides"].update({"data.path": "{prepare:nope}"}), "arms.cot.overrides",
     "{prepare:nope} names no prepare step"),
    (lambda b: b["prepare"][0].update({"build_data": DATA_RECIPE}), "prepare[0]", "exactly one of train, build_data"),
    (lambda b: b["prepare"][1].update({"name": "teacher"}), "prepare[1].name", "expected a new name"),
])
def test_a_prepare_step_that_cannot_work_is_refused_naming_the_key(tmp_path, change, key, message):
    body = with_prepare(tmp_path)
    change(body)
    path = write_experiment(tmp_path, body, "bad")
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}: {key}") and message in str(err.value)


# -- checkpoint evaluations and in- vs out-of-distribution selection ---------------------------------------------


def selection_experiment(tmp_path: Path, **selection) -> dict:
    spec = {"strategy": "zero_shot_cot"}
    return {"output_dir": str(tmp_path / "out"),
            "overrides": {"train.max_steps": 6, "data.synthetic.eval_size": 300, "checkpoint.every": 2,
                          "checkpoint.keep_last": 3},
            "evals": [{"name": "id", "dataset": "synthetic", "spec": spec, "checkpoints": True},
                      {"name": "more-steps", "dataset": "synthetic:more_steps", "spec": spec, "checkpoints": True}],
            "selection": selection or {"in_distribution": "id", "out_of_distribution": ["more-steps"]},
            "arms": {"cot": {"recipe": RECIPE}}}


class FakeCheckpointLaunches(FakeLaunches):
    """eval_checkpoints.py writes step-NNNNNN/<set>/ for steps 2, 4 and 6."""

    def _launch(self, script: str, args: list[str]) -> None:
        if script != "eval_checkpoints.py":
            return super()._launch(script, args)
        self.launched.append((script, args))
        out = Path(next(a for a in args if a.startswith("--output_dir=")).partition("=")[2])
        datasets = next(a for a in args if a.startswith("--datasets=")).partition("=")[2]
        for dataset in datasets.split(","):
            outcomes = ((2, "1000"), (4, "1100"), (6, "1110")) if ":" in dataset else ((2, "0"), (4, "1"), (6, "1"))
            for step, outcome in outcomes:
                write_fake_eval(out / f"step-{step:06d}" / dataset.replace(":", "_"), outcome, "zero_shot_cot")


def test_a_checkpoint_evaluation_scores_every_checkpoint_and_reads_as_the_last(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, selection_experiment(tmp_path)))
    run = resolve_run(exp, "cot", 1)
    runner = FakeCheckpointLaunches()
    results = runner(run)
    assert [script for script, _ in runner.launched] == ["train.py", "eval_checkpoints.py"]
    args = runner.launched[1][1]
    assert args[:2] == [str(run.run_dir), "--datasets=synthetic,synthetic:more_steps"]
    assert "--strategy=zero_shot_cot" in args
    assert sorted(results["more-steps"]["per_step"]) == ["2", "4", "6"]
    assert results["more-steps"]["per_step"]["4"]["correct"] == 2
    assert results["more-steps"]["correct"] == 3 and results["more-steps"]["per_problem"] == "1110"
    assert results["id"]["per_step"]["2"]["correct"] == 0 and results["id"]["per_problem"] == "1"


def test_checkpoint_evaluations_with_different_options_are_launched_apart(tmp_path):
    experiment = selection_experiment(tmp_path)
    experiment["evals"][1]["spec"] = {"strategy": "zero_shot_cot", "max_new_tokens": 64}
    run = resolve_run(load_experiment(write_experiment(tmp_path, experiment)), "cot", 1)
    runner = FakeCheckpointLaunches()
    results = runner(run)
    launched = [args for script, args in runner.launched if script == "eval_checkpoints.py"]
    assert [a[1] for a in launched] == ["--datasets=synthetic", "--datasets=synthetic:more_steps"]
    assert "--max_new_tokens=64" in launched[1] and "--max_new_tokens=64" not in launched[0]
    assert results["more-steps"]["correct"] == 3 and results["id"]["correct"] == 1


@pytest.mark.parametrize("change, key, message", [
    ({"selection": {"in_distribution": "nope", "out_of_distribution": ["more-steps"]}}, "selection.in_distribution",
     "'nope' is not an evaluation with checkpoints: true"),
    ({"selection": {"in_distribution": "id", "out_of_distribution": ["id"]}}, "selection.out_of_distribution",
     "is the in-distribution evaluation"),
    ({"evals": [{"name": "id", "checkpoints": True}]}, "evals[0].checkpoints", "give a spec"),
    ({"evals": [{"name": "id", "spec": {"strategy": "zero_shot_cot"}, "checkpoints": "yes"}]}, "evals[0].checkpoints",
     "expected true or false"),
])
def test_a_selection_that_cannot_work_is_refused_naming_the_key(tmp_path, change, key, message):
    body = {**selection_experiment(tmp_path), **change}
    with pytest.raises(ExperimentError, match=key.replace("[", r"\[").replace("]", r"\]")) as err:
        load_experiment(write_experiment(tmp_path, body))
    assert message in str(err.value)


def test_checkpoint_evaluations_need_saved_checkpoints(tmp_path):
    body = selection_experiment(tmp_path)
    body["overrides"]["checkpoint.every"] = 0
    with pytest.raises(ExperimentError, match="checkpoint evaluations need saved checkpoints"):
        resolve_run(load_experiment(write_experiment(tmp_path, body)), "cot", 1)


def test_evaluations_without_checkpoints_fingerprint_as_before_the_flag_existed():
    from cotdistill.experiments import EvalEntry, _eval_fingerprint

    entry = EvalEntry("few-shot", "held-out", {"strategy": "few_shot_cot"}, "")
    assert _eval_fingerprint(entry) == {"name": "few-shot", "dataset": "held-out", "spec": {"strategy": "few_shot_cot"},
                                        "solver_arm": ""}
    assert _eval_fingerprint(EvalEntry("x", checkpoints=True))["checkpoints"] is True


def per_step(outcomes: dict[int, str]) -> dict:
    steps = {str(step): {"correct": o.count("1"), "total": len(o), "per_problem": o} for step, o in outcomes.items()}
    return {**steps[str(max(outcomes))], "per_step": steps}


def test_selection_statistics_on_known_inputs(tmp_path):
    from cotdistill.experiment_selection import seed_selections, selection_markdown
    from cotdistill.experiments import SelectionSpec

    spec = SelectionSpec("id", ("a", "b"))
    runs = [  # seed 1: ID peaks at step 4, OOD (mean of a and b) at step 2; seed 2: both at step 6 (tie with 4 on ID)
        {"arm": "cot", "seed": 1, "evals": {"id": per_step({2: "1000", 4: "1110", 6: "1100"}),
                                             "a": per_step({2: "1111", 4: "1100", 6: "1000"}),
                                             "b": per_step({2: "1100", 4: "1100", 6: "0000"})}},
        {"arm": "cot", "seed": 2, "evals": {"id": per_step({2: "1000", 4: "1111", 6: "1111"}),
                                             "a": per_step({2: "0000", 4: "1000", 6: "1110"}),
                                             "b": per_step({2: "0000", 4: "0000", 6: "1000"})}},
    ]
    first, second = seed_selections(runs, spec)
    assert (first.by_id, first.by_ood) == (4, 2)
    assert first.ood_accuracy == {2: 0.75, 4: 0.5, 6: 0.125}
    assert first.ood_cost == pytest.approx(0.25) and first.id_cost == pytest.approx(0.5)
    assert (second.by_id, second.by_ood) == (4, 6)  # the earliest of equal ID accuracies
    assert second.ood_cost == pytest.approx(0.5 - 0.125) and second.id_cost == 0.0
    assert first.ood_outcomes["a"][2] == "1111" and first.ood_outcomes["b"][2] == "1100"
    text = selection_markdown([first, second], spec)
    assert "| cot | 1 | 2, 4, 6 | 4 (75.0 / 50.0) | 2 (25.0 / 75.0) | 25.0 | 50.0 |" in text
    assert "0 of 2" in text
    # the paired difference over the problems: OOD outcomes at the OOD choice minus at the ID choice, averaged;
    # with sets of equal size the mean of the sets' differences is the pooled difference
    d, _, _ = paired_difference(["11111100", "11101000"], ["11001100", "10000000"])
    assert f"{100 * d:.1f} [" in text


def test_ood_selection_ties_exactly_and_weighs_each_ood_set_as_its_accuracy_does():
    """Three OOD sets at 3, 2, 1 of 10 (step 2) and 1, 2, 3 of 10 (step 4): both 20% exactly, so the earliest
    wins (averaging floats gave step 4 0.20000000000000004). With sets of 2 and 8 problems the summary's
    OOD cost is the mean of the two sets' paired differences, as the per-seed cost is, not the pooled
    difference (which had the opposite sign)."""
    from cotdistill.experiment_selection import paired_over_sets, seed_selections, selection_markdown
    from cotdistill.experiments import SelectionSpec

    ten = {2: ("1110000000", "1100000000", "1000000000"), 4: ("1000000000", "1100000000", "1110000000")}
    run = {"arm": "cot", "seed": 1, "evals": {"id": per_step({2: "10", 4: "10"}),
                                             **{n: per_step({s: ten[s][k] for s in ten}) for k, n in
                                                enumerate("abc")}}}
    [tied] = seed_selections([run], SelectionSpec("id", ("a", "b", "c")))
    assert tied.by_ood == 2 and tied.ood_accuracy[2] == tied.ood_accuracy[4]

    run = {"arm": "cot", "seed": 1, "evals": {"id": per_step({2: "11", 4: "10"}),
                                             "small": per_step({2: "00", 4: "11"}),
                                             "big": per_step({2: "11111111", 4: "01010100"})}}
    spec = SelectionSpec("id", ("small", "big"))
    [seed] = seed_selections([run], spec)
    assert (seed.by_id, seed.by_ood) == (2, 4) and seed.ood_cost == pytest.approx((1.0 + 3 / 8) / 2 - 0.5)
    d, low, high = paired_over_sets({"small": ["11"], "big": ["01010100"]}, {"small": ["00"], "big": ["11111111"]})
    assert d == pytest.approx(seed.ood_cost) and low < d < high
    assert f"{100 * seed.ood_cost:.1f} [" in selection_markdown([seed], spec)


def test_the_selection_curve_takes_each_arms_own_checkpoints():
    from cotdistill.experiment_selection import seed_selections, selection_markdown
    from cotdistill.experiments import SelectionSpec

    runs = [{"arm": arm, "seed": 1, "evals": {"id": per_step({s: "10" for s in steps}),
                                              "ood": per_step({s: "01" for s in steps})}}
            for arm, steps in (("a", (2, 4)), ("b", (3, 6)))]
    spec = SelectionSpec("id", ("ood",))
    text = selection_markdown(seed_selections(runs, spec), spec)
    assert "| a | 2 |" in text and "| b | 3 |" in text and "| a | 3 |" not in text


def test_a_report_with_a_selection_adds_its_table_and_plot(tmp_path):
    body = selection_experiment(tmp_path)
    exp = load_experiment(write_experiment(tmp_path, body))
    store = ResultStore(exp.results_file, exp.name)
    for seed in (1, 2):
        runner = FakeCheckpointLaunches()
        run = resolve_run(exp, "cot", seed)
        store.add({"arm": "cot", "seed": seed, "fingerprint": run.fingerprint, "evals": runner(run)})
    markdown, _ = write_report(exp, store)
    text = markdown.read_text(encoding="utf-8")
    assert "## Checkpoint selection: id (ID) vs more-steps (OOD)" in text
    assert (exp.output_dir / "selection.png").stat().st_size > 1000


@pytest.mark.parametrize("correct", [0, 300])
def test_an_arm_that_got_none_or_every_problem_right_is_reported_and_plotted(tmp_path, correct):
    """At p = 0 the interval's lower end came out 8.7e-19 above the mean and matplotlib refused the error bar."""
    low, high = wilson_interval(correct / 300, 300)
    assert low <= correct / 300 <= high and (low == 0.0 if correct == 0 else high == 1.0)
    outcome = "1" * correct + "0" * (300 - correct)
    runs = [{"arm": "a", "seed": s, "evals": {"x": {"correct": correct, "total": 300, "per_problem": outcome}}}
            for s in (1, 2)]
    from cotdistill.experiments import plot_summaries

    assert plot_summaries(summarize(runs), tmp_path / "r.png").stat().st_size > 1000
