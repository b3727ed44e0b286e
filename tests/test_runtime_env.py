"""Settings made before DeepSpeed is imported: the compiled-ops cache, the CPU accelerator, the first-build line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, free_port
from cotdistill.runtime_env import DEFAULT_EXTENSIONS_DIR, launcher_args, ops_to_build, prepare_environment


def test_the_package_defaults_the_compiled_ops_folder_and_keeps_a_users_choice(tmp_path):
    env: dict[str, str] = {}
    prepare_environment(env, dev=tmp_path)
    assert env["TORCH_EXTENSIONS_DIR"] == str(DEFAULT_EXTENSIONS_DIR)
    mine = {"TORCH_EXTENSIONS_DIR": "/elsewhere"}
    prepare_environment(mine, dev=tmp_path)
    assert mine["TORCH_EXTENSIONS_DIR"] == "/elsewhere"


def test_cpu_is_named_only_where_no_accelerator_device_exists(tmp_path):
    bare = {}
    prepare_environment(bare, dev=tmp_path)
    assert bare["DS_ACCELERATOR"] == "cpu"
    (tmp_path / "nvidia0").touch()
    gpu: dict[str, str] = {}
    prepare_environment(gpu, dev=tmp_path)
    assert "DS_ACCELERATOR" not in gpu  # DeepSpeed's own detection decides
    chosen = {"DS_ACCELERATOR": "xpu"}
    prepare_environment(chosen, dev=tmp_path)
    assert chosen["DS_ACCELERATOR"] == "xpu"


def test_ops_to_build_names_what_an_offload_config_compiles_and_forgets_what_is_cached(tmp_path):
    offload = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                     "offload_param": {"device": "cpu"}}}
    nvme = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"},
                                  "offload_param": {"device": "nvme"}}}
    assert ops_to_build(offload, tmp_path) == ["cpu_adam"]
    assert ops_to_build(nvme, tmp_path) == ["cpu_adam", "async_io"]
    assert ops_to_build({"zero_optimization": {"stage": 2}}, tmp_path) == []
    (tmp_path / "py312_cpu" / "cpu_adam").mkdir(parents=True)
    (tmp_path / "py312_cpu" / "cpu_adam" / "cpu_adam.so").touch()
    assert ops_to_build(nvme, tmp_path) == ["async_io"]


def test_importing_deepspeed_through_the_package_prints_no_accelerator_warning_on_a_cpu_machine():
    code = "import cotdistill, deepspeed, os; print(os.environ['DS_ACCELERATOR'])"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DS_ACCELERATOR",)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "cpu"
    assert "Setting accelerator to CPU" not in proc.stderr + proc.stdout


# --- DeepSpeed's own start-up lines: out of a normal run, back with COTDISTILL_VERBOSE=1 ---------------------

DEEPSPEED_LINE = re.compile(r"^\[[0-9-]+ [0-9:,]+\] \[(INFO|WARNING)\] \[", re.MULTILINE)


def test_verbose_leaves_the_accelerator_to_deepspeeds_detection_and_its_warning(tmp_path):
    verbose = {"COTDISTILL_VERBOSE": "1"}
    prepare_environment(verbose, dev=tmp_path)
    assert "DS_ACCELERATOR" not in verbose
    off = {"COTDISTILL_VERBOSE": "0"}
    prepare_environment(off, dev=tmp_path)
    assert off["DS_ACCELERATOR"] == "cpu"


def test_the_launcher_runs_at_error_level_unless_verbose_and_a_users_own_level_wins():
    script = ["--num_gpus", "2", "launchers/train.py", "--config", "r.yaml"]
    assert launcher_args(script, {}) == ["--log_level", "error", *script]
    assert launcher_args(script, {"COTDISTILL_VERBOSE": "yes"}) == ["--log_level", "info", *script]
    assert launcher_args(["--log_level=debug", *script], {}) == ["--log_level=debug", *script]
    assert launcher_args(["-q", *script], {"COTDISTILL_VERBOSE": "1"}) == ["-q", *script]
    theirs = ["--num_gpus", "2", "other.py", "--log_level", "debug"]  # the script's own flag, not the launcher's
    assert launcher_args(theirs, {}) == ["--log_level", "error", *theirs]


@pytest.mark.parametrize("verbose", [False, True])
def test_deepspeeds_info_lines_in_a_rank_show_only_when_verbose(verbose):
    code = ("import cotdistill, deepspeed; from deepspeed.utils import logger;"
            "from cotdistill.runtime_env import set_deepspeed_log_level;"
            "set_deepspeed_log_level(); logger.info('engine configuration dump')")
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "COTDISTILL_VERBOSE")}
    env.update({"COTDISTILL_VERBOSE": "1"} if verbose else {})
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert ("engine configuration dump" in output) is verbose
    assert ("Setting accelerator to CPU" in output) is verbose


def test_a_launch_through_launchers_launch_prints_no_deepspeed_start_up_lines(tmp_path):
    """A user's shell: no DS_ACCELERATOR, no COTDISTILL_VERBOSE; a two-step run of a tiny GPT-2 on 2 ranks."""
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "COTDISTILL_VERBOSE")}
    run = ["--config", "recipes/demo-gpt2-synthetic.yaml", f"output_dir={tmp_path / 'run'}",
           f"model.name_or_path={tmp_path / 'tiny'}", "model.tiny.d_model=32", "model.tiny.num_layers=1",
           "model.tiny.d_ff=64", "model.tiny.n_positions=256", "data.synthetic.train_size=32", "train.max_steps=2",
           "train.micro_batch_size=4", "checkpoint.every=0", "checkpoint.export_final=false", "eval.at_end=false"]
    cmd = [sys.executable, "launchers/launch.py", "--num_gpus", "2", "--master_port", str(free_port()),
           "launchers/train.py", *run]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "data: 32 training problems -> 32 examples (zero_shot_cot 32 (100%))" in output
    assert DEEPSPEED_LINE.findall(output) == [], [line for line in output.splitlines() if "] [" in line][:5]
    assert "Setting accelerator to CPU" not in output


def test_install_time_op_build_leaves_nothing_for_an_offload_run_to_compile():
    """`make install` compiles the CPU ops (cotdistill.engine.build_cpu_ops); afterwards a CPU- or NVMe-offload
    run finds every op it needs in TORCH_EXTENSIONS_DIR (here the suite's cache: built once, then only loaded)."""
    from cotdistill.engine import build_cpu_ops

    done = build_cpu_ops()
    assert done["CPUAdamBuilder"] == "built" and done["FusedAdamBuilder"] == "built"
    nvme = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"},
                                  "offload_param": {"device": "nvme"}}}
    expected = [] if done["AsyncIOBuilder"] == "built" else ["async_io"]
    assert ops_to_build(nvme) == expected


MUON_PROBE = """
import sys
import deepspeed
from deepspeed.runtime import compiler
from cotdistill.engine import MUON_MODULE, import_muon_without_compiling
before = compiler.compile
if sys.argv[1] == "ours":
    import_muon_without_compiling()
    assert compiler.compile is before, "deepspeed's compile() must be restored"
from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam
assert isinstance(MuonWithAuxAdam, type) and MUON_MODULE in sys.modules
print("inductor" if "torch._inductor.compile_fx" in sys.modules else "no inductor")
"""


@pytest.mark.parametrize(("how", "expected"), [("plain", "inductor"), ("ours", "no inductor")])
def test_muon_module_is_imported_without_torch_compile_so_a_zero_start_skips_inductor(how, expected):
    """Every ZeRO set-up imports DeepSpeed's Muon module; imported plainly it wraps kernels in torch.compile and so
    imports TorchInductor (seconds per rank); through cotdistill.engine the wrapping waits for a first call."""
    proc = subprocess.run([sys.executable, "-c", MUON_PROBE, how], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == expected


def test_a_function_compiled_on_first_call_is_compiled_once_and_gives_its_results():
    from cotdistill.engine import compile_on_first_call

    compiled = []

    def fake_compile(fn):
        compiled.append(fn.__name__)
        return lambda *args: ("compiled", fn(*args))

    @compile_on_first_call(fake_compile)
    def double(x):
        return 2 * x

    assert compiled == [] and double.__name__ == "double"
    assert double(3) == ("compiled", 6) and double(4) == ("compiled", 8)
    assert compiled == ["double"]
