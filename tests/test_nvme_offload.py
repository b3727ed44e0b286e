"""ZeRO-3 with parameters and optimizer states swapped to disk (ds_configs/zero3_nvme.json), for real.

DeepSpeed builds its async I/O op on first use, which needs libaio's headers: installed with apt-get when
missing and running as root (as in CI here), else the test is skipped with that reason (in CI, `CI=true`, it
fails instead: `conftest.skip_or_fail`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO, TINY_RUN, apt_install, launch, read_losses, skip_or_fail, synthetic_texts

pytestmark = pytest.mark.distributed

LIBAIO_HEADER = Path("/usr/include/libaio.h")


def require_libaio() -> None:
    if not LIBAIO_HEADER.is_file() and os.geteuid() == 0 and shutil.which("apt-get"):
        print("nvme test: installing libaio-dev with apt-get", flush=True)
        apt_install("libaio-dev")
    if not LIBAIO_HEADER.is_file():
        reason = "DeepSpeed's async I/O op needs libaio's headers: apt-get install libaio-dev"
        print(f"SKIP nvme test: {reason}", flush=True)
        skip_or_fail(reason)


def nvme_template(folder: Path) -> Path:
    """The shipped NVMe template with its swap folder moved into ``folder``."""
    template = json.loads((REPO / "ds_configs" / "zero3_nvme.json").read_text())
    for block in ("offload_param", "offload_optimizer"):
        template["zero_optimization"][block]["nvme_path"] = str(folder / "nvme")
    path = folder / "zero3_nvme.json"
    path.write_text(json.dumps(template))
    return path


def run_args(model: Path, out: Path, ds_config: str, *extra: str) -> list[str]:
    return ["--config", "recipes/demo-t5-synthetic.yaml", *TINY_RUN, f"model.name_or_path={model}",
            "model.make_tiny=", f"output_dir={out}", f"deepspeed_config={ds_config}", "eval.at_end=false",
            "checkpoint.export_final=false", *extra]


@pytest.fixture(scope="module")
def swappable_t5(tmp_path_factory) -> Path:
    """A tiny T5 whose optimizer partition (about 1.2M fp32 elements) is over DeepSpeed's 1 MiB swap minimum:
    smaller tensors stay in memory even with NVMe offload (the session's tiny T5 would never touch the disk)."""
    from cotdistill.config import TinyModelConfig
    from cotdistill.tiny import build_tiny_model

    size = TinyModelConfig(d_model=128, num_layers=2, num_heads=2, d_ff=512, vocab_size=320)
    return build_tiny_model("t5", tmp_path_factory.mktemp("nvme-model") / "t5", synthetic_texts("t5"), size, seed=0)


def test_a_t5_trains_with_states_on_nvme_with_exactly_the_losses_of_cpu_offload(swappable_t5, tmp_path):
    require_libaio()
    launch("launchers/train.py", run_args(swappable_t5, tmp_path / "nvme-run", str(nvme_template(tmp_path))), ranks=1)
    launch("launchers/train.py", run_args(swappable_t5, tmp_path / "cpu-run", "ds_configs/zero3_offload.json"),
           ranks=1)
    on_nvme, on_cpu = read_losses(tmp_path / "nvme-run"), read_losses(tmp_path / "cpu-run")
    assert sorted(on_nvme) == [1, 2, 3, 4, 5, 6]
    assert on_nvme == on_cpu  # the same arithmetic; only where the optimizer states live differs
    assert on_nvme[6] < on_nvme[1] - 0.5
    # the optimizer states lived in swap files: the checkpoints hold DeepSpeed's copies of them
    swapped = list((tmp_path / "nvme-run" / "checkpoints").rglob("offloaded_tensors/*/*.swp"))
    assert {"exp_avg", "exp_avg_sq"} <= {path.name.split("-")[0] for path in swapped}, swapped


def test_resuming_with_states_on_nvme_keeps_weights_and_warns_that_adam_restarts(swappable_t5, tmp_path):
    """DeepSpeed 0.19.8 zeroes the swapped Adam moments on load (measured: the step after the first resumed
    update differs by 0.08 nats); the trainer keeps weights, step and schedule and says so in one line."""
    require_libaio()
    args = run_args(swappable_t5, tmp_path / "run", str(nvme_template(tmp_path)), "train.stop_after_steps=3")
    launch("launchers/train.py", args, ranks=1)
    resumed = launch("launchers/train.py", args, ranks=1)
    losses = read_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[1]
    warnings = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "restarts Adam's moments" in line]
    assert len(warnings) == 1, warnings
