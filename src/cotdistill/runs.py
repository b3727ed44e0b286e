"""What a run folder tells an evaluation: its resolved config, and from it how its student is evaluated.

A run folder's layout is ``cotdistill.run_folder.RunFolder``. Evaluating anything inside a run (the run, one
checkpoint, its ``final/``) should score the student the way the run's own dev evaluation did, so the strategy
comes from the run's training mixture and ``synthetic`` is generated with the run's settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cotdistill.config import RunConfig, SyntheticDataConfig, load_config
from cotdistill.errors import ConfigError
from cotdistill.formats import PROMPT_FORMATS, validate_mixture
from cotdistill.run_folder import RunFolder

FALLBACK_STRATEGY = "zero_shot_cot"


def mixture_strategy(config: RunConfig) -> tuple[str, str]:
    """(strategy, subquestions) a run's students are evaluated with: ``eval.strategy``, else from the mixture.

    A unified Socratic mixture (decomposer and solver) is evaluated socratically; a solver alone answers the
    data set's own sub-questions (gold); a decomposer alone cannot be scored (strategy ''). Otherwise the
    heaviest prompt format.
    """
    if config.eval.strategy:
        return config.eval.strategy, config.eval.subquestions
    mixture = validate_mixture(config.data.formats)
    if "decomposer" in mixture and "solver" in mixture:
        return "socratic", config.eval.subquestions
    if "solver" in mixture:
        return "socratic", "gold"
    prompt_formats = {name: weight for name, weight in mixture.items() if name in PROMPT_FORMATS}
    return (max(prompt_formats, key=prompt_formats.get) if prompt_formats else ""), config.eval.subquestions


def resolve_strategy(target: str | Path, subquestions: str = "model") -> tuple[str, str, str]:
    """(strategy, subquestions, where they came from) for evaluating ``target`` when no strategy was given."""
    run = RunFolder.containing(target)
    if run is None:
        return FALLBACK_STRATEGY, subquestions, "the default for a model outside a run"
    try:
        strategy, subquestions = mixture_strategy(load_config(run.config_file))
    except ConfigError as err:
        raise ConfigError(f"{run.config_file} cannot be read to choose the strategy ({err}); "
                          "give --strategy") from None
    if not strategy:
        raise ConfigError(f"{run.root} trained a decomposer alone, which cannot be scored by itself: evaluate it with "
                          "its solver (--strategy socratic --decomposer ... --solver ...)")
    return strategy, subquestions, f"from the training mixture in {run.config_file}"


def _names_synthetic(datasets: Any) -> bool:
    names = datasets.split(",") if isinstance(datasets, str) else list(datasets or [])
    return any(str(name).strip().partition(":")[0] == "synthetic" for name in names)


def run_chat_template(model: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Evaluation options where a student trained with ``data.chat_template`` is prompted through its chat template.

    A chat-trained student prompted with plain text sees a layout it never trained on and scores far below its
    own dev evaluation. A ``chat_template`` option given wins over the run's; returns the options and a line
    saying the run's template is used (None otherwise). A run config that cannot be read is left to the strategy
    resolution, which names the problem when it matters.
    """
    options = dict(options)
    if any(key.replace("-", "_") == "chat_template" for key in options):
        return options, None
    run = RunFolder.containing(model)
    if run is None:
        return options, None
    try:
        chat = load_config(run.config_file).data.chat_template
    except ConfigError:
        return options, None
    if not chat:
        return options, None
    options["chat_template"] = True
    return options, f"prompts in the student's chat template, as {run.config_file} trained (--chat_template false " \
                    "overrides)"


def with_run_synthetic(model: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Evaluation options where the embedded ``synthetic`` set is generated as the run generated it, and the
    prompts are laid out as the run trained (`run_chat_template`).

    Evaluating a run, one of its checkpoints or its ``final/`` on ``synthetic`` with the generator's
    defaults (operands to 20) instead of the run's recipe (operands to 9) scored different problems than the
    run's own held-out evaluation, silently. Any ``synthetic.*`` option given wins over the run's; returns
    the options and one line saying which settings were used (None when neither applies).
    """
    options, chat_note = run_chat_template(model, options)
    options, note = _with_run_synthetic(model, options)
    notes = [line for line in (note, chat_note) if line]
    return options, "; ".join(notes) if notes else None


def _with_run_synthetic(model: str, options: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    options = dict(options)
    if not _names_synthetic(options.get("datasets")):
        return options, None
    if any(key.replace("-", "_").startswith("synthetic.") for key in options):
        return options, "synthetic problems from the --synthetic.* options given"
    run = RunFolder.containing(model)
    if run is None:
        return options, "synthetic problems from the generator's defaults (the model is not inside a run)"
    settings = load_config(run.config_file).data.synthetic
    for field in dataclasses.fields(SyntheticDataConfig):
        options[f"synthetic.{field.name}"] = getattr(settings, field.name)
    return options, f"synthetic problems generated as {run.config_file} says (--synthetic.<key> overrides)"
