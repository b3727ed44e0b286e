"""Where results go: checked before any work starts, and not left behind empty when a job fails at start-up.

One check for every entry point that writes (training's ``output_dir``, ``build-data``, ``cotdistill eval``,
the benchmarks' ``--out``), so a folder that cannot be written fails in one ``error:`` line before minutes
of work rather than in a traceback after them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from cotdistill.errors import ConfigError

PathLike = str | Path


def _nearest_existing(folder: Path, named: str) -> Path:
    """The deepest existing folder at or above ``folder`` (where creating it starts); a file on the way is an
    error, since nothing can be created below a file."""
    current = folder
    while not current.exists():
        if current.is_symlink():
            raise ConfigError(f"{named} is not writable: {current} is a link to nothing")
        if current.parent == current:
            break
        current = current.parent
    if not current.is_dir():
        raise ConfigError(f"{named} is not writable: {current} is a file, not a folder")
    return current


def _check_writable(folder: Path, named: str) -> None:
    """Write (and remove) a temporary file where ``folder`` is or would be created, so read-only file systems,
    permissions and root's exemptions all answer as they will for the real outputs."""
    existing = _nearest_existing(folder, named)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cotdistill-write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"{named} is not writable: {err.strerror or err}") from None


def check_output_dir(path: PathLike, key: str = "output_dir") -> Path:
    """Refuse a folder that cannot be created or written in, before expensive work; creates nothing."""
    folder = Path(path)
    _check_writable(folder, f"{key} {folder}")
    return folder


def check_output_file(path: PathLike, key: str = "--out", make_parent: bool = False) -> Path:
    """Refuse a result file that could not be written at the end of a run: its folder must exist (or, with
    ``make_parent``, be creatable, for writers that create it) and be writable, and it must not be a folder."""
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{key} {file} is a folder; give a file path")
    parent = file.parent
    if not make_parent and not parent.is_dir():
        what = "is a file" if parent.exists() else "does not exist"
        raise ConfigError(f"{key} {file}: its folder {parent} {what}; create the folder or choose another path")
    _check_writable(parent, f"{key} {file}")
    return file


@contextmanager
def removed_on_failure(path: PathLike, scratch: Collection[str] = (), enabled: bool = True) -> Iterator[Path]:
    """Run a job that creates ``path``; if it raises, remove the folders it created that hold nothing but
    ``scratch`` entries (files written at start-up), so a failed start leaves no empty run folder behind.

    A folder that existed before, or holds anything else (a checkpoint, a log row, the user's files), is
    kept. ``enabled``: false on every rank but the one that writes the folder.
    """
    folder = Path(path)
    created: list[Path] = []  # deepest first: the folders and parents that do not exist yet
    if enabled:
        current = folder
        while not current.exists() and not current.is_symlink() and current.parent != current:
            created.append(current)
            current = current.parent
    try:
        yield folder
    except BaseException:
        for made in created:
            _remove_if_scratch(made, scratch if made == folder else ())
        raise


def _remove_if_scratch(folder: Path, scratch: Collection[str]) -> None:
    """Remove ``folder`` when it holds only ``scratch`` entries; anything else keeps it."""
    try:
        entries = list(folder.iterdir())
    except OSError:  # never made, or unreadable: nothing of ours to clean
        return
    if any(entry.name not in scratch for entry in entries):
        return
    shutil.rmtree(folder, ignore_errors=True)
