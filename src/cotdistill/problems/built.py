"""Datasets written by ``cotdistill build-data``: a folder with manifest.json and JSONL shards.

The trainer reads a build by path (``data.dataset=teacher_data data.path=<folder>``); the split picks
the product: ``cot`` (verified chain-of-thought samples, one Problem per kept sample) or
``decompositions`` (Socratic sub-question/answer steps). Only finished builds are read: a folder
without a manifest is still being built, or its build failed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cotdistill.errors import DataError
from cotdistill.problems.jsonio import iter_jsonl
from cotdistill.problems.record import Problem
from cotdistill.problems.traces import read_problem_file

BUILT_SPLITS = {"cot": "cot", "decompositions": "decompositions"}  # split -> product name in the manifest


def read_built_dataset(folder: str | Path, split: str = "cot") -> list[Problem]:
    """The problems of one product of a build, in the order the builder wrote them."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{folder} is not a finished teacher dataset: no manifest.json (is its build still "
                        "running, or did it fail?)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{manifest_path}: not a build manifest ({err})") from None
    product = BUILT_SPLITS.get(split)
    if product is None or product not in files:
        built = ", ".join(sorted(k for k, v in BUILT_SPLITS.items() if v in files)) or "none"
        raise DataError(f"{folder} has no {split!r} product; it holds: {built}")
    problems: list[Problem] = []
    for entry in files[product]:
        path = folder / entry["path"]
        problems += read_problem_file(path, records=iter_jsonl(path, _check_shard(folder, entry)))
    return problems


def _check_shard(folder: Path, entry: dict) -> bytes:
    """The bytes of a shard, checked to be the shard its manifest lists (hash and record count): the builder swaps
    in new shards just before it writes their manifest, so a build killed in between, or a shard edited by hand,
    would otherwise be read with another build's manifest (its counts, its teacher, its settings). The caller
    parses these bytes, not the file again, so a shard swapped after the check is never read."""
    path = folder / entry["path"]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: listed in {folder / 'manifest.json'} but cannot be read ({err.strerror}); "
                        "the build was interrupted or the folder changed: run build-data again") from None
    records = data.count(b"\n")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256") or records != entry.get("records"):
        raise DataError(f"{path} is not the shard {folder / 'manifest.json'} lists ({records} records, expected "
                        f"{entry.get('records')}; the hashes differ): a build was interrupted between writing its "
                        "shards and its manifest, or the file was edited; run build-data again (its cache keeps "
                        "every answer)")
    return data
