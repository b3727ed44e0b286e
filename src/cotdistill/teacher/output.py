"""Write a built dataset: JSONL shards under data/ and manifest.json, each replaced whole or not at all.

The new shards are written into a staging folder and swapped in with renames; the manifest is written
to a temporary file and renamed last. A reader therefore sees the previous complete dataset or the new
one, never a mix, and a build that dies while writing leaves the old dataset (and the cache) intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_DIR = "data"
MANIFEST = "manifest.json"


def write_shards(out: Path, products: dict[str, Sequence[dict[str, Any]]], shard_size: int) -> dict[str, Any]:
    """Write every product as `data/<name>-NNNNN-of-NNNNN.jsonl`; return the manifest's file listing."""
    staging = out / f".{DATA_DIR}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    listing: dict[str, Any] = {}
    for name, records in products.items():
        shards = max(1, -(-len(records) // shard_size))
        entries = []
        for number in range(shards):
            part = records[number * shard_size:(number + 1) * shard_size]
            file_name = f"{name}-{number:05d}-of-{shards:05d}.jsonl"
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part).encode("utf-8")
            (staging / file_name).write_bytes(data)
            entries.append({"path": f"{DATA_DIR}/{file_name}", "records": len(part),
                            "sha256": hashlib.sha256(data).hexdigest()})
        listing[name] = entries
    _fsync_dir(staging)
    final, old = out / DATA_DIR, out / f".{DATA_DIR}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return listing


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    path = out / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def _fsync_dir(folder: Path) -> None:
    for file in folder.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
