"""One entry point, `load_problems(name, split)`, for every data set a recipe can name.

Recipes name data sets by short names; this registry maps a name and split to the loader, the
files under a data folder laid out like the shared data, or the hub, and turns typos into errors
that list the valid choices.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.errors import ConfigError, DataError
from cotdistill.problems.arithmetic import (
    load_asdiv,
    load_multiarith,
    load_svamp,
    read_asdiv,
    read_multiarith,
    read_svamp,
)
from cotdistill.problems.built import BUILT_SPLITS, read_built_dataset
from cotdistill.problems.gsm8k import load_gsm8k, load_gsm8k_hub, read_gsm8k, read_gsm8k_subquestions
from cotdistill.problems.reasoning import BBH_TASKS, load_bbh, load_strategyqa, read_bbh_task, read_strategyqa
from cotdistill.problems.record import Problem
from cotdistill.problems.traces import load_traces, read_problem_file

DATA_DIR_ENV = "COTDISTILL_DATA_DIR"
DEFAULT_SPLIT = "default"


@dataclass(frozen=True)
class _Dataset:
    """How one named data set is found: its splits, and its loaders by where the data comes from."""

    splits: tuple[str, ...]  # valid split names besides "default"
    default: str  # the split "default" stands for
    from_file: Callable[..., list[Problem]]  # reads one whole file given as path=
    from_dir: Callable[[Path, str], list[Problem]] | None = None
    from_hub: Callable[[str], list[Problem]] | None = None
    options: tuple[str, ...] = ()  # keyword options passed through to from_file
    file_has_splits: bool = False  # path= names a folder whose splits from_file picks (teacher_data)


def _gsm8k_file(path: Path) -> list[Problem]:
    return read_gsm8k(path, split=path.stem)


def _socratic_file(path: Path) -> list[Problem]:
    return read_gsm8k(path, split=path.stem.removesuffix("_socratic"), socratic=True)


def _socratic_dir(data_dir: Path, split: str) -> list[Problem]:
    return load_gsm8k(data_dir, split, socratic=True)


def _socratic_hub(split: str) -> list[Problem]:
    return load_gsm8k_hub(split, socratic=True)


def _subquestions_dir(data_dir: Path, split: str) -> list[Problem]:
    del split  # only "test" exists
    return read_gsm8k_subquestions(data_dir / "gsm8k_subquestions" / "qg_test_data_raw.jsonl")


_TRACE_OPTIONS = ("question_field", "rationale_field", "answer_kind", "keep_unanswered", "source")
_FILE_OPTIONS = ("question_field", "answer_field", "rationale_field", "id_field")
_FILE_SPLITS = ("all", "train", "dev", "test")

_DATASETS: dict[str, _Dataset] = {
    "gsm8k": _Dataset(("all", "train", "test"), "all", _gsm8k_file, load_gsm8k, load_gsm8k_hub),
    # Only the test half of the Socratic annotations is public as a file, so "default" is "test".
    "gsm8k_socratic": _Dataset(
        ("all", "train", "test"), "test", _socratic_file, _socratic_dir, _socratic_hub
    ),
    "svamp": _Dataset(("all", "train", "test"), "all", read_svamp, load_svamp),
    "asdiv": _Dataset(("all",), "all", read_asdiv, load_asdiv),
    "multiarith": _Dataset(("all", "train", "test"), "all", read_multiarith, load_multiarith),
    "strategyqa": _Dataset(("all", "train", "dev"), "all", read_strategyqa, load_strategyqa),
    "gsm8k_subquestions": _Dataset(("test",), "test", read_gsm8k_subquestions, _subquestions_dir),
    "bbh": _Dataset(("all", *BBH_TASKS), "all", read_bbh_task, load_bbh),
    # A trace or generic file is one split already: any of these names reads the whole file.
    "traces": _Dataset(_FILE_SPLITS, "all", load_traces, options=_TRACE_OPTIONS),
    "jsonl": _Dataset(_FILE_SPLITS, "all", read_problem_file, options=_FILE_OPTIONS),
    # A folder written by `cotdistill build-data`; the split picks its product.
    "teacher_data": _Dataset(tuple(BUILT_SPLITS), "cot", read_built_dataset, file_has_splits=True),
}

DATASET_NAMES = tuple(_DATASETS)


def dataset_splits(name: str) -> tuple[str, ...]:
    """The split names `load_problems` accepts for `name` ("default" is always accepted too)."""
    return (DEFAULT_SPLIT, *_dataset(name).splits)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The data folder: the argument, else $COTDISTILL_DATA_DIR, else None; it must exist."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    folder = Path(chosen).expanduser()
    if not folder.is_dir():
        origin = "data_dir" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise DataError(f"data folder not found: {folder} (from {origin})")
    return folder


def check_source(name: str, split: str = DEFAULT_SPLIT, path: str | Path | None = None) -> None:
    """What ``load_problems`` refuses before reading anything (a known name and split, a file where one is
    needed), callable alone so a recipe is refused before a run starts."""
    dataset = _dataset(name)
    if split != DEFAULT_SPLIT and split not in dataset.splits:
        raise DataError(
            f"unknown split {split!r} for {name!r}; valid splits: {', '.join(dataset_splits(name))}"
        )
    if path is None and dataset.from_dir is None:
        raise DataError(f"{name!r} needs path= (the file to read)")


def load_problems(
    name: str,
    split: str = DEFAULT_SPLIT,
    data_dir: str | Path | None = None,
    path: str | Path | None = None,
    **options: Any,
) -> list[Problem]:
    """Load a named data set's split as Problems.

    Where the data comes from, first match wins: `path` (one file in that set's format, read
    whole; required for "traces" and "jsonl"), then `data_dir` or $COTDISTILL_DATA_DIR (a folder
    laid out like the shared data), then the hub (GSM8K only). `options` go to the file readers of
    "traces" (question_field, rationale_field, answer_kind, keep_unanswered, source) and "jsonl"
    (question_field, answer_field, rationale_field, id_field).
    """
    check_source(name, split, path)
    dataset = _dataset(name)
    unknown = sorted(set(options) - set(dataset.options))
    if unknown:
        valid = ", ".join(dataset.options) or "none"
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {name!r}; valid options: {valid}")
    chosen = dataset.default if split == DEFAULT_SPLIT else split
    if path is not None and dataset.file_has_splits:
        return dataset.from_file(Path(path), chosen, **options)
    if path is not None:
        if dataset.from_dir is not None and chosen not in (dataset.default, "all"):
            raise DataError(
                f"split {split!r} of {name!r} is picked from data_dir; with path= the whole file is read "
                "(leave split as 'default')"
            )
        return dataset.from_file(Path(path), **options)
    if dataset.from_dir is None:
        raise DataError(f"{name!r} needs path= (the file to read)")
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        return dataset.from_dir(folder, chosen)
    if dataset.from_hub is not None:
        return dataset.from_hub(chosen)
    raise DataError(
        f"{name!r} needs data_dir= or ${DATA_DIR_ENV}: a folder laid out like the shared data "
        "(see its README.md)"
    )


def _dataset(name: str) -> _Dataset:
    if name not in _DATASETS:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(_DATASETS)}")
    return _DATASETS[name]
