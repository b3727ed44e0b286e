"""The result table a person reads at the end of a run (printed by rank 0 only)."""

from __future__ import annotations

import os
from typing import Any


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_run_summary(config, result) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    rows = [["model", config.model.name_or_path], ["optimizer steps", result.steps],
            ["final train loss", f"{result.final_loss:.4f}"], ["output", str(result.output_dir)]]
    if result.export_dir is not None:
        rows.append(["exported weights", str(result.export_dir)])
    if result.eval is not None:
        rows.append(["held-out accuracy", f"{result.eval.correct}/{result.eval.total} "
                                          f"({100 * result.eval.accuracy:.1f}%)"])
    print(markdown_table(["run", "value"], rows), flush=True)
