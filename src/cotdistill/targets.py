"""What an evaluation target names, decided from files alone: an exported folder, a hub id, a run folder or one
of its checkpoints.

Kept apart from ``cotdistill.student`` (which loads the model and imports transformers and DeepSpeed, seconds per
process) so that ``cotdistill eval`` and the evaluation launchers refuse a wrong target, data set or output folder
in one line before any of that is imported, on every rank alike.
"""

from __future__ import annotations

from pathlib import Path

from cotdistill import checkpoints as ckpt
from cotdistill.config import EvalRunConfig
from cotdistill.errors import ConfigError
from cotdistill.outputs import check_output_dir
from cotdistill.run_folder import RunFolder


def looks_like_a_path(name_or_path: str | Path) -> bool:
    """A local path rather than a hub id: absolute, explicitly relative, or home-relative."""
    return str(name_or_path).startswith(("/", "./", "../", "~"))


def resolve_checkpoint(target: str | Path) -> tuple[Path, ckpt.Checkpoint] | None:
    """(run folder, checkpoint) when ``target`` is a run folder or one of its checkpoint folders."""
    path = Path(target).resolve()
    if (path / ckpt.MARKER).is_file():
        step = ckpt.Checkpoint(path, 0).meta.get("step")
        if not isinstance(step, int):
            raise ConfigError(f"{path / ckpt.MARKER} does not record the checkpoint's step")
        return RunFolder.of_checkpoint(path).root, ckpt.Checkpoint(path, step)
    if RunFolder(path).checkpoints.is_dir():
        latest = ckpt.latest_checkpoint(path)
        if latest is None:
            raise ConfigError(f"{path} holds no complete checkpoint (checkpoints/step-*/COMPLETE)")
        return path, latest
    if path.name.startswith("step-") and path.is_dir():
        raise ConfigError(f"{path} is an incomplete checkpoint (no {ckpt.MARKER} marker): it cannot be loaded")
    return None


def model_folder(target: str | Path) -> tuple[str, ckpt.Checkpoint | None]:
    """The folder (or hub id) whose config and tokenizer describe ``target``, and the checkpoint whose weights
    it names (None: the folder's own weights). Raises ConfigError when the target cannot be a model."""
    found = resolve_checkpoint(target)
    if found is not None:
        run_dir, checkpoint = found
        meta = RunFolder(run_dir).hf_meta
        if not meta.is_dir():
            raise ConfigError(f"{meta} is missing: the run folder should hold the model config and tokenizer")
        return str(meta), checkpoint
    path = Path(target).expanduser()
    if looks_like_a_path(target) and not path.exists():
        raise ConfigError(f"model folder {str(target)!r} does not exist")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{target} holds no config.json, checkpoints/ or checkpoint marker: give an exported "
                          "model folder (a run's final/), a run folder or one of its checkpoints/step-* folders")
    return str(target), None


def check_eval_request(config: EvalRunConfig) -> None:
    """Everything an evaluation refuses that its config and files decide, in the order a user fixes them: the
    output folder, the data sets (names, files), then the model(s)."""
    from cotdistill.eval_sets import resolve_eval_sets

    check_output_dir(config.output_dir)
    resolve_eval_sets(config)
    targets = [config.model]
    if config.strategy == "socratic" and (config.decomposer or config.solver):  # MODEL stands in for the one not given
        targets = [config.decomposer or config.model, config.solver or config.model]
    for target in targets:
        model_folder(target)
