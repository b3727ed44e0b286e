"""In- vs out-of-distribution checkpoint selection over an experiment's seeds (Fu et al. 2023, section 4.3).

An experiment whose arms evaluate every checkpoint (``checkpoints: true`` evaluations) and that names a
``selection`` (one in-distribution evaluation, one or more out-of-distribution ones) gets, per arm and seed:
the checkpoint that in-distribution accuracy would choose, the one out-of-distribution accuracy would choose,
and what choosing by the first costs on the second (and the reverse). Ties go to the earliest step, as in
`cotdistill.checkpoint_selection`. The out-of-distribution accuracy is the mean over its sets.

Choosing by out-of-distribution accuracy on the very problems it is then scored on flatters that choice (an
oracle): the cost is an upper bound on what an OOD development set would recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from cotdistill.experiments import (
    Z95,
    ExperimentError,
    SelectionSpec,
    mean,
    paired_difference,
    per_problem_means,
    sample_sd,
    save_figure,
)


@dataclass
class SeedSelection:
    arm: str
    seed: int
    steps: list[int]
    id_accuracy: dict[int, Fraction]
    ood_accuracy: dict[int, Fraction]  # the mean over the OOD sets, exact: equal accuracies tie exactly
    by_id: int
    by_ood: int
    ood_outcomes: dict[str, dict[int, str]]  # OOD set -> step -> its per-problem outcomes
    id_outcomes: dict[int, str]
    ood_sets: dict[str, dict[int, Fraction]] = field(default_factory=dict)  # each OOD set's accuracy by step

    @property
    def ood_cost(self) -> float:
        """OOD accuracy lost by taking the checkpoint in-distribution accuracy chooses."""
        return float(self.ood_accuracy[self.by_ood] - self.ood_accuracy[self.by_id])

    @property
    def id_cost(self) -> float:
        """In-distribution accuracy lost by taking the checkpoint OOD accuracy chooses."""
        return float(self.id_accuracy[self.by_id] - self.id_accuracy[self.by_ood])


def _accuracy(result: dict[str, Any]) -> Fraction:
    return Fraction(result["correct"], result["total"]) if result["total"] else Fraction(0)


def seed_selections(runs: list[dict[str, Any]], spec: SelectionSpec) -> list[SeedSelection]:
    """One `SeedSelection` per stored run that holds every evaluation ``spec`` names, per checkpoint."""
    names = (spec.in_distribution, *spec.out_of_distribution)
    found = []
    for run in sorted(runs, key=lambda r: (r["arm"], r["seed"])):
        evals = run["evals"]
        if not all(name in evals and "per_step" in evals[name] for name in names):
            continue
        step_sets = [set(evals[name]["per_step"]) for name in names]
        steps = sorted(int(step) for step in set.intersection(*step_sets))
        if len(steps) != len(step_sets[0]) or any(len(s) != len(steps) for s in step_sets):
            raise ExperimentError(f"{run['arm']} seed {run['seed']}: the selection's evaluations cover different "
                                  f"checkpoints ({[sorted(s) for s in step_sets]})")

        def at(name: str, step: int, evals: dict[str, Any] = evals) -> dict[str, Any]:
            return evals[name]["per_step"][str(step)]

        id_accuracy = {step: _accuracy(at(spec.in_distribution, step)) for step in steps}
        ood_accuracy = {step: sum((_accuracy(at(name, step)) for name in spec.out_of_distribution), Fraction(0))
                        / len(spec.out_of_distribution) for step in steps}
        found.append(SeedSelection(
            arm=run["arm"], seed=run["seed"], steps=steps, id_accuracy=id_accuracy, ood_accuracy=ood_accuracy,
            by_id=max(steps, key=lambda s: (id_accuracy[s], -s)),
            by_ood=max(steps, key=lambda s: (ood_accuracy[s], -s)),
            ood_outcomes={n: {s: at(n, s)["per_problem"] for s in steps} for n in spec.out_of_distribution},
            id_outcomes={s: at(spec.in_distribution, s)["per_problem"] for s in steps},
            ood_sets={name: {s: _accuracy(at(name, s)) for s in steps} for name in spec.out_of_distribution}))
    return found


def paired_over_sets(a: dict[str, list[str]], b: dict[str, list[str]], z: float = Z95) -> tuple[float, float, float]:
    """Arm A minus arm B where accuracy is the unweighted mean over several sets (as the OOD accuracy is): the mean
    of the per-set paired differences, with the variance of that mean summed from each set's (sets of different
    sizes weigh the same, as in the accuracy the choice was made by). ``a``, ``b``: set -> per seed, '0'/'1' per
    problem. One set is `paired_difference`."""
    diffs, variance = [], 0.0
    for name in a:
        pa, pb = per_problem_means(a[name]), per_problem_means(b[name])
        if pa is None or pb is None or len(pa) != len(pb) or not pa:
            raise ExperimentError(f"{name}: a paired comparison needs both choices scored on the same problems")
        per_problem = [x - y for x, y in zip(pa, pb, strict=True)]
        diffs.append(mean(per_problem))
        variance += (sample_sd(per_problem) or 0.0) ** 2 / len(per_problem)
    d = mean(diffs)
    half = z * math.sqrt(variance) / len(diffs)
    return d, d - half, d + half


def _pct(value: float | Fraction) -> str:
    return f"{100 * float(value):.1f}"


def _sd(values: list[float]) -> str:
    sd = sample_sd(values)
    return "" if sd is None else _pct(sd)


def selection_markdown(selections: list[SeedSelection], spec: SelectionSpec) -> str:
    """The report's selection section: per seed the two choices and their costs, then per arm the mean cost
    with a paired 95% interval over the problems (the seeds' chosen checkpoints answering the same problems)."""
    from cotdistill.report import markdown_table

    if not selections:
        return ""
    ood = " + ".join(spec.out_of_distribution)
    rows = [[s.arm, s.seed, ", ".join(map(str, s.steps)),
             f"{s.by_id} ({_pct(s.id_accuracy[s.by_id])} / {_pct(s.ood_accuracy[s.by_id])})",
             f"{s.by_ood} ({_pct(s.id_accuracy[s.by_ood])} / {_pct(s.ood_accuracy[s.by_ood])})",
             f"{100 * s.ood_cost:.1f}", f"{100 * s.id_cost:.1f}"] for s in selections]
    text = ["", f"## Checkpoint selection: {spec.in_distribution} (ID) vs {ood} (OOD)", "",
            markdown_table(["arm", "seed", "checkpoints", "chosen by ID: step (ID % / OOD %)",
                            "chosen by OOD: step (ID % / OOD %)", "OOD points lost choosing by ID",
                            "ID points lost choosing by OOD"], rows), ""]
    arms = list(dict.fromkeys(s.arm for s in selections))
    summary = []
    for arm in arms:
        mine = [s for s in selections if s.arm == arm]
        ood_d, ood_low, ood_high = paired_over_sets(
            {n: [s.ood_outcomes[n][s.by_ood] for s in mine] for n in spec.out_of_distribution},
            {n: [s.ood_outcomes[n][s.by_id] for s in mine] for n in spec.out_of_distribution})
        id_d, id_low, id_high = paired_difference([s.id_outcomes[s.by_id] for s in mine],
                                                  [s.id_outcomes[s.by_ood] for s in mine])
        same = sum(s.by_id == s.by_ood for s in mine)
        ood_sd, id_sd = _sd([s.ood_cost for s in mine]), _sd([s.id_cost for s in mine])
        summary.append([arm, len(mine), f"{same} of {len(mine)}",
                        f"{100 * ood_d:.1f} [{100 * ood_low:+.1f}, {100 * ood_high:+.1f}] (sd over seeds {ood_sd})",
                        f"{100 * id_d:.1f} [{100 * id_low:+.1f}, {100 * id_high:+.1f}] (sd over seeds {id_sd})"])
    text += [markdown_table(["arm", "seeds", "same checkpoint chosen", "OOD points lost choosing by ID, 95% interval",
                             "ID points lost choosing by OOD, 95% interval"], summary), "",
             "A choice is the checkpoint with the highest accuracy (earliest on ties); OOD accuracy is the mean over "
             f"{ood}, each set weighing the same. The interval is paired over the problems, each problem's outcome "
             "averaged over the seeds at each seed's chosen checkpoint (for OOD: the mean of the sets' paired "
             "differences). Choosing by OOD accuracy on the problems it is scored on is an oracle, so the OOD loss is "
             "an upper bound."]
    curve = []
    for arm in arms:
        mine = [s for s in selections if s.arm == arm]
        for step in sorted({step for s in mine for step in s.steps}):  # an arm's own checkpoints
            ids = [float(s.id_accuracy[step]) for s in mine if step in s.id_accuracy]
            oods = [float(s.ood_accuracy[step]) for s in mine if step in s.ood_accuracy]
            curve.append([arm, step, f"{_pct(mean(ids))} (sd {_sd(ids)})", f"{_pct(mean(oods))} (sd {_sd(oods)})"])
    text += ["", markdown_table(["arm", "step", f"{spec.in_distribution} (ID) %, mean over seeds",
                                 f"OOD ({ood}) %, mean over seeds"], curve)]
    return "\n".join(text) + "\n"


def plot_selection_curves(selections: list[SeedSelection], spec: SelectionSpec, path: str | Path) -> Path:
    """Accuracy against step, ID and OOD, one thin line per seed and the mean over seeds in bold, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(s.arm for s in selections))
    fig, axes = plt.subplots(1, len(arms), figsize=(5.5 * len(arms), 4.0), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        mine = [s for s in selections if s.arm == arm]
        steps = sorted({step for s in mine for step in s.steps})
        for label, key, color in ((f"{spec.in_distribution} (ID)", "id_accuracy", "tab:blue"),
                                  (f"OOD: {' + '.join(spec.out_of_distribution)}", "ood_accuracy", "tab:orange")):
            for s in mine:
                values = getattr(s, key)
                ax.plot(s.steps, [100 * float(values[t]) for t in s.steps], color=color, alpha=0.3, linewidth=0.8)
            means = [100 * mean([float(getattr(s, key)[t]) for s in mine if t in getattr(s, key)]) for t in steps]
            ax.plot(steps, means, color=color, linewidth=2.2, marker="o", label=label)
        for name, style in zip(spec.out_of_distribution, ("--", ":", "-.", "--"), strict=False):
            means = [100 * mean([float(s.ood_sets[name][t]) for s in mine if t in s.ood_sets.get(name, {})])
                     for t in steps]
            ax.plot(steps, means, color="tab:orange", linestyle=style, linewidth=1.2, label=f"{name} (OOD)")
        for s in mine:  # each seed's two choices
            ax.axvline(s.by_id, color="tab:blue", linestyle=":", alpha=0.5)
            ax.axvline(s.by_ood, color="tab:orange", linestyle=":", alpha=0.5)
        ax.set_title(f"{arm}: accuracy by checkpoint, {len(mine)} seed{'s' if len(mine) > 1 else ''}\n"
                     "bold: mean; thin: seeds; vertical: each seed's choice", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend()
    return save_figure(fig, path)
