"""Checkpoint selection as in Fu et al. (2023): evaluate every saved checkpoint of a run, compare
in-distribution accuracy (e.g. GSM8K) with out-of-distribution accuracy (MultiArith, ASDiv, SVAMP),
and name the best checkpoint per data set and by average.

Outputs in the output folder: ``step-NNNNNN/<dataset>/`` (predictions and metrics per checkpoint),
``selection.json``, ``selection.md`` (a table of accuracy by step) and ``accuracy_vs_step.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cotdistill import checkpoints as ckpt
from cotdistill.config import EvalRunConfig, eval_spec
from cotdistill.engine import Engine
from cotdistill.errors import ConfigError
from cotdistill.eval_sets import folder_name, resolve_eval_sets
from cotdistill.evaluate import evaluate_set, resolved_spec
from cotdistill.logs import setup_logging
from cotdistill.report import markdown_table
from cotdistill.student import open_student


@dataclass
class Selection:
    """Accuracy per checkpoint step and data set, and the choices that follow from it."""

    accuracy: dict[int, dict[str, float]]
    in_distribution: str
    best: dict[str, int] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        first = next(iter(self.accuracy.values()), {})
        return list(first)

    def average(self, step: int) -> float:
        values = self.accuracy[step]
        return sum(values.values()) / len(values)

    def out_of_distribution_average(self, step: int) -> float | None:
        others = [v for name, v in self.accuracy[step].items() if name != self.in_distribution]
        return sum(others) / len(others) if others else None

    def choose(self) -> None:
        """Best step per data set, by average, and by out-of-distribution average (earliest wins ties)."""
        steps = sorted(self.accuracy)
        for name in self.datasets:
            self.best[name] = max(steps, key=lambda s: (self.accuracy[s][name], -s))
        self.best["average"] = max(steps, key=lambda s: (self.average(s), -s))
        if len(self.datasets) > 1 and self.in_distribution in self.datasets:
            self.best["out_of_distribution"] = max(steps, key=lambda s: (self.out_of_distribution_average(s), -s))

    def table(self) -> str:
        names = self.datasets
        headers = ["step", *[f"{n} (ID)" if n == self.in_distribution else n for n in names], "average"]
        rows = []
        for step in sorted(self.accuracy):
            cells = [f"{100 * self.accuracy[step][n]:.1f}%" for n in names]
            rows.append([step, *cells, f"{100 * self.average(step):.1f}%"])
        best = [f"best {key}: step {value}" for key, value in self.best.items()]
        return markdown_table(headers, rows) + "\n\n" + "\n".join(f"- {line}" for line in best) + "\n"

    def to_json(self) -> dict:
        return {"in_distribution": self.in_distribution, "best": self.best,
                "accuracy": {str(step): values for step, values in sorted(self.accuracy.items())}}


def plot_selection(selection: Selection, path: Path) -> Path:
    """Accuracy against training step: in-distribution solid, out-of-distribution dashed, average dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(selection.accuracy)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name in selection.datasets:
        in_dist = name == selection.in_distribution
        ax.plot(steps, [100 * selection.accuracy[s][name] for s in steps], marker="o",
                linestyle="-" if in_dist else "--", linewidth=2.2 if in_dist else 1.4,
                label=f"{name} (in-distribution)" if in_dist else f"{name} (out-of-distribution)")
    ax.plot(steps, [100 * selection.average(s) for s in steps], color="black", linestyle=":", label="average")
    best = selection.best.get("average")
    if best is not None:
        ax.axvline(best, color="grey", linewidth=0.8)
        ax.annotate(f"best average: step {best}", (best, ax.get_ylim()[1]), fontsize=8, ha="center",
                    va="bottom")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_checkpoints(config: EvalRunConfig, in_distribution: str = "") -> Selection:
    """Collective: evaluate each complete checkpoint of the run folder ``config.model`` on every data set."""
    engine = Engine()
    try:
        log = setup_logging(engine.rank)
        run_dir = Path(config.model)
        found = ckpt.complete_checkpoints(run_dir)
        if not found:
            raise ConfigError(f"{run_dir} holds no complete checkpoint (checkpoints/step-*/{ckpt.MARKER})")
        config = resolved_spec(config)
        sets = resolve_eval_sets(config)
        chosen_id = in_distribution or sets[0].name
        if chosen_id not in [s.name for s in sets]:
            raise ConfigError(f"in_distribution={chosen_id!r} is not one of the evaluated data sets: "
                              f"{', '.join(s.name for s in sets)}")
        if config.strategy == "socratic" and (config.decomposer or config.solver):
            raise ConfigError("eval-checkpoints scores each checkpoint as a unified Socratic model; leave "
                              "decomposer and solver empty (or evaluate a two-model pair with cotdistill eval)")
        spec = eval_spec(config)
        out = Path(config.output_dir)
        accuracy: dict[int, dict[str, float]] = {}
        for checkpoint in found:
            student = open_student(engine, checkpoint.path, config.precision, config.zero_stage, config.offload)
            accuracy[checkpoint.step] = {}
            for eval_set in sets:  # the same evaluation as cotdistill eval and training's dev sets
                report = evaluate_set(engine, student, eval_set, spec, desc=f"step {checkpoint.step} {eval_set.name}")
                accuracy[checkpoint.step][eval_set.name] = report.accuracy
                if engine.is_main:
                    report.write(out / f"step-{checkpoint.step:06d}" / folder_name(eval_set.name))
            log.info("step %d: %s", checkpoint.step,
                     ", ".join(f"{n} {100 * a:.1f}%" for n, a in accuracy[checkpoint.step].items()))
            engine.release_model()
        selection = Selection(accuracy, chosen_id)
        selection.choose()
        if engine.is_main:
            (out / "selection.json").write_text(json.dumps(selection.to_json(), indent=2), encoding="utf-8")
            (out / "selection.md").write_text(selection.table(), encoding="utf-8")
            plot_selection(selection, out / "accuracy_vs_step.png")
            log.info("best by average: step %d; table %s", selection.best["average"], out / "selection.md")
        return selection
    finally:
        engine.close()
