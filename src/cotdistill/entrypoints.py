"""Shared behaviour of every entry point: user errors print one line and exit 2, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from cotdistill.errors import CotDistillError

T = TypeVar("T")


def run_or_exit(fn: Callable[[], T]) -> T:
    """Call ``fn``; a CotDistillError (bad recipe, data or path) becomes ``error: ...`` and exit code 2."""
    try:
        return fn()
    except CotDistillError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def fire_under_launcher(fn: Callable[..., str]) -> None:
    """Run a fire command under the DeepSpeed launcher: drop its --local_rank flag, print on rank 0 only."""
    import fire

    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    text = fire.Fire(fn, command=args, serialize=lambda _: None)
    if int(os.environ.get("RANK", "0")) == 0 and text:
        print(text, flush=True)
