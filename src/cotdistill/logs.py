"""Logs a person reads: one line per event from rank 0, warnings from every rank, no library chatter."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


class _TqdmHandler(logging.StreamHandler):
    """Write through tqdm so log lines never tear an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never crash training; report like logging itself does
            self.handleError(record)


def setup_logging(rank: int = 0, verbose: bool = False) -> logging.Logger:
    """Configure the ``cotdistill`` logger once per process and return it."""
    logger = logging.getLogger("cotdistill")
    if not logger.handlers:
        handler = _TqdmHandler(sys.stderr)
        prefix = "[cotdistill]" if rank == 0 else f"[cotdistill rank {rank}]"
        handler.setFormatter(logging.Formatter(f"{prefix} %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING))
    return logger
