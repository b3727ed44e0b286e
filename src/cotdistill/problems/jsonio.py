"""Reading JSON / JSONL data files so every failure names the file and the line or record.

Loaders never call `json` directly: a user with a broken file should learn which file and
which line to fix, not see a bare `JSONDecodeError` from deep inside a training run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.errors import DataError


@dataclass(frozen=True)
class Located:
    """A JSON object with where it came from, so later field checks can point at it."""

    path: Path
    where: str  # "line 12" (JSONL, 1-based) or "record 3" (JSON list, 0-based index)
    index: int  # 0-based position among the file's records
    record: Mapping[str, Any]

    def field(self, name: str) -> Any:
        """The value of a required field; a missing one raises DataError naming field, file and record."""
        if name not in self.record:
            raise DataError(f"{self.path}: {self.where}: missing required field {name!r}")
        return self.record[name]

    def text(self, name: str) -> str:
        """A required field that must hold a string (numbers are turned into text)."""
        value = self.field(name)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(
                f"{self.path}: {self.where}: field {name!r} must be a string, got {type(value).__name__}"
            )
        return value if isinstance(value, str) else number_text(value)

    def optional_text(self, name: str) -> str | None:
        """An optional string field: None when absent or null."""
        if self.record.get(name) is None:
            return None
        return self.text(name)


def require_file(path: str | Path) -> Path:
    """The path as a Path, or DataError naming it when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def read_json(path: str | Path) -> Any:
    """Parse a whole JSON file; a syntax error names the file and its 1-based line."""
    path = require_file(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from err


def iter_jsonl(path: str | Path, content: bytes | None = None) -> Iterator[Located]:
    """Yield each non-blank line of a JSONL file as an object; a bad line names its 1-based number.

    `content`: the file's bytes when the caller has already read them (to check their hash): those bytes are
    parsed, not the file again, so what is parsed is what was checked even if the file changes meanwhile.
    """
    if content is None:
        path = require_file(path)
        with path.open(encoding="utf-8") as handle:
            yield from _jsonl_objects(path, handle)
        return
    path = Path(path)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from err
    yield from _jsonl_objects(path, text.split("\n"))  # JSON escapes newlines in strings: "\n" ends a record


def _jsonl_objects(path: Path, lines: Iterable[str]) -> Iterator[Located]:
    index = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: {where}: not valid JSON ({err.msg})") from err
        yield _as_object(path, where, index, record)
        index += 1


def iter_json_list(path: str | Path) -> Iterator[Located]:
    """Yield the objects of a file holding one JSON list; records are named by 0-based index."""
    path = require_file(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield _as_object(path, f"record {index}", index, record)


def iter_records(path: str | Path) -> Iterator[Located]:
    """Yield records from a JSON list or a JSONL file: `.jsonl` is JSONL, else a leading `[` means a list."""
    path = require_file(path)
    if path.suffix.lower() == ".jsonl":
        return iter_jsonl(path)
    with path.open(encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        return iter_json_list(path)
    return iter_jsonl(path)


def number_text(value: float | int) -> str:
    """Render a gold number as text the way people write it: 51.0 -> "51", 0.5 -> "0.5"."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def _as_object(path: Path, where: str, index: int, record: Any) -> Located:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    return Located(path=path, where=where, index=index, record=record)
