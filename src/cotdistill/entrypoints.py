"""Shared behaviour of every entry point: user errors print one line and exit 2, not a traceback."""

from __future__ import annotations

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
