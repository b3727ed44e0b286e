"""The append-only sample cache: every teacher answer is written once, as soon as it arrives.

One JSON line per answered request, holding the question id, the hash of the exact prompt (template and
question text) and the sample indices it answered. Retries (`retried`) and requests that failed after all
their retries (`failed`) get lines too, with no samples, so the retries they cost are counted by every later
build. A build killed at any moment (kill -9 included) loses at most the request it was writing: on the next
start a torn last line is cut off and its samples are asked again. Lines are only appended, never rewritten;
a sample key (question id, sample index, prompt hash) read twice keeps its first answer, so the cache can
never yield a sample twice. An exclusive lock keeps two builds off one cache file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cotdistill.errors import DataError

log = logging.getLogger(__name__)

SampleKey = tuple[str, int, str]  # (question id, sample index, prompt hash)


class SampleCache:
    """A cache file opened for one build; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: dict[SampleKey, dict[str, Any]] = {}  # sample key -> the sample
        self.lines: list[dict[str, Any]] = []  # the request lines, in file order
        self.repaired_bytes = 0
        self._lock_fd: int | None = None
        self._fd: int | None = None

    def __enter__(self) -> SampleCache:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._read_and_repair()
        except BaseException:
            self.__exit__()  # a cache that cannot be read must not stay locked
            raise
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def has(self, key: SampleKey) -> bool:
        return key in self.samples

    def append(self, qid: str, prompt_hash: str, indices: list[int], samples: list[dict[str, Any]],
               extra: dict[str, Any]) -> None:
        """Write one answered request as a single line (one write call), then index its samples."""
        if self._fd is None:
            raise RuntimeError("SampleCache.append outside its context")
        if len(indices) != len(samples):  # checked before writing: a bad line would poison every later open
            raise ValueError(f"{len(indices)} indices for {len(samples)} samples")
        line = {"qid": qid, "prompt_hash": prompt_hash, "indices": indices, "samples": samples, **extra}
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # a short write to a regular file means the disk is full
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes); is the disk full?")
        self._index(line)

    def append_note(self, qid: str, prompt_hash: str, extra: dict[str, Any]) -> None:
        """A line that answers nothing (no sample is indexed): a retry as it happens (`retried`) or a request that
        failed after all its retries (`failed`), so what they cost counts in the manifests of later runs."""
        self.append(qid, prompt_hash, [], [], extra)

    def iter_lines(self) -> Iterator[dict[str, Any]]:
        return iter(self.lines)

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise DataError(f"{self.path} is in use by another build of the same output_dir; wait for it to "
                            "finish or stop it first") from None

    def _read_and_repair(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(raw):
            self.repaired_bytes = len(raw) - end
            log.warning("%s: cut off a torn last line (%d bytes) left by an interrupted build; its samples "
                        "will be asked again", self.path, self.repaired_bytes)
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        for number, text in enumerate(raw[:end].decode("utf-8", errors="replace").splitlines(), 1):
            try:
                line = json.loads(text)
                if not isinstance(line, dict):
                    raise ValueError("not an object")
                self._index(line)
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{self.path}: line {number} is not a cache record ({err}); this file is only "
                                "written by the builder: move it away to start the cache afresh") from None

    def _index(self, line: dict[str, Any]) -> None:
        qid, prompt_hash = str(line["qid"]), str(line["prompt_hash"])
        indices, samples = line["indices"], line["samples"]
        if len(indices) != len(samples):
            raise ValueError(f"{len(indices)} indices for {len(samples)} samples")
        self.lines.append(line)
        for index, sample in zip(indices, samples, strict=True):
            self.samples.setdefault((qid, int(index), prompt_hash), sample)
