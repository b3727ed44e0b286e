"""Settings made before DeepSpeed is imported: the compiled-ops cache, the CPU accelerator, the first-build line."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO
from cotdistill.runtime_env import DEFAULT_EXTENSIONS_DIR, ops_to_build, prepare_environment


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
