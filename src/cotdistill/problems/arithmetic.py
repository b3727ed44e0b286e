"""Loaders for the small arithmetic word-problem sets: SVAMP, ASDiv and MultiArith.

Each ships one file in its own shape; these loaders give one `Problem` shape with the gold answer
as bare text ("51", not 51.0 or "51 (apples)") so every set scores through the same answer module.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from cotdistill.errors import DataError
from cotdistill.problems.jsonio import iter_json_list, number_text, read_json, require_file
from cotdistill.problems.record import Problem

INDEX_SPLITS = ("train", "test")
_UNIT = re.compile(r"^(?P<value>.*?\S)\s+\([^()]*\)$")
_NUMBER_WITH_COMMAS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def read_index_split(path: str | Path, split: str) -> list[int]:
    """The record indices a `splits/<set>__default.json` file assigns to `split`."""
    data = read_json(path)
    if not isinstance(data, dict) or split not in data:
        raise DataError(f"{path}: has no split {split!r}")
    indices = data[split]
    if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
        raise DataError(f"{path}: split {split!r} must be a list of integer indices")
    return indices


def select(problems: list[Problem], indices: list[int], split_file: Path) -> list[Problem]:
    """The problems at `indices`, in the split file's order; an index past the end is a DataError."""
    for index in indices:
        if not 0 <= index < len(problems):
            raise DataError(f"{split_file}: index {index} is outside the {len(problems)} records")
    return [problems[i] for i in indices]


def read_svamp(path: str | Path) -> list[Problem]:
    """SVAMP's JSON list; the question is `Body + " " + Question`, ids `svamp/<ID>` (e.g. svamp/chal-1)."""
    problems = []
    for item in iter_json_list(path):
        body, question = item.text("Body").strip(), item.text("Question").strip()
        problems.append(
            Problem(
                id=f"svamp/{item.text('ID')}",
                question=f"{body} {question}",
                answer=item.text("Answer"),
                source="svamp",
            )
        )
    return problems


def read_multiarith(path: str | Path) -> list[Problem]:
    """MultiArith's JSON list; the answer is the first of `lSolutions`, ids `multiarith/<iIndex>`."""
    problems = []
    for item in iter_json_list(path):
        solutions = item.field("lSolutions")
        if not isinstance(solutions, list) or not solutions:
            raise DataError(f"{item.path}: {item.where}: field 'lSolutions' must be a non-empty list")
        problems.append(
            Problem(
                id=f"multiarith/{item.text('iIndex')}",
                question=item.text("sQuestion").strip(),
                answer=number_text(solutions[0]),
                source="multiarith",
            )
        )
    return problems


def asdiv_answer(raw: str) -> str:
    """ASDiv's answer without its unit: "9 (apples)" -> "9"; "6 (cm); 15 (cm)" -> "6; 15".

    Non-numeric answers ("2:3", "3:30 p.m.", "Mrs. Hilt") stay text; the answer module scores them.
    """
    parts = []
    for part in raw.split(";"):
        part = part.strip()
        unit = _UNIT.match(part)
        if unit:
            part = unit.group("value")
        if _NUMBER_WITH_COMMAS.match(part):
            part = part.replace(",", "")
        parts.append(part)
    return "; ".join(parts)


def read_asdiv(path: str | Path) -> list[Problem]:
    """ASDiv's XML; the question is `Body + " " + Question`, ids `asdiv/<ID>` (e.g. asdiv/nluds-0001)."""
    path = require_file(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: line {err.position[0]}: not valid XML ({err})") from err
    problems = []
    for index, node in enumerate(root.iter("Problem")):
        where = f"{path}: Problem {index} (ID={node.get('ID')!r})"
        problem_id = node.get("ID")
        if not problem_id:
            raise DataError(f"{where}: missing required attribute 'ID'")
        texts = {}
        for tag in ("Body", "Question", "Answer"):
            text = node.findtext(tag)
            if text is None:
                raise DataError(f"{where}: missing required element {tag!r}")
            texts[tag] = " ".join(text.split())
        problems.append(
            Problem(
                id=f"asdiv/{problem_id}",
                question=f"{texts['Body']} {texts['Question']}",
                answer=asdiv_answer(texts["Answer"]),
                source="asdiv",
            )
        )
    return problems


def load_svamp(data_dir: Path, split: str) -> list[Problem]:
    """SVAMP "all" (1000) or the 700/300 "train"/"test" split of `splits/svamp__default.json`."""
    return _with_index_split(read_svamp(data_dir / "svamp" / "SVAMP.json"), data_dir, "svamp", split)


def load_multiarith(data_dir: Path, split: str) -> list[Problem]:
    """MultiArith "all" (600) or the 420/180 "train"/"test" split of `splits/multiarith__default.json`."""
    problems = read_multiarith(data_dir / "multiarith" / "MultiArith.json")
    return _with_index_split(problems, data_dir, "multiarith", split)


def load_asdiv(data_dir: Path, split: str) -> list[Problem]:
    """ASDiv: all 2305 problems (it ships no train/test split; it is for evaluation)."""
    del split  # only "all" exists; the registry has checked it
    return read_asdiv(data_dir / "asdiv" / "ASDiv.xml")


def _with_index_split(problems: list[Problem], data_dir: Path, name: str, split: str) -> list[Problem]:
    if split == "all":
        return problems
    split_file = require_file(data_dir / "splits" / f"{name}__default.json")
    return select(problems, read_index_split(split_file, split), split_file)
