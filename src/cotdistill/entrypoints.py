"""Shared behaviour of every entry point: user errors print one line and exit 2, not a traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn, TypeVar

from cotdistill.errors import CotDistillError

T = TypeVar("T")


def run_or_exit(fn: Callable[[], T]) -> T:
    """Call ``fn``; a CotDistillError (bad recipe, data or path) becomes ``error: ...`` and exit code 2, or the
    error's own ``exit_code`` (75 for a teacher that stayed down: rerunning is the fix)."""
    try:
        return fn()
    except CotDistillError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(getattr(err, "exit_code", 2)) from None


def fire_under_launcher(fn: Callable[..., str]) -> NoReturn:
    """Run a fire command under the DeepSpeed launcher: drop its --local_rank flag, print on rank 0 only, and
    end the process as ``exit_without_teardown`` does."""
    import fire

    def run() -> None:
        args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
        text = fire.Fire(fn, command=args, serialize=lambda _: None)
        if int(os.environ.get("RANK", "0")) == 0 and text:
            print(text, flush=True)

    exit_without_teardown(run)


def exit_without_teardown(main: Callable[[], object]) -> NoReturn:
    """Run an entry point, then end the process with its exit code and without the interpreter's teardown.

    Why: after ``destroy_process_group`` the process still runs gloo's worker threads and the TCP store's
    thread (DeepSpeed keeps references to its process groups, down to every ZeRO-3 parameter's
    ``ds_process_group``). Interpreter teardown then destroys C++ objects under those threads, and on rare
    runs that aborts ("terminate called without an active exception", exit -6) after a run that had saved
    everything: CI saw it once, in a two-rank training job that had printed its summary. Everything the
    entry points write (checkpoints, TensorBoard, JSON reports) is closed before ``main`` returns; here the
    log handlers and standard streams are flushed, then ``os._exit`` ends the process, so the exit code is
    the job's own: 0, 2 for a user error, 1 with the traceback for a bug, 130 for Ctrl-C. ``atexit``
    handlers do not run: code that must clean up does it before returning (``Objective.close``).
    """
    code = 0
    try:
        main()
    except SystemExit as exit_request:
        if exit_request.code is None or isinstance(exit_request.code, int):
            code = exit_request.code or 0
        else:  # sys.exit("message") prints the message and exits 1, as Python does
            print(exit_request.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
