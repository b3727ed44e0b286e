"""Profile chosen optimizer steps with torch.profiler: where a training step's time goes, per rank.

``train.profile_steps=5-8`` records steps 5 to 8 (skip the first steps: they build DeepSpeed's buffers and
warm caches) and writes ``profile/rank<r>.txt`` (operators by self CPU time, and by total time, which shows
DeepSpeed's hooks, collectives and the optimizer as whole blocks) and ``profile/rank<r>.trace.json``
(open it in https://ui.perfetto.dev or chrome://tracing) into the run folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from cotdistill.errors import ConfigError

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def parse_step_range(text: str) -> tuple[int, int] | None:
    """'5-8' -> (5, 8), '7' -> (7, 7), '' -> None; steps count from 1."""
    if not text.strip():
        return None
    match = _RANGE.match(text)
    if not match:
        raise ConfigError(f"train.profile_steps={text!r}: expected a step or a range such as 5-8")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if first < 1 or last < first:
        raise ConfigError(f"train.profile_steps={text!r}: steps count from 1 and the range must not be empty")
    return first, last


class StepProfiler:
    """Starts torch.profiler before the first chosen step and writes the report after the last one."""

    def __init__(self, steps: tuple[int, int] | None, folder: Path, rank: int) -> None:
        self.steps, self.folder, self.rank = steps, Path(folder), rank
        self._profile = None

    def before_step(self, step: int) -> None:
        """Called with the 1-based number of the step about to run."""
        if self.steps is not None and step == self.steps[0] and self._profile is None:
            import torch

            self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                   record_shapes=False, with_stack=False)
            self._profile.__enter__()

    def after_step(self, step: int, stopping: bool = False) -> Path | None:
        """Called after step ``step``; returns the report's path once written."""
        if self._profile is None or (step < self.steps[1] and not stopping):
            return None
        profile, self._profile = self._profile, None
        profile.__exit__(None, None, None)
        self.folder.mkdir(parents=True, exist_ok=True)
        report = self.folder / f"rank{self.rank}.txt"
        averages = profile.key_averages()
        report.write_text(f"steps {self.steps[0]}-{step}, rank {self.rank}\n\nby self CPU time\n"
                          + averages.table(sort_by="self_cpu_time_total", row_limit=30)
                          + "\n\nby total CPU time (including what each calls)\n"
                          + averages.table(sort_by="cpu_time_total", row_limit=30), encoding="utf-8")
        profile.export_chrome_trace(str(self.folder / f"rank{self.rank}.trace.json"))
        return report
