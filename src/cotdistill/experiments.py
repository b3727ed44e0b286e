"""Experiments as data: named arms (a recipe, overrides, evaluations), N seeds each, one results file, a report.

An experiment is a YAML file (``recipes/experiments/<name>.yaml``)::

    description: free text
    seeds: 3                    # seeds per arm (default 3): first_seed, first_seed + 1, ...
    first_seed: 1               # (default 1)
    output_dir: runs/experiments/<name>   # (default: runs/experiments/<file stem>)
    min_eval_problems: 300      # an evaluation set smaller than this is refused (0: no check)
    baseline: cot               # the arm the others are compared with (default: the first)
    init:                       # optional: one tiny initialisation per seed, shared by every arm
      family: gpt2              #   a student family (cotdistill.families)
      recipe: recipes/experiment/socratic.yaml   # its texts train the tokenizer, model.tiny sets the size
      overrides: {data.per_problem: true}
    prepare:                    # optional: made once, before any arm, and shared by every seed (e.g. a teacher)
      - {name: teacher, train: recipes/demo-gpt2-synthetic.yaml}            # RUN_ROOT/prepare/teacher
      - {name: teacher-data, build_data: recipes/data/synthetic-demo-teacher.yaml,
         overrides: {teacher.model: "{prepare:teacher}/final"}}          # RUN_ROOT/prepare/teacher-data
    overrides: {data.synthetic.eval_size: 300}   # applied to every arm, before the arm's own
    evals: [{name: held-out}]   # default evaluations of every arm
    arms:
      cot:
        recipe: recipes/experiment/cot.yaml
        overrides: {train.max_steps: 1800}
        evals:                  # each evaluation is its own result column
          - {name: held-out}                    # the training run's own end-of-training evaluation
          - {name: few-shot, dataset: held-out, spec: {strategy: few_shot_cot, k_shot: 4}}

An evaluation without ``spec`` is read from what training wrote at its end (``RUN/eval/<dataset>/``; ``dataset``
is ``held-out``, the default, or one of the run's ``eval.datasets``). One with ``spec`` (keys of
``cotdistill.config.EvalSpec``) is run afterwards by ``cotdistill eval`` on ``RUN/final``, with the run's own eval
section (generation budget, batch size) as its defaults; ``held-out`` then means the run's synthetic held-out set,
generated with the run's settings.

Prepare steps run in order before the arms, each once: a training run (done when its ``final/`` export exists)
or a data build (done when its manifest says complete), into ``RUN_ROOT/prepare/<name>``. ``{prepare:<name>}`` in
any override (a later step's or an arm's) is replaced by that folder. Every arm's fingerprint includes the steps'.

Seeds: a seed ``s`` sets ``train.seed=s``, which draws the batch order, the format mixing, few-shot demonstrations
and dropout; and the initialisation: with ``init`` the shared tiny model of seed ``s`` is built with seed ``s``
(``RUN_ROOT/init/seed-<s>``, its tokenizer from texts that do not depend on the seed when the init recipe's
texts do not), else an arm whose recipe builds a tiny model (``model.make_tiny``) builds its own per seed
(``RUN_ROOT/models/<arm>/seed-<s>``, weights from ``train.seed``). A pretrained student keeps its weights: only
the data order, mixing and dropout change.

Results: ``RUN_ROOT/results.json`` gets one entry per finished (arm, seed), written whole (temporary file, then
``os.replace``) under a lock, so a harness killed at any moment leaves a valid file and a rerun does only the
(arm, seed) pairs missing from it. A pair's run folder left half-done by a kill is resumed by the trainer from its
newest complete checkpoint (exact resume, so the result equals an uninterrupted run's); a finished training
whose results were not yet recorded is not trained again. Each entry carries a fingerprint of the resolved config
and evaluations; a stored entry or run folder whose fingerprint differs from the experiment's now is refused.

Statistics (``summarize``): per arm and evaluation, the per-seed accuracies, their mean and sample standard
deviation (n - 1), and a 95% Wilson score interval over the evaluation problems for the mean accuracy::

    p = mean accuracy over seeds, n = problems in the evaluation set, z = 1.959964
    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

n is the number of problems, not seeds x problems: the seeds answer the same problems, so pooling them would
count each problem several times. (Averaging over seeds can only shrink the per-problem variance below
p(1 - p), so the interval is slightly conservative.) At n = 300 its half-width is at most 5.6 points.
``paired_difference`` compares two arms on the same problems: d_i = (mean over seeds of arm A's correctness on
problem i) - (the same for arm B); the difference is mean(d), its interval mean(d) +- z * sd(d) / sqrt(n).

An accuracy alone does not say whether a model reasons: one that gives the same answer to every problem scores the
share of problems with that gold answer. The report therefore states, per evaluation, the best a constant answer
scores (the most common gold answer's share) and names every run whose most common answer covers at least half its
problems (``COLLAPSE_SHARE``): a collapsed model, whatever its accuracy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cotdistill.config import EvalRunConfig, EvalSpec, RunConfig, eval_config, load_config, to_dict, validate_run
from cotdistill.errors import ConfigError, CotDistillError
from cotdistill.run_folder import RunFolder

DEFAULT_SEEDS = 3
MIN_EVAL_PROBLEMS = 300
HELD_OUT = "held-out"  # the training run's synthetic held-out set (cotdistill.train.HELD_OUT)
Z95 = 1.959963984540054
RESULTS = "results.json"
RUN_MARK = "experiment_run.json"  # in a run folder: which experiment arm and seed made it, and its fingerprint

_TOP_KEYS = ("description", "name", "seeds", "first_seed", "output_dir", "min_eval_problems", "baseline", "init",
             "prepare", "overrides", "evals", "arms", "selection")
_PREPARE_KEYS = ("name", "train", "build_data", "overrides")
PREPARE_KINDS = ("train", "build_data")
_ARM_KEYS = ("recipe", "overrides", "evals", "description")
_EVAL_KEYS = ("name", "dataset", "spec", "solver_arm", "checkpoints")
_SELECTION_KEYS = ("in_distribution", "out_of_distribution")
_INIT_KEYS = ("family", "recipe", "overrides")
_SPEC_KEYS = tuple(f.name for f in dataclasses.fields(EvalSpec))


class ExperimentError(CotDistillError):
    """An experiment file is malformed, or its results do not match it; the message names the file and key."""


# ---------------------------------------------------------------------------------------------------------
# The experiment file


@dataclass(frozen=True)
class EvalEntry:
    """One evaluation of an arm: a result column."""

    name: str
    dataset: str = HELD_OUT
    spec: dict[str, Any] = field(default_factory=dict)  # EvalSpec keys; empty: read the training run's own eval
    solver_arm: str = ""  # two models (Socratic): this arm's model asks, that arm's model of the same seed answers
    checkpoints: bool = False  # every saved checkpoint evaluated (cotdistill eval-checkpoints), not final/ alone

    @property
    def from_training(self) -> bool:
        return not self.spec


@dataclass(frozen=True)
class InitSpec:
    family: str
    recipe: str
    overrides: list[str]


@dataclass(frozen=True)
class PrepareStep:
    """Something every arm uses and no seed changes (a teacher to distill, the data it writes), made once."""

    name: str
    kind: str  # train | build_data
    recipe: str
    overrides: list[str]


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: str
    overrides: list[str]
    evals: list[EvalEntry]


@dataclass(frozen=True)
class SelectionSpec:
    """Checkpoint selection (Fu et al.): which checkpoint evaluations are in distribution and which are not."""

    in_distribution: str
    out_of_distribution: tuple[str, ...]


@dataclass
class Experiment:
    name: str
    source: Path
    output_dir: Path
    seeds: list[int]
    arms: dict[str, Arm]
    baseline: str
    min_eval_problems: int = MIN_EVAL_PROBLEMS
    init: InitSpec | None = None
    description: str = ""
    prepare: list[PrepareStep] = field(default_factory=list)
    selection: SelectionSpec | None = None

    @property
    def results_file(self) -> Path:
        return self.output_dir / RESULTS

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.output_dir / arm / f"seed-{seed}"

    def init_dir(self, seed: int) -> Path:
        return self.output_dir / "init" / f"seed-{seed}"

    def model_dir(self, arm: str, seed: int) -> Path:
        return self.output_dir / "models" / arm / f"seed-{seed}"

    def prepare_dir(self, step: str) -> Path:
        return self.output_dir / "prepare" / step

    def substitute(self, overrides: list[str]) -> list[str]:
        """``{prepare:<name>}`` replaced by that step's folder in each override."""
        out = []
        for text in overrides:
            for step in self.prepare:
                text = text.replace(f"{{prepare:{step.name}}}", str(self.prepare_dir(step.name)))
            out.append(text)
        return out


def _fail(source: Path, key: str, message: str) -> ExperimentError:
    return ExperimentError(f"{source}: {key}: {message}")


def _text(value: Any) -> str:
    """A YAML value as command-line text (flow style for mappings and lists)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()


def _override_text(key: str, value: Any) -> str:
    """A YAML value as a dotted ``key=value`` override."""
    return f"{key}={_text(value)}"


def _overrides(source: Path, key: str, value: Any) -> list[str]:
    """A mapping {dotted.key: value} (or a list of key=value strings) as override strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [_override_text(str(k), v) for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise _fail(source, key, f"expected a mapping of dotted config keys to values (e.g. {{train.max_steps: 20}}), "
                             f"got {value!r}")


def _mapping(source: Path, key: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(source, key, f"expected a mapping, got {value!r}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise _fail(source, f"{key}.{unknown[0]}" if key else str(unknown[0]),
                    f"unknown key; valid keys: {', '.join(allowed)}")
    return value


def _int(source: Path, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, key, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _evals(source: Path, key: str, value: Any) -> list[EvalEntry]:
    if not isinstance(value, list) or not value:
        raise _fail(source, key, f"expected a non-empty list of evaluations ({{name: ..., dataset: ..., spec: "
                                 f"{{...}}}}), got {value!r}")
    entries = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        item = _mapping(source, where, item, _EVAL_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise _fail(source, f"{where}.name", f"expected a name without '/', got {name!r}")
        dataset = item.get("dataset", HELD_OUT)
        if not isinstance(dataset, str) or not dataset:
            raise _fail(source, f"{where}.dataset", f"expected a data set name, got {dataset!r}")
        spec = item.get("spec") or {}
        spec = _mapping(source, f"{where}.spec", spec, _SPEC_KEYS)
        if spec:
            try:  # validated as cotdistill eval validates it
                eval_config({"model": "-", "datasets": [_eval_dataset(dataset)], **spec})
            except ConfigError as err:
                raise _fail(source, f"{where}.spec", str(err)) from None
        solver_arm = item.get("solver_arm", "")
        if not isinstance(solver_arm, str):
            raise _fail(source, f"{where}.solver_arm", f"expected an arm name, got {solver_arm!r}")
        if solver_arm and spec.get("strategy") != "socratic":
            raise _fail(source, f"{where}.solver_arm", "a solver from another arm answers a decomposer's "
                                                       "sub-questions: the spec needs strategy: socratic")
        checkpoints = item.get("checkpoints", False)
        if not isinstance(checkpoints, bool):
            raise _fail(source, f"{where}.checkpoints", f"expected true or false, got {checkpoints!r}")
        if checkpoints and (not spec or solver_arm):
            raise _fail(source, f"{where}.checkpoints", "checkpoint evaluations run cotdistill eval-checkpoints on "
                                                        "one run's checkpoints: give a spec and no solver_arm")
        entries.append(EvalEntry(name.strip(), dataset, dict(spec), solver_arm, checkpoints))
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail(source, key, f"evaluation name(s) used twice: {', '.join(twice)}")
    return entries


def _recipe(source: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(source, key, f"expected a recipe path, got {value!r}")
    if not Path(value).is_file():
        raise _fail(source, key, f"recipe not found: {value} (paths are relative to the working directory, the "
                                 "repository root)")
    return value


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every error names the file and the key."""
    source = Path(path)
    if not source.is_file():
        raise ExperimentError(f"experiment file not found: {source}")
    try:
        values = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ExperimentError(f"{source}: not valid YAML: {err}") from None
    values = _mapping(source, "", values if values is not None else {}, _TOP_KEYS)
    name = values.get("name") or source.stem
    if not isinstance(name, str):
        raise _fail(source, "name", f"expected a string, got {name!r}")
    seeds = _int(source, "seeds", values.get("seeds", DEFAULT_SEEDS), 1)
    first_seed = _int(source, "first_seed", values.get("first_seed", 1), 0)
    minimum = _int(source, "min_eval_problems", values.get("min_eval_problems", MIN_EVAL_PROBLEMS), 0)
    output_dir = values.get("output_dir") or f"runs/experiments/{name}"
    if not isinstance(output_dir, str):
        raise _fail(source, "output_dir", f"expected a folder path, got {output_dir!r}")
    common = _overrides(source, "overrides", values.get("overrides"))
    default_evals = _evals(source, "evals", values["evals"]) if "evals" in values else None
    init = None
    if values.get("init") is not None:
        raw = _mapping(source, "init", values["init"], _INIT_KEYS)
        from cotdistill.families import family_names

        family = raw.get("family")
        if family not in family_names():
            raise _fail(source, "init.family", f"{family!r} is not one of: {', '.join(family_names())}")
        init = InitSpec(family, _recipe(source, "init.recipe", raw.get("recipe")),
                        _overrides(source, "init.overrides", raw.get("overrides")))
    prepare = _prepare_steps(source, values.get("prepare"))
    arms_raw = values.get("arms")
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise _fail(source, "arms", f"expected a mapping of arm names to {{recipe, overrides, evals}}, got "
                                    f"{arms_raw!r}")
    arms = {}
    for arm_name, raw in arms_raw.items():
        where = f"arms.{arm_name}"
        if not isinstance(arm_name, str) or not arm_name or "/" in arm_name or "," in arm_name:
            raise _fail(source, where, "an arm name is a non-empty string without '/' or ','")
        raw = _mapping(source, where, raw, _ARM_KEYS)
        evals = _evals(source, f"{where}.evals", raw["evals"]) if "evals" in raw else default_evals
        if evals is None:
            raise _fail(source, f"{where}.evals", "no evaluations: give the arm evals, or evals at the top level")
        arms[arm_name] = Arm(arm_name, _recipe(source, f"{where}.recipe", raw.get("recipe")),
                             common + _overrides(source, f"{where}.overrides", raw.get("overrides")), evals)
    for arm in arms.values():
        for entry in arm.evals:
            key = f"arms.{arm.name}.evals ({entry.name}).solver_arm"
            if entry.solver_arm and entry.solver_arm not in arms:
                raise _fail(source, key, f"{entry.solver_arm!r} is not an arm; arms: {', '.join(arms)}")
            if entry.solver_arm == arm.name or any(e.solver_arm for e in arms.get(entry.solver_arm, arm).evals):
                raise _fail(source, key, f"{entry.solver_arm!r} must be another arm whose own evaluations need no "
                                         "solver arm")
    baseline = values.get("baseline") or next(iter(arms))
    if baseline not in arms:
        raise _fail(source, "baseline", f"{baseline!r} is not an arm; arms: {', '.join(arms)}")
    description = values.get("description") or ""
    named = {step.name for step in prepare}
    for where, overrides in [*((f"prepare ({s.name}).overrides", s.overrides) for s in prepare),
                             *((f"arms.{a.name}.overrides", a.overrides) for a in arms.values())]:
        for text in overrides:
            for ref in _PREPARE_REF.findall(text):
                if ref not in named:
                    raise _fail(source, where, f"{{prepare:{ref}}} names no prepare step; steps: "
                                               f"{', '.join(sorted(named)) or 'none'}")
    return Experiment(name=name, source=source, output_dir=Path(output_dir),
                      seeds=list(range(first_seed, first_seed + seeds)), arms=arms, baseline=baseline,
                      min_eval_problems=minimum, init=init, description=str(description), prepare=prepare,
                      selection=_selection(source, values.get("selection"), arms))


def _selection(source: Path, value: Any, arms: dict[str, Arm]) -> SelectionSpec | None:
    """The ``selection`` key: evaluation names, each an evaluation with ``checkpoints: true`` in some arm."""
    if value is None:
        return None
    raw = _mapping(source, "selection", value, _SELECTION_KEYS)
    in_distribution, ood = raw.get("in_distribution"), raw.get("out_of_distribution")
    if isinstance(ood, str):
        ood = [ood]
    if not isinstance(in_distribution, str) or not isinstance(ood, list) or not ood:
        raise _fail(source, "selection", "expected {in_distribution: <evaluation>, out_of_distribution: "
                                         f"[<evaluation>, ...]}}, got {value!r}")
    per_checkpoint = {e.name for arm in arms.values() for e in arm.evals if e.checkpoints}
    for key, name in [("selection.in_distribution", in_distribution),
                      *((f"selection.out_of_distribution[{i}]", n) for i, n in enumerate(ood))]:
        if name not in per_checkpoint:
            raise _fail(source, key, f"{name!r} is not an evaluation with checkpoints: true; those are: "
                                     f"{', '.join(sorted(per_checkpoint)) or 'none'}")
    if in_distribution in ood:
        raise _fail(source, "selection.out_of_distribution", f"{in_distribution!r} is the in-distribution evaluation")
    return SelectionSpec(in_distribution, tuple(ood))


_PREPARE_REF = re.compile(r"\{prepare:([^}]*)\}")


def _prepare_steps(source: Path, value: Any) -> list[PrepareStep]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(source, "prepare", f"expected a list of steps ({{name: ..., train: RECIPE}} or {{name: ..., "
                                       f"build_data: RECIPE}}), got {value!r}")
    steps: list[PrepareStep] = []
    for i, raw in enumerate(value):
        where = f"prepare[{i}]"
        raw = _mapping(source, where, raw, _PREPARE_KEYS)
        name = raw.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in {s.name for s in steps}:
            raise _fail(source, f"{where}.name", f"expected a new name without '/', got {name!r}")
        kinds = [kind for kind in PREPARE_KINDS if kind in raw]
        if len(kinds) != 1:
            raise _fail(source, where, f"give exactly one of {', '.join(PREPARE_KINDS)} (a recipe)")
        steps.append(PrepareStep(name, kinds[0], _recipe(source, f"{where}.{kinds[0]}", raw[kinds[0]]),
                                 _overrides(source, f"{where}.overrides", raw.get("overrides"))))
    return steps


def find_experiment(name_or_path: str) -> Path:
    """A path as given, or a bare name looked up as recipes/experiments/<name>.yaml."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        return path
    return Path("recipes") / "experiments" / f"{name_or_path}.yaml"


def select_arms(experiment: Experiment, arms: str | Iterable[str] | None) -> list[str]:
    """The arms asked for (``a,b`` or a list; empty: all, in file order); an unknown name is an error."""
    if isinstance(arms, str):
        arms = [a.strip() for a in arms.split(",") if a.strip()]
    chosen = list(arms or [])
    if not chosen:
        return list(experiment.arms)
    unknown = [a for a in chosen if a not in experiment.arms]
    if unknown:
        raise ExperimentError(f"{experiment.source}: no arm named {', '.join(unknown)}; arms: "
                              f"{', '.join(experiment.arms)}")
    needed = [e.solver_arm for a in chosen for e in experiment.arms[a].evals if e.solver_arm]
    return list(dict.fromkeys(needed + chosen))  # an arm whose model another arm's evaluation uses runs first


def select_seeds(experiment: Experiment, count: int | None, only: str = "") -> list[int]:
    """The first ``count`` seeds (None: the experiment's); more than the file names continue the sequence.

    ``only`` ("2,3") names the seeds instead: to add seeds run elsewhere, or rerun some whose results were lost,
    without running the others again.
    """
    if only:
        if count is not None:
            raise ExperimentError("give the number of seeds or the seeds to run (only), not both")
        try:
            seeds = [int(part) for part in only.split(",")]
        except ValueError:
            raise ExperimentError(f"only: expected comma-separated integer seeds like 2,3, got {only!r}") from None
        if len(set(seeds)) != len(seeds):
            raise ExperimentError(f"only: a seed is named twice in {only!r}")
        return seeds
    if count is None:
        return list(experiment.seeds)
    if count < 1:
        raise ExperimentError(f"seeds must be >= 1, got {count}")
    first = experiment.seeds[0]
    return list(range(first, first + count))


# ---------------------------------------------------------------------------------------------------------
# One (arm, seed): its resolved config, folders and fingerprint


@dataclass
class ArmRun:
    experiment: Experiment
    arm: Arm
    seed: int
    overrides: list[str]  # everything after --config RECIPE on the training command line
    config: RunConfig
    run_dir: Path
    init_dir: Path | None
    fingerprint: str

    @property
    def key(self) -> tuple[str, int]:
        return self.arm.name, self.seed


def resolve_run(experiment: Experiment, arm_name: str, seed: int) -> ArmRun:
    """The training command's overrides and the resolved, validated config of ``arm_name`` at ``seed``."""
    arm = experiment.arms[arm_name]
    run_dir = experiment.run_dir(arm_name, seed)
    harness = [f"train.seed={seed}", f"output_dir={run_dir}"]
    init_dir = None
    try:
        recipe_config = load_config(arm.recipe, arm.overrides)
    except ConfigError as err:
        raise ExperimentError(f"{experiment.source}: arms.{arm_name}: {err}") from None
    if experiment.init is not None:
        init_dir = experiment.init_dir(seed)
        harness += [f"model.name_or_path={init_dir}", "model.make_tiny="]
    elif recipe_config.model.make_tiny:
        harness += [f"model.name_or_path={experiment.model_dir(arm_name, seed)}"]
    overrides = experiment.substitute(arm.overrides) + harness
    try:
        config = load_config(arm.recipe, overrides)
        validate_run(config)
    except CotDistillError as err:
        raise ExperimentError(f"{experiment.source}: arms.{arm_name}: {err}") from None
    if any(e.checkpoints for e in arm.evals) and config.checkpoint.every <= 0:
        raise ExperimentError(f"{experiment.source}: arms.{arm_name}: checkpoint evaluations need saved checkpoints; "
                              "set checkpoint.every (and checkpoint.keep_last to keep them all)")
    if any(not e.from_training for e in arm.evals) and not config.checkpoint.export_final:
        raise ExperimentError(f"{experiment.source}: arms.{arm_name}: evaluations with a spec evaluate RUN/final, "
                              "which checkpoint.export_final=false does not write")
    if any(e.from_training for e in arm.evals) and not config.eval.at_end:
        raise ExperimentError(f"{experiment.source}: arms.{arm_name}: evaluations without a spec read the training "
                              "run's end-of-training evaluation, which eval.at_end=false turns off")
    for entry in arm.evals:
        where = f"{experiment.source}: arms.{arm_name}: evaluation {entry.name!r}"
        if entry.dataset == HELD_OUT and config.data.dataset != "synthetic":
            raise ExperimentError(f"{where}: {HELD_OUT} is the synthetic held-out set, which data.dataset="
                                  f"{config.data.dataset} has none of; name the data set to evaluate on")
        if entry.from_training and entry.dataset != HELD_OUT and entry.dataset not in config.eval.datasets:
            raise ExperimentError(f"{where} reads the training run's {entry.dataset!r} evaluation, but the run's "
                                  f"eval.datasets {config.eval.datasets} does not name it; add it there or give the "
                                  "evaluation a spec")
    payload = {"recipe": arm.recipe, "config": changed_from_defaults(to_dict(config), to_dict(RunConfig())),
               "evals": [_eval_fingerprint(e) for e in arm.evals],
               "init": dataclasses.asdict(experiment.init) if experiment.init else None}
    if experiment.prepare:  # the teacher or data every arm is made from
        payload["prepare"] = {step.name: resolve_prepare(experiment, step).fingerprint for step in experiment.prepare}
    solvers = sorted({e.solver_arm for e in arm.evals if e.solver_arm})
    if solvers:  # another arm's model is part of this arm's result
        payload["solver_arms"] = {name: resolve_run(experiment, name, seed).fingerprint for name in solvers}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return ArmRun(experiment, arm, seed, overrides, config, run_dir, init_dir, digest)


# EvalEntry fields added after results were stored: left out of the fingerprint at their default, so the stored
# results of experiments that do not use them stay current.
_LATER_EVAL_FIELDS = {"checkpoints": False}


def _eval_fingerprint(entry: EvalEntry) -> dict[str, Any]:
    return {key: value for key, value in dataclasses.asdict(entry).items()
            if key not in _LATER_EVAL_FIELDS or value != _LATER_EVAL_FIELDS[key]}


def changed_from_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The leaves of a resolved config that differ from the defaults (what a fingerprint hashes).

    A configuration is what a recipe and its overrides set; the defaults are code, like the rest of the package,
    and no code is fingerprinted. Hashing the whole resolved config made every new config key (added with a
    default that keeps runs as they were) invalidate every stored result.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        base = defaults.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(base, dict):
            inner = changed_from_defaults(value, base)
            if inner:
                out[key] = inner
        elif value != base:
            out[key] = value
    return out


_MISSING = object()


@dataclass
class PreparedStep:
    step: PrepareStep
    folder: Path
    overrides: list[str]  # everything after --config RECIPE
    fingerprint: str

    def done(self) -> bool:
        """A training's export exists, or a data build's manifest says it is complete."""
        if self.step.kind == "train":
            return (RunFolder(self.folder).final / "config.json").is_file()
        manifest = self.folder / "manifest.json"
        try:
            return bool(json.loads(manifest.read_text(encoding="utf-8")).get("complete"))
        except (OSError, ValueError):
            return False


def resolve_prepare(experiment: Experiment, step: PrepareStep) -> PreparedStep:
    """A prepare step's command-line overrides (its folder set) and fingerprint, validated as its launcher would."""
    from cotdistill.config import BuildConfig, load_build_config, validate_build

    folder = experiment.prepare_dir(step.name)
    overrides = experiment.substitute(step.overrides) + [f"output_dir={folder}"]
    try:
        if step.kind == "train":
            if load_config(step.recipe, overrides).model.make_tiny:  # its own tiny model, not the recipe's path
                overrides.append(f"model.name_or_path={experiment.output_dir / 'models' / 'prepare' / step.name}")
            config: Any = load_config(step.recipe, overrides)
            validate_run(config)
            defaults: Any = RunConfig()
        else:
            config = load_build_config(step.recipe, overrides)
            validate_build(config)
            defaults = BuildConfig()
    except CotDistillError as err:
        raise ExperimentError(f"{experiment.source}: prepare ({step.name}): {err}") from None
    payload = {"kind": step.kind, "recipe": step.recipe,
               "config": changed_from_defaults(to_dict(config), to_dict(defaults))}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return PreparedStep(step, folder, overrides, digest)


def _eval_dataset(dataset: str) -> str:
    """The name ``cotdistill eval`` knows a data set by (the run's held-out set is its ``synthetic``)."""
    return "synthetic" if dataset == HELD_OUT else dataset


def eval_set_size(run: ArmRun, entry: EvalEntry) -> int:
    """Problems the evaluation ``entry`` of ``run`` scores, from the config and data alone (no model)."""
    config = run.config
    limit = int(eval_options(config, entry).get("limit", 0)) if entry.spec else config.eval.limit
    if entry.dataset == HELD_OUT:
        size = config.data.synthetic.eval_size
        return min(size, limit) if limit else size
    from cotdistill.eval_sets import resolve_eval_sets

    request = EvalRunConfig(model="-", datasets=[entry.dataset], data_dir=config.data.data_dir, limit=limit,
                            synthetic=config.data.synthetic)
    return sum(len(s.problems) for s in resolve_eval_sets(request))


def eval_options(config: RunConfig, entry: EvalEntry) -> dict[str, Any]:
    """The ``cotdistill eval`` options of an evaluation with a spec: the run's own eval section where it differs
    from the defaults (generation budget, batch size, ...), then the spec's keys."""
    defaults = EvalSpec()
    base = {key: getattr(config.eval, key) for key in _SPEC_KEYS if getattr(config.eval, key) != getattr(defaults, key)}
    return {**base, **entry.spec}


def check_eval_sizes(runs: Iterable[ArmRun], minimum: int,
                     sizer: Callable[[ArmRun, EvalEntry], int] = eval_set_size) -> list[str]:
    """One line per (arm, evaluation) whose set holds fewer than ``minimum`` problems (each arm checked once)."""
    problems, seen = [], set()
    for run in runs:
        for entry in run.arm.evals:
            if (run.arm.name, entry.name) in seen or not minimum:
                continue
            seen.add((run.arm.name, entry.name))
            size = sizer(run, entry)
            if size < minimum:
                problems.append(f"arm {run.arm.name!r}, evaluation {entry.name!r} ({entry.dataset}): {size} problems, "
                                f"fewer than min_eval_problems={minimum} (the 95% interval would be wider than "
                                f"+-{100 * wilson_half_width(0.5, max(minimum, 1)):.1f} points)")
    return problems


# ---------------------------------------------------------------------------------------------------------
# The results file


class ResultStore:
    """``results.json``: {"experiment", "source", "runs": [entry, ...]}, one entry per finished (arm, seed)."""

    def __init__(self, path: str | Path, experiment: str = "", source: str = "") -> None:
        self.path = Path(path)
        self.experiment = experiment
        self.source = source

    def load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"experiment": self.experiment, "source": self.source, "runs": []}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ExperimentError(f"{self.path}: not valid JSON ({err}); it is only ever replaced whole, so this "
                                  "is not a killed harness's doing: fix or remove it") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise ExperimentError(f"{self.path}: expected {{\"runs\": [...]}}")
        return data

    def runs(self) -> list[dict[str, Any]]:
        return self.load()["runs"]

    def done(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {(r["arm"], int(r["seed"])): r for r in self.runs()}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, entry: dict[str, Any]) -> None:
        """Append (or replace) the entry of (arm, seed), writing the whole file anew and renaming it into place."""
        with self._locked():
            data = self.load()
            data["experiment"], data["source"] = self.experiment or data.get("experiment"), \
                self.source or data.get("source")
            data["runs"] = [r for r in data["runs"] if (r["arm"], r["seed"]) != (entry["arm"], entry["seed"])]
            data["runs"].append(entry)
            tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)


# ---------------------------------------------------------------------------------------------------------
# Running


Runner = Callable[[ArmRun], dict[str, dict[str, Any]]]  # an (arm, seed) -> {eval name: eval result}


def plan_runs(experiment: Experiment, arms: list[str], seeds: list[int]) -> list[ArmRun]:
    return [resolve_run(experiment, arm, seed) for arm in arms for seed in seeds]


def run_experiment(experiment: Experiment, arms: list[str], seeds: list[int], runner: Runner,
                   store: ResultStore | None = None, allow_small_eval: bool = False,
                   sizer: Callable[[ArmRun, EvalEntry], int] = eval_set_size,
                   log: Callable[[str], None] = print) -> list[tuple[str, int]]:
    """Run every (arm, seed) missing from the results file, one after another, appending each as it finishes.

    Returns the pairs run now. Every arm is resolved and its evaluation sets checked before anything runs; a
    stored result whose fingerprint is not the experiment's now is refused.
    """
    store = store or ResultStore(experiment.results_file, experiment.name, str(experiment.source))
    runs = plan_runs(experiment, arms, seeds)
    small = check_eval_sizes(runs, experiment.min_eval_problems, sizer)
    if small and not allow_small_eval:
        raise ExperimentError(f"{experiment.source}: evaluation sets too small:\n  " + "\n  ".join(small)
                              + "\n(raise the set's size, e.g. data.synthetic.eval_size, or lower min_eval_problems)")
    for line in small:
        log(f"warning: {line}")
    done = store.done()
    stale = [run for run in runs if run.key in done and done[run.key].get("fingerprint") != run.fingerprint]
    if stale:
        names = ", ".join(f"{r.arm.name} seed {r.seed}" for r in stale)
        raise ExperimentError(f"{store.path} holds results of {names} from another configuration than "
                              f"{experiment.source} gives now; remove those entries (and their run folders) or use "
                              "another output_dir")
    todo = [run for run in runs if run.key not in done]
    log(f"experiment {experiment.name}: {len(runs) - len(todo)} of {len(runs)} runs already in {store.path}; "
        f"{len(todo)} to run")
    prepare = getattr(runner, "prepare", None)
    if todo and experiment.prepare and prepare is not None:
        prepare(experiment)
    ran = []
    for run in todo:
        started = time.monotonic()
        earlier = earlier_attempt(run.run_dir)
        log(f"== {run.arm.name} seed {run.seed} -> {run.run_dir}" + (f" ({earlier})" if earlier else ""))
        evals = runner(run)
        missing = [e.name for e in run.arm.evals if e.name not in evals]
        if missing:
            raise ExperimentError(f"{run.arm.name} seed {run.seed}: no result for evaluation(s) {', '.join(missing)}")
        entry = {"arm": run.arm.name, "seed": run.seed, "fingerprint": run.fingerprint, "run_dir": str(run.run_dir),
                 "minutes": round((time.monotonic() - started) / 60, 2),
                 "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "evals": evals}
        if earlier:
            entry["earlier_attempt"] = earlier  # minutes then counts this attempt only
        store.add(entry)
        ran.append(run.key)
        timing = f"{entry['minutes']} min" + (", this attempt only" if earlier else "")
        log(f"   {run.arm.name} seed {run.seed}: " + ", ".join(
            f"{name} {e['correct']}/{e['total']}{collapse_note(e)}" for name, e in evals.items()) + f" ({timing})")
    return ran


def collapsed_answer(profile: dict[str, Any] | None) -> str:
    """"'1' for 300 of 300" when an answer profile's most common answer covers ``COLLAPSE_SHARE`` of its problems,
    else ''."""
    if not profile or not profile["total"] or profile["top_count"] < COLLAPSE_SHARE * profile["total"]:
        return ""
    return f"{profile['top']!r} for {profile['top_count']} of {profile['total']}"


def collapse_note(result: dict[str, Any]) -> str:
    """The per-run log line's warning for a collapsed evaluation ('' for any other)."""
    answer = collapsed_answer(result.get("answers"))
    return f" (collapsed: {answer})" if answer else ""


def earlier_attempt(run_dir: Path) -> str | None:
    """What an interrupted earlier attempt left in a run's folder (a finished training, or its newest complete
    checkpoint), or None. A run that resumes from it takes less time than a whole one, so its ``minutes`` (this
    attempt's wall time) must not be read as the run's."""
    from cotdistill.checkpoints import latest_checkpoint  # torch; the harness needs it only here

    if RunFolder(run_dir).final.exists():
        return "its training finished in an earlier attempt"
    newest = latest_checkpoint(run_dir)
    return f"resumes from the step-{newest.step} checkpoint of an earlier attempt" if newest else None


def read_eval(folder: Path) -> dict[str, Any]:
    """One evaluation's result from its folder (metrics.json and predictions.jsonl): counts and, per problem in
    index order, 1 (correct) or 0, as a string."""
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        raise ExperimentError(f"no evaluation result at {metrics_file}")
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    rows.sort(key=lambda row: row["index"])
    ids = hashlib.sha256("\n".join(str(row["id"]) for row in rows).encode()).hexdigest()[:16]
    # ids alone do not name a problem set: a generator run with other settings reuses ids for other problems
    texts = hashlib.sha256(json.dumps([[row["id"], row.get("question"), row.get("gold")] for row in rows])
                           .encode()).hexdigest()[:16]
    outcome = "".join("1" if row["correct"] else "0" for row in rows)
    if len(rows) != metrics["total"] or outcome.count("1") != metrics["correct"]:
        raise ExperimentError(f"{folder}: predictions.jsonl disagrees with metrics.json")
    return {"correct": metrics["correct"], "total": metrics["total"], "accuracy": metrics["accuracy"],
            "strategy": metrics.get("strategy"), "protocol": metrics.get("protocol"), "problems_sha": ids,
            "problems_text_sha": texts, "per_problem": outcome, "answers": answer_profile(rows),
            "folder": str(folder)}


COLLAPSE_SHARE = 0.5  # a run whose most common answer covers this share of its problems is reported as collapsed
NO_ANSWER = "(none)"  # what answer_profile calls a prediction nothing was extracted from


def answer_profile(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The most common extracted answer and its count, and the most common gold answer and its count: what a
    model that always answers the same would score here."""
    answers = Counter(NO_ANSWER if row.get("extracted") in (None, "") else str(row["extracted"]) for row in rows)
    golds = Counter(str(row.get("gold")) for row in rows)
    (top, top_count), = answers.most_common(1) or [("", 0)]  # no rows: a profile of total 0, never collapsed
    (gold, gold_count), = golds.most_common(1) or [("", 0)]
    return {"top": top, "top_count": top_count, "gold_top": gold, "gold_top_count": gold_count, "total": len(rows)}


def stored_answer_profile(result: dict[str, Any]) -> dict[str, Any] | None:
    """A stored evaluation's answer profile; results stored before profiles existed are read from their folder's
    predictions when it is still there (None otherwise)."""
    if "answers" in result:
        return result["answers"]
    predictions = Path(result.get("folder", "")) / "predictions.jsonl"
    if not result.get("folder") or not predictions.is_file():
        return None
    return answer_profile([json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()
                           if line.strip()])


def answer_notes(runs: list[dict[str, Any]]) -> list[str]:
    """Report lines: per evaluation the best a constant answer scores, then every collapsed run (its most common
    answer for at least ``COLLAPSE_SHARE`` of its problems), by arm and seed."""
    floors: dict[str, dict[str, Any]] = {}
    collapsed = []
    for entry in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        for name, result in entry["evals"].items():
            profile = stored_answer_profile(result)
            if profile is None or not profile["total"]:
                continue
            floors.setdefault(name, profile)
            answer = collapsed_answer(profile)
            if answer:
                collapsed.append(f"{entry['arm']} seed {entry['seed']} on {name} ({answer})")
    lines = [f"A constant answer scores at most {_pct(p['gold_top_count'] / p['total'])}% on {name} (gold answer "
             f"{p['gold_top']!r} for {p['gold_top_count']} of {p['total']} problems)." for name, p in floors.items()]
    if collapsed:
        lines.append(f"Collapsed: one answer for at least {COLLAPSE_SHARE:.0%} of the problems, whatever the "
                     f"accuracy says: {'; '.join(collapsed)}.")
    return lines


def read_checkpoint_evals(out: Path, dataset_folder: str) -> dict[str, Any]:
    """An eval-checkpoints result: every step's evaluation under ``per_step`` (step as text), and the last
    checkpoint's at the top level, so the result also reads as the run's final evaluation."""
    steps = sorted(int(p.name.removeprefix("step-")) for p in out.glob("step-*") if (p / dataset_folder).is_dir())
    if not steps:
        raise ExperimentError(f"no checkpoint evaluation under {out}/step-*/{dataset_folder}")
    per_step = {str(step): read_eval(out / f"step-{step:06d}" / dataset_folder) for step in steps}
    return {**per_step[str(steps[-1])], "per_step": per_step}


INIT_MARK = ".experiment_init.json"  # in an init folder: the init spec and seed it was built with
INIT_STAGING = ".building"  # suffix of the sibling an init is built and marked in before it takes its name


def build_init(init: InitSpec, seed: int, out_dir: Path, log: Callable[[str], None] = print) -> Path:
    """The shared tiny initialisation of ``seed``: built once, atomically, and kept only while the experiment's
    ``init`` (family, recipe, overrides) is the one it was built with; an init of another family or size would
    otherwise start every arm of the seed from a model nobody asked for."""
    record = {"family": init.family, "recipe": init.recipe, "overrides": list(init.overrides), "seed": seed}
    mark = out_dir / INIT_MARK
    if out_dir.exists():
        try:
            found = json.loads(mark.read_text(encoding="utf-8")) if mark.is_file() else None
        except ValueError:
            found = None
        if found == record:
            return out_dir
        what = "an older harness or by hand (unmarked)" if found is None else f"another init ({found})"
        raise ExperimentError(f"{out_dir} holds a model built by {what}, not by this experiment's init {record}; "
                              "delete the folder to build it anew (every arm of this seed then starts from it)")
    from cotdistill.run_data import load_run_problems, run_examples
    from cotdistill.tiny import build_tiny_model

    config = load_config(init.recipe, init.overrides + [f"train.seed={seed}"])
    problems, _ = load_run_problems(config.data)
    texts = [e.source + e.target for e in run_examples(config, problems)]
    log(f"   init: tiny {init.family} for seed {seed} at {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Model and mark appear together: built and marked in a staging sibling, then renamed. A harness killed in
    # between leaves only the staging folder (removed by the next build), never an unmarked init.
    staging = out_dir.with_name(out_dir.name + INIT_STAGING)
    for leftover in (staging, *out_dir.parent.glob(staging.name + ".tmp-*")):  # a killed build's
        shutil.rmtree(leftover, ignore_errors=True)
    build_tiny_model(init.family, staging, texts, config.model.tiny, seed=seed)
    (staging / INIT_MARK).write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(staging, out_dir)
    return out_dir


def _claim(folder: Path, fingerprint: str, what: str, record: dict[str, Any], mark_name: str = RUN_MARK) -> None:
    """Mark ``folder`` as made by this configuration (``mark_name``); refuse one made by another, or by hand."""
    mark = folder / mark_name
    if mark.is_file():
        found = json.loads(mark.read_text(encoding="utf-8"))
        if found.get("fingerprint") != fingerprint:
            raise ExperimentError(f"{folder} was made by another configuration of {what} (fingerprint "
                                  f"{found.get('fingerprint')}, now {fingerprint}); delete the folder to make it anew")
        return
    if folder.exists() and any(folder.iterdir()):
        raise ExperimentError(f"{folder} exists and was not made by this harness; delete it or choose another "
                              "output_dir")
    folder.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({**record, "fingerprint": fingerprint}) + "\n", encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LaunchRunner:
    """Trains an (arm, seed) with ``launchers/launch.py`` (DeepSpeed) on ``ranks`` ranks, then runs its evaluations
    with a spec through ``launchers/evaluate.py``; reads every evaluation's predictions."""

    def __init__(self, ranks: int = 2, repo: str | Path = ".", python: str = sys.executable,
                 log: Callable[[str], None] = print) -> None:
        self.ranks = ranks
        self.repo = Path(repo)
        self.python = python
        self.log = log

    def _launch(self, script: str, args: list[str]) -> None:
        self._run([self.python, str(self.repo / "launchers" / "launch.py"), "--num_gpus", str(self.ranks),
                   "--master_port", str(_free_port()), str(self.repo / "launchers" / script), *args], script)

    def _mark(self, run: ArmRun) -> None:
        """Claim the run folder for this (arm, seed, fingerprint); refuse one made by another configuration."""
        _claim(run.run_dir, run.fingerprint, f"{run.arm.name} seed {run.seed}",
               {"experiment": run.experiment.name, "arm": run.arm.name, "seed": run.seed})

    def prepare(self, experiment: Experiment) -> None:
        """Make every prepare step not made yet, in order (a training on ``ranks`` ranks, or a data build)."""
        for step in experiment.prepare:
            prepared = resolve_prepare(experiment, step)
            # Claimed before anything is reused: a folder made by another configuration is refused, made or not.
            # A data build's folder holds the builder's files only (it refuses others): the mark is hidden there.
            _claim(prepared.folder, prepared.fingerprint, f"prepare step {step.name}",
                   {"experiment": experiment.name, "prepare": step.name},
                   RUN_MARK if step.kind == "train" else "." + RUN_MARK)
            if prepared.done():
                self.log(f"   prepare {step.name}: {prepared.folder} was made before")
                continue
            self.log(f"== prepare {step.name} -> {prepared.folder}")
            if step.kind == "train":
                self._launch("train.py", ["--config", step.recipe, *prepared.overrides])
            else:
                self._run([self.python, str(self.repo / "launchers" / "build_data.py"), "--config", step.recipe,
                           *prepared.overrides], "build_data.py")
            if not prepared.done():
                raise ExperimentError(f"prepare {step.name}: {prepared.folder} is not complete after its command "
                                      "(stopped by a signal?); run the harness again to finish it")

    def _run(self, cmd: list[str], what: str) -> None:
        self.log("+ " + " ".join(cmd))
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise ExperimentError(f"{what} exited with status {proc.returncode}: {' '.join(cmd)}")

    def _trained(self, run: ArmRun) -> bool:
        """Training finished and wrote every evaluation the arm reads from it (each metrics.json is written
        after its predictions)."""
        folder = RunFolder(run.run_dir)
        from cotdistill.eval_sets import folder_name

        exported = folder.final.is_dir() or not run.config.checkpoint.export_final
        return exported and all((folder.eval_dir() / folder_name(e.dataset) / "metrics.json").is_file()
                                for e in run.arm.evals if e.from_training)

    def _checkpoint_evals(self, run: ArmRun) -> dict[str, dict[str, Any]]:
        """The ``checkpoints: true`` evaluations, one eval-checkpoints launch per set of options: evaluations that
        differ only in their data set (in- and out-of-distribution) load each checkpoint once, for all of them."""
        from cotdistill.eval_sets import folder_name

        groups: dict[tuple[str, ...], list[EvalEntry]] = {}
        for entry in run.arm.evals:
            if entry.checkpoints:
                flags = tuple(f"--{key}={_text(value)}" for key, value in eval_options(run.config, entry).items())
                groups.setdefault(flags, []).append(entry)
        results = {}
        for flags, entries in groups.items():
            out = run.run_dir / "experiment_eval" / "+".join(e.name for e in entries)
            shutil.rmtree(out, ignore_errors=True)  # a half-written evaluation is redone whole
            datasets = list(dict.fromkeys(_eval_dataset(e.dataset) for e in entries))
            self._launch("eval_checkpoints.py", [str(run.run_dir), f"--datasets={','.join(datasets)}",
                                                 f"--output_dir={out}", *flags])
            for entry in entries:
                results[entry.name] = read_checkpoint_evals(out, folder_name(_eval_dataset(entry.dataset)))
        return results

    def __call__(self, run: ArmRun) -> dict[str, dict[str, Any]]:
        from cotdistill.eval_sets import folder_name

        if run.init_dir is not None:
            build_init(run.experiment.init, run.seed, run.init_dir, self.log)
        self._mark(run)
        folder = RunFolder(run.run_dir)
        if self._trained(run):
            self.log(f"   {run.run_dir} finished training before: not trained again")
        else:  # a folder with checkpoints is resumed by the trainer from its newest complete one
            self._launch("train.py", ["--config", run.arm.recipe, *run.overrides])
            if not self._trained(run):
                raise ExperimentError(f"{run.run_dir}: training ended before its last step (stopped by a signal?); "
                                      "run the harness again to resume it")
        results = self._checkpoint_evals(run)
        for entry in run.arm.evals:
            if entry.from_training:
                results[entry.name] = read_eval(folder.eval_dir() / folder_name(entry.dataset))
                continue
            if entry.checkpoints:
                continue
            out = run.run_dir / "experiment_eval" / entry.name
            shutil.rmtree(out, ignore_errors=True)  # a half-written evaluation is redone whole
            dataset = _eval_dataset(entry.dataset)
            flags = [f"--{key}={_text(value)}" for key, value in eval_options(run.config, entry).items()]
            if entry.solver_arm:
                flags.append(f"--solver={RunFolder(run.experiment.run_dir(entry.solver_arm, run.seed)).final}")
            self._launch("evaluate.py", [str(folder.final), f"--datasets={dataset}", f"--output_dir={out}", *flags])
            results[entry.name] = read_eval(out / folder_name(dataset))
        return results


# ---------------------------------------------------------------------------------------------------------
# Statistics


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def sample_sd(values: list[float]) -> float | None:
    """Standard deviation with n - 1 in the denominator; None for fewer than two values."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials."""
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # The interval contains p; at p = 0 or 1 rounding put its end a hair past p (8.7e-19 above 0 at n = 300),
    # which the report's error bars then drew as a negative length.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def wilson_half_width(p: float, n: int, z: float = Z95) -> float:
    low, high = wilson_interval(p, n, z)
    return (high - low) / 2


def per_problem_means(outcomes: list[str]) -> list[float] | None:
    """Per problem, the fraction of seeds that got it right (None when the seeds' sets differ in size)."""
    if not outcomes or len({len(o) for o in outcomes}) != 1:
        return None
    return [sum(o[i] == "1" for o in outcomes) / len(outcomes) for i in range(len(outcomes[0]))]


def paired_difference(a: list[str], b: list[str], z: float = Z95) -> tuple[float, float, float]:
    """Arm A minus arm B on the same problems: (difference of mean accuracies, low, high), a normal interval over
    the per-problem differences of the seed-averaged correctness. ``a``, ``b``: per seed, '0'/'1' per problem."""
    pa, pb = per_problem_means(a), per_problem_means(b)
    if pa is None or pb is None or len(pa) != len(pb) or not pa:
        raise ExperimentError("a paired comparison needs both arms scored on the same problems")
    diffs = [x - y for x, y in zip(pa, pb, strict=True)]
    d = mean(diffs)
    sd = sample_sd(diffs) or 0.0
    half = z * sd / math.sqrt(len(diffs))
    return d, d - half, d + half


@dataclass
class EvalSummary:
    arm: str
    eval: str
    seeds: list[int]
    accuracies: list[float]
    mean: float
    sd: float | None
    low: float
    high: float
    problems: int
    strategy: str | None = None


def summarize(runs: list[dict[str, Any]], arm_order: list[str] | None = None) -> list[EvalSummary]:
    """Per (arm, evaluation) over the seeds stored: accuracies, mean, sample sd, 95% Wilson interval over problems."""
    grouped: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for entry in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        for name, result in entry["evals"].items():  # an arm's evaluations in the order its file gives
            grouped.setdefault((entry["arm"], name), []).append((entry["seed"], result))
    order = {arm: i for i, arm in enumerate(arm_order or [])}
    summaries = []
    for (arm, name), items in sorted(grouped.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][0])):
        accuracies = [r["correct"] / r["total"] if r["total"] else 0.0 for _, r in items]
        problems = min(r["total"] for _, r in items)
        m = mean(accuracies)
        low, high = wilson_interval(m, problems)
        summaries.append(EvalSummary(arm, name, [s for s, _ in items], accuracies, m, sample_sd(accuracies), low, high,
                                     problems, items[0][1].get("strategy")))
    return summaries


def comparisons(runs: list[dict[str, Any]], baseline: str) -> list[tuple[str, str, float, float, float]]:
    """(arm, evaluation, difference, low, high) of every other arm against ``baseline`` on each evaluation both have
    on the same problems."""
    outcomes: dict[tuple[str, str], list[str]] = {}
    problem_sets: dict[tuple[str, str], set[str]] = {}
    texts: dict[tuple[str, str], set[str]] = {}  # results stored before problems_text_sha existed have none
    for entry in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        for name, result in entry["evals"].items():
            outcomes.setdefault((entry["arm"], name), []).append(result.get("per_problem", ""))
            problem_sets.setdefault((entry["arm"], name), set()).add(result.get("problems_sha", ""))
            if result.get("problems_text_sha"):
                texts.setdefault((entry["arm"], name), set()).add(result["problems_text_sha"])
    found = []
    for (arm, name), outcome in outcomes.items():
        base = (baseline, name)
        if arm == baseline or base not in outcomes:
            continue
        if len(problem_sets[base] | problem_sets[(arm, name)]) != 1:
            continue
        if len(texts.get(base, set()) | texts.get((arm, name), set())) > 1:  # same ids, other questions or gold
            continue
        with contextlib.suppress(ExperimentError):
            found.append((arm, name, *paired_difference(outcome, outcomes[base])))
    return found


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def report_markdown(experiment_name: str, summaries: list[EvalSummary],
                    compared: list[tuple[str, str, float, float, float]], baseline: str) -> str:
    from cotdistill.report import markdown_table

    rows = [[s.arm, s.eval, s.strategy or "", len(s.seeds), ", ".join(_pct(a) for a in s.accuracies), _pct(s.mean),
             "" if s.sd is None else _pct(s.sd), f"[{_pct(s.low)}, {_pct(s.high)}]", s.problems] for s in summaries]
    text = [f"# Experiment {experiment_name}", "",
            markdown_table(["arm", "evaluation", "strategy", "seeds", "accuracy per seed (%)", "mean (%)", "sd (%)",
                            "95% interval (%)", "problems"], rows), "",
            "sd: sample standard deviation over seeds. 95% interval: Wilson score interval of the mean accuracy "
            "over the evaluation problems (n = problems, not seeds x problems)."]
    if compared:
        rows = [[arm, name, f"{100 * d:+.1f}", f"[{100 * low:+.1f}, {100 * high:+.1f}]"]
                for arm, name, d, low, high in compared]
        text += ["", f"Paired against {baseline} on the same problems (points):", "",
                 markdown_table(["arm", "evaluation", f"difference vs {baseline}", "95% interval"], rows)]
    return "\n".join(text) + "\n"


def plot_summaries(summaries: list[EvalSummary], path: str | Path, title: str = "") -> Path:
    """One PNG: a bar per (arm, evaluation) at the mean accuracy, the 95% interval as error bars, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(s.arm for s in summaries))
    evals = list(dict.fromkeys(s.eval for s in summaries))
    per_arm = {arm: [s for s in summaries if s.arm == arm] for arm in arms}
    width = 0.8 / max(len(group) for group in per_arm.values())
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * sum(len(g) for g in per_arm.values()) + 1.5), 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled = set()
    for i, arm in enumerate(arms):  # an arm's bars centred on its tick, one colour per evaluation
        for k, s in enumerate(per_arm[arm]):
            x = i + (k - (len(per_arm[arm]) - 1) / 2) * width
            color = colors[evals.index(s.eval) % len(colors)]
            ax.bar(x, 100 * s.mean, width * 0.9, color=color, alpha=0.8,
                   label=None if s.eval in labelled else s.eval)
            labelled.add(s.eval)
            ax.errorbar(x, 100 * s.mean, yerr=[[100 * (s.mean - s.low)], [100 * (s.high - s.mean)]], color="black",
                        capsize=4, linewidth=1.2)
            ax.scatter([x + width * 0.2] * len(s.accuracies), [100 * a for a in s.accuracies], color="black",
                       s=10, zorder=3)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms)
    ax.set_ylabel("accuracy (%): mean, 95% interval, seeds")
    ax.set_ylim(0, 100)
    ax.set_title(title or "accuracy: mean over seeds, 95% interval over problems, seeds as dots")
    if len(evals) > 1:
        ax.legend(title="evaluation")
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a report's matplotlib figure as a PNG (its folder made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def current_results(experiment: Experiment, runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The stored results the experiment file still makes (its arm exists, its fingerprint is the arm's now), and
    a label for each of the others: a report must not mix a changed arm's old numbers with the new ones."""
    fresh, stale = [], []
    for entry in runs:
        arm, seed = entry["arm"], int(entry["seed"])
        if arm in experiment.arms and entry.get("fingerprint") == resolve_run(experiment, arm, seed).fingerprint:
            fresh.append(entry)
        else:
            stale.append(f"{arm} seed {seed}")
    return fresh, stale


def write_report(experiment: Experiment, store: ResultStore | None = None) -> tuple[Path, Path] | None:
    """report.md and report.png next to the results file (None when nothing has finished yet)."""
    store = store or ResultStore(experiment.results_file)
    runs, stale = current_results(experiment, store.runs())
    if not runs:
        return None
    summaries = summarize(runs, list(experiment.arms))
    text = report_markdown(experiment.name, summaries, comparisons(runs, experiment.baseline), experiment.baseline)
    notes = answer_notes(runs)
    if notes:
        text += "\n" + "\n\n".join(notes) + "\n"
    if stale:
        text += ("\nLeft out, made by another configuration than the experiment file's now (rerun them): "
                 + ", ".join(stale) + "\n")
    if experiment.selection is not None:  # here: that module imports this one
        from cotdistill.experiment_selection import plot_selection_curves, seed_selections, selection_markdown

        selections = seed_selections(runs, experiment.selection)
        if selections:
            text += selection_markdown(selections, experiment.selection)
            plot_selection_curves(selections, experiment.selection, experiment.output_dir / "selection.png")
            text += "\nAccuracy by checkpoint: selection.png\n"
    markdown = experiment.output_dir / "report.md"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text, encoding="utf-8")
    return markdown, plot_summaries(summaries, experiment.output_dir / "report.png", f"experiment {experiment.name}")
