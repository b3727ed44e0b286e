"""The CPU-side parts of benchmarks/gpu_check.py: arguments, the wheel folder, the report, step budgets, dry run.

Nothing here needs a GPU or the network: the steps are fakes (or a sleeping python process for the budget).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_check"] = gpu_check
SPEC.loader.exec_module(gpu_check)


def fill_wheels(folder: Path, wheels: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, version in wheels.items():
        (folder / f"{gpu_check.normalise(name)}-{version}-py3-none-any.whl").write_bytes(b"")


# -- arguments ------------------------------------------------------------------------------------------------


def test_check_defaults_run_every_step_within_eight_minutes(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    args = gpu_check.parse_args(["check"])
    assert args.steps == list(gpu_check.STEP_BUDGETS)
    assert args.budget < 8 * 60
    assert args.wheels == ".whl"
    assert args.out == REPO / "runs" / "gpu-check" / "gpu_check.json"


def test_report_goes_to_the_device_out_folder_when_out_is_set(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.parse_args(["check"]).out == tmp_path / "gpu_check.json"
    assert gpu_check.parse_args(["check", "--out", "x/r.json"]).out == Path("x/r.json")


def test_step_budgets_and_step_lists_are_parsed_and_checked(capsys):
    args = gpu_check.parse_args(["check", "--step_budget", "resume=30", "throughput=95.5", "--steps", "install,resume"])
    assert args.step_budget == {"resume": 30.0, "throughput": 95.5}
    assert args.steps == ["install", "resume"]
    for bad in (["--step_budget", "warp=3"], ["--step_budget", "resume"], ["--steps", "install,warp"],
                ["--train_steps", "7"], ["--budget", "0"]):
        with pytest.raises(SystemExit) as exit_:
            gpu_check.parse_args(["check", *bad])
        assert exit_.value.code == 2
    assert "warp" in capsys.readouterr().err


def test_wheels_command_takes_its_folder_and_python_version():
    args = gpu_check.parse_args(["wheels", "--dir", "w", "--python-version", "3.13"])
    assert (args.command, args.dir, args.python_version) == ("wheels", Path("w"), "3.13")
    assert gpu_check.parse_args(["wheels"]).python_version == "3.12"


# -- the wheel folder -----------------------------------------------------------------------------------------


def test_missing_wheel_folder_names_the_folder_and_the_make_target(tmp_path):
    with pytest.raises(gpu_check.WheelFolderError) as err:
        gpu_check.check_wheel_folder(tmp_path / ".whl")
    assert str(tmp_path / ".whl") in str(err.value) and "does not exist" in str(err.value)
    assert "make gpu-wheels" in str(err.value) and "carry" in str(err.value)


def test_missing_and_wrong_version_wheels_are_each_named(tmp_path):
    wheels = dict(gpu_check.WHEELS)
    del wheels["fire"]
    wheels["openai"] = "1.0.0"
    fill_wheels(tmp_path, wheels)
    with pytest.raises(gpu_check.WheelFolderError) as err:
        gpu_check.check_wheel_folder(tmp_path)
    message = str(err.value)
    assert f"fire=={gpu_check.WHEELS['fire']}" in message
    assert f"openai=={gpu_check.WHEELS['openai']} (found openai-1.0.0-py3-none-any.whl)" in message
    assert "deepspeed" not in message


def test_two_versions_of_one_distribution_are_refused(tmp_path):
    fill_wheels(tmp_path, gpu_check.WHEELS)
    (tmp_path / "pydantic_core-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl").write_bytes(b"")
    with pytest.raises(gpu_check.WheelFolderError, match="two versions.*pydantic_core-2.0.0"):
        gpu_check.check_wheel_folder(tmp_path)


def test_complete_folder_gives_one_wheel_per_distribution_extras_included(tmp_path):
    fill_wheels(tmp_path, {**gpu_check.WHEELS, "extra-thing": "1.0"})
    found = gpu_check.check_wheel_folder(tmp_path)
    assert len(found) == len(gpu_check.WHEELS) + 1
    assert tmp_path / "extra_thing-1.0-py3-none-any.whl" in found


def test_wheel_names_with_a_build_tag_and_odd_names_are_read():
    assert gpu_check.wheel_name_version(Path("Typing.Extensions-4.16.0-1-py3-none-any.whl")) == (
        "typing_extensions", "4.16.0")
    with pytest.raises(gpu_check.WheelFolderError, match="not a wheel file name"):
        gpu_check.wheel_name_version(Path("deepspeed-0.19.8.tar.gz.whl"))


def test_every_install_requirement_travels_as_a_wheel_or_is_on_the_gpu_image():
    requirements = [gpu_check.requirement_name(r) for r in gpu_check.install_requires()]
    assert "deepspeed" in requirements and "torch" in requirements
    brought = {gpu_check.normalise(n) for n in gpu_check.WHEELS} | {gpu_check.normalise(n) for n in gpu_check.IMAGE_HAS}
    assert [r for r in requirements if gpu_check.normalise(r) not in brought] == []


def test_deepspeed_wheel_with_prebuilt_ops_is_refused(tmp_path):
    def wheel(name: str, installed: str, extra: tuple[str, ...] = ()) -> Path:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("deepspeed/git_version_info_installed.py", f"installed_ops={installed}\n")
            for member in extra:
                zf.writestr(member, "")
        return path

    gpu_check.check_deepspeed_wheel(wheel("ok.whl", "{'cpu_adam': False, 'fused_adam': False}"))
    with pytest.raises(gpu_check.WheelFolderError, match="cpu_adam"):
        gpu_check.check_deepspeed_wheel(wheel("ops.whl", "{'cpu_adam': True, 'fused_adam': False}"))
    with pytest.raises(gpu_check.WheelFolderError, match="fused_adam_op.so"):
        gpu_check.check_deepspeed_wheel(wheel("so.whl", "{}", ("deepspeed/ops/fused_adam_op.so",)))


# -- the report -----------------------------------------------------------------------------------------------


def test_report_writes_json_and_a_markdown_row_per_step(tmp_path):
    report = gpu_check.Report(tmp_path / "sub" / "gpu_check.json", {"started": "T", "steps": []})
    report.step("environment").update(status="ok", seconds=3.2, budget_s=30, summary="NVIDIA H100 | 80GB",
                                      result={"gpu": "NVIDIA H100", "torch": "2.11.0", "torch_cuda": "13.0"})
    report.step("install").update(status="failed", seconds=1, budget_s=90, summary="wheel folder .whl lacks fire")
    report.write()
    data = json.loads((tmp_path / "sub" / "gpu_check.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in data["steps"]] == ["environment", "install"]
    assert report.step("environment") is data["steps"][0] or data["steps"][0]["status"] == "ok"
    markdown = (tmp_path / "sub" / "gpu_check.md").read_text(encoding="utf-8")
    assert "NVIDIA H100, torch 2.11.0 (CUDA 13.0)" in markdown
    assert "| install | failed | 1 | 90 | wheel folder .whl lacks fire |" in markdown
    assert "| environment | ok | 3 | 30 | NVIDIA H100 / 80GB |" in markdown  # a '|' never breaks the table
    assert not list((tmp_path / "sub").glob("*.tmp"))


# -- budgets and failures -------------------------------------------------------------------------------------


def fake_context(tmp_path: Path) -> gpu_check.Context:
    args = gpu_check.parse_args(["check", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "r.json")])
    return gpu_check.Context(work=tmp_path / "work", logs=tmp_path / "work" / "logs", args=args)


def fake_step(name: str, run, needs: tuple[str, ...] = ()) -> gpu_check.Step:
    return gpu_check.Step(name, run, lambda ctx: [], needs=needs, summary=lambda r: f"value {r['value']}")


def test_failed_step_is_recorded_with_its_error_and_the_next_step_still_runs(tmp_path):
    ran = []

    def boom(ctx, deadline):
        ran.append("boom")
        raise RuntimeError("the kernel said no\n" + "x" * 5000)

    def fine(ctx, deadline):
        ran.append("fine")
        return {"value": 7}

    report = gpu_check.Report(tmp_path / "r.json", {"steps": []})
    ok = gpu_check.run_steps([fake_step("boom", boom), fake_step("fine", fine)], fake_context(tmp_path), report,
                             100, {})
    assert not ok and ran == ["boom", "fine"]
    boom_entry, fine_entry = report.data["steps"]
    assert boom_entry["status"] == "failed" and boom_entry["summary"] == "RuntimeError: the kernel said no"
    assert len(boom_entry["error"]) <= 2500 and boom_entry["error"].endswith("x")
    assert (fine_entry["status"], fine_entry["summary"], fine_entry["result"]) == ("ok", "value 7", {"value": 7})
    on_disk = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert [s["status"] for s in on_disk["steps"]] == ["failed", "ok"]


def test_step_past_its_budget_is_stopped_with_its_processes_and_recorded_as_a_timeout(tmp_path):
    marker = tmp_path / "child-survived"
    # The command starts a grandchild that would write a file after 3 s: stopping the group must stop it too.
    child = tmp_path / "child.py"
    child.write_text(f"import pathlib, time\ntime.sleep(3)\npathlib.Path({str(marker)!r}).write_text('x')\n",
                     encoding="utf-8")
    parent = tmp_path / "parent.py"
    parent.write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(child)!r}])\n"
                      f"time.sleep(60)\n", encoding="utf-8")

    def sleepy(ctx, deadline):
        ctx.run([sys.executable, str(parent)], deadline, "sleepy")
        return {"value": 1}

    report = gpu_check.Report(tmp_path / "r.json", {"steps": []})
    started = time.monotonic()
    ok = gpu_check.run_steps([fake_step("sleepy", sleepy)], fake_context(tmp_path), report, 100, {"sleepy": 1.0})
    assert time.monotonic() - started < 20
    entry = report.data["steps"][0]
    assert not ok and entry["status"] == "timeout" and entry["budget_s"] == 1.0
    assert "stopped after" in entry["error"] and entry["commands"]
    time.sleep(3.5)
    assert not marker.exists(), "a process of the stopped step ran on"


def test_steps_left_without_time_are_skipped_and_fail_the_check(tmp_path):
    clock = iter([0.0, 0.0, 0.0, 95.0, 95.0, 95.0, 95.0])

    def slow(ctx, deadline):
        return {"value": 1}

    report = gpu_check.Report(tmp_path / "r.json", {"steps": []})
    ok = gpu_check.run_steps([fake_step("first", slow), fake_step("second", slow)], fake_context(tmp_path), report,
                             100, {}, clock=lambda: next(clock))
    first, second = report.data["steps"]
    assert first["status"] == "ok"
    assert second["status"] == "skipped" and "out of time" in second["summary"] and not ok


def test_step_budget_is_capped_by_what_is_left_of_the_whole(tmp_path):
    seen = []

    def record(ctx, deadline):
        seen.append(deadline.left())
        return {"value": 1}

    report = gpu_check.Report(tmp_path / "r.json", {"steps": []})
    gpu_check.run_steps([fake_step("a", record)], fake_context(tmp_path), report, 40, {"a": 500})
    assert report.data["steps"][0]["budget_s"] == pytest.approx(40, abs=1)
    assert 30 < seen[0] <= 40


def test_step_needing_a_failed_step_is_skipped_but_unavailable_steps_harm_nothing(tmp_path):
    def broken(ctx, deadline):
        raise gpu_check.StepFailed("no", {"partial": 1})

    def absent(ctx, deadline):
        raise gpu_check.StepUnavailable("make-tiny llama is not in this checkout")

    def never(ctx, deadline):
        raise AssertionError("must not run")

    report = gpu_check.Report(tmp_path / "r.json", {"steps": []})
    ok = gpu_check.run_steps([fake_step("train", broken), fake_step("resume", never, needs=("train",))],
                             fake_context(tmp_path), report, 100, {})
    assert not ok
    assert report.data["steps"][0]["result"] == {"partial": 1}
    assert report.data["steps"][1] == {"name": "resume", "status": "skipped", "summary": "needs train"}

    report = gpu_check.Report(tmp_path / "r2.json", {"steps": []})
    ok = gpu_check.run_steps([fake_step("llama", absent), fake_step("other", lambda c, d: {"value": 2})],
                             fake_context(tmp_path), report, 100, {})
    assert ok and report.data["steps"][0]["status"] == "not available"
    assert "not in this checkout" in report.data["steps"][0]["summary"]


def test_failed_command_names_its_last_output_line_and_keeps_the_output(tmp_path):
    ctx = fake_context(tmp_path)
    deadline = gpu_check.Deadline(time.monotonic() + 60)
    with pytest.raises(gpu_check.StepFailed) as err:
        ctx.run([sys.executable, "-c", "print('step 1'); raise SystemExit('error: no kernel image')"], deadline, "f")
    assert str(err.value).startswith("error: no kernel image (exit 1:")
    assert "step 1" in err.value.output
    assert "step 1" in (tmp_path / "work" / "logs" / "f.log").read_text(encoding="utf-8")


def test_llama_probe_tells_a_missing_family_from_a_broken_command(tmp_path, monkeypatch):
    ctx = fake_context(tmp_path)
    deadline = gpu_check.Deadline(time.monotonic() + 60)

    def refuse(cmd, deadline, name, env=None):
        raise gpu_check.StepFailed("x", output="error: model.make_tiny='llama' is not one of: , t5, gpt2\n")

    monkeypatch.setattr(ctx, "run", refuse)
    with pytest.raises(gpu_check.StepUnavailable, match="not one of"):
        gpu_check.probe_llama(ctx, deadline)

    def crash(cmd, deadline, name, env=None):
        raise gpu_check.StepFailed("x", output="ModuleNotFoundError: No module named 'yaml'\n")

    monkeypatch.setattr(ctx, "run", crash)
    with pytest.raises(gpu_check.StepFailed):
        gpu_check.probe_llama(ctx, deadline)


def test_training_check_accepts_a_falling_loss_and_names_what_is_wrong_otherwise(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}", encoding="utf-8")
    rows = [{"step": s, "loss": 5.0 - s, "tokens_per_s": 100.0 * s} for s in range(1, 5)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    output = ("[comm.py:908:init_distributed] Initializing TorchBackend in DeepSpeed with backend nccl\n"
              "DeepSpeed Basic Optimizer = FusedAdam\n  zero_optimization_stage ...... 3\n")
    result = gpu_check.check_training(run, 4, output, "FusedAdam (JIT)")
    assert (result["steps"], result["first_loss"], result["last_loss"]) == (4, 4.0, 1.0)
    assert (result["backend"], result["zero_stage"], result["tokens_per_s"]) == ("nccl", 3, 350.0)
    assert "FusedAdam" in gpu_check.train_summary(result)
    with pytest.raises(gpu_check.StepFailed, match="not 1..6"):
        gpu_check.check_training(run, 6, output, "")
    on_cpu = "Setting accelerator to CPU. If you have GPU...\n" + output.replace("nccl", "gloo")
    with pytest.raises(gpu_check.StepFailed, match="ran on cpu, not cuda.*gloo, not nccl") as err:
        gpu_check.check_training(run, 4, on_cpu, "")
    assert err.value.result["steps"] == 4
    assert gpu_check.check_training(run, 4, on_cpu, "", allow_cpu=True)["accelerator"] == "cpu"
    (run / "train_log.jsonl").write_text("".join(json.dumps({**r, "loss": float(r["step"])}) + "\n" for r in rows),
                                         encoding="utf-8")
    with pytest.raises(gpu_check.StepFailed, match="did not fall"):
        gpu_check.check_training(run, 4, output, "")


# -- dry run and the work folder --------------------------------------------------------------------------------


def test_dry_run_prints_every_planned_command_and_runs_nothing(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "check", "--dry-run", "--work", str(work), "--out",
                                      str(tmp_path / "r.json")])
    code = gpu_check.main()
    printed = capsys.readouterr().out
    assert code == 0
    assert not work.exists() and not (tmp_path / "r.json").exists()
    for name in gpu_check.STEP_BUDGETS:
        assert f"[{name}] budget" in printed
    assert "pip install -q --no-index --no-deps" in printed and "'.whl/*.whl'" in printed
    # t5, gpt2, llama, resume's two runs, on-policy's two and the re-padded Llama of packed-kernels
    assert printed.count("launchers/launch.py --num_gpus 1") == 8
    assert "train.objective=on_policy" in printed and "train.on_policy.gather_for_generation=false" in printed
    assert "train.packed_attention=repad" in printed
    assert "train.stop_after_steps=20" in printed and "ds_configs/zero3.json" in printed
    assert "model.make_tiny=llama" in printed and "train.pack_sequences=true train.precision=bf16" in printed
    assert "cotdistill.cli eval" in printed and str(work / "gpt2" / "final") in printed
    assert "benchmarks/train_throughput.py --workloads tiny-gpt2 --ranks 1" in printed


def test_work_folder_not_made_by_the_check_is_never_emptied(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(SystemExit, match="not made by gpu_check.py"):
        gpu_check.prepare_work(mine)
    assert (mine / "keep.txt").is_file()
    ours = tmp_path / "ours"
    gpu_check.prepare_work(ours)
    (ours / "old.log").write_text("x", encoding="utf-8")
    gpu_check.prepare_work(ours)
    assert [p.name for p in ours.iterdir()] == [gpu_check.WORK_MARK]


# -- the install step -------------------------------------------------------------------------------------------


def install_context(tmp_path: Path, monkeypatch, refuse_environment: bool, import_errors: dict[str, str]):
    fill_wheels(tmp_path / ".whl", gpu_check.WHEELS)
    args = gpu_check.parse_args(["check", "--wheels", str(tmp_path / ".whl"), "--work", str(tmp_path / "work")])
    ctx = gpu_check.Context(work=tmp_path / "work", logs=tmp_path / "work" / "logs", args=args)
    calls = []

    def fake_run(cmd, deadline, name, env=None):
        calls.append((name, cmd))
        if name == "install-pip" and refuse_environment:
            raise gpu_check.StepFailed("ERROR: Could not install packages due to an OSError: [Errno 30] Read-only")
        if name == "install-imports":
            return json.dumps({"versions": {}, "import_errors": import_errors, "conflicts": []}) + "\n"
        return ""

    monkeypatch.setattr(ctx, "run", fake_run)
    return ctx, calls


def test_wheels_go_into_this_python_or_a_target_folder_when_it_refuses(tmp_path, monkeypatch):
    deadline = gpu_check.Deadline(time.monotonic() + 60)
    ctx, calls = install_context(tmp_path, monkeypatch, refuse_environment=False, import_errors={})
    result = gpu_check.run_install(ctx, deadline)
    assert [name for name, _ in calls] == ["install-pip", "install-imports"]
    assert "--target" not in calls[0][1] and "--no-index" in calls[0][1]
    assert len(result["wheels"]) == len(gpu_check.WHEELS) and result["installed_into"] == sys.prefix

    ctx, calls = install_context(tmp_path / "2", monkeypatch, refuse_environment=True, import_errors={})
    result = gpu_check.run_install(ctx, deadline)
    assert [name for name, _ in calls] == ["install-pip", "install-pip-target", "install-imports"]
    assert calls[1][1][calls[1][1].index("--target") + 1] == gpu_check.FALLBACK_TARGET
    assert result["installed_into"] == gpu_check.FALLBACK_TARGET and "Read-only" in result["environment_refused"]
    assert ctx.env()["PYTHONPATH"].split(":")[:2] == [gpu_check.FALLBACK_TARGET, str(REPO / "src")]


def test_install_fails_naming_each_import_that_failed(tmp_path, monkeypatch):
    ctx, _ = install_context(tmp_path, monkeypatch, refuse_environment=False,
                             import_errors={"datasets": "ImportError: pyarrow>=24 is required"})
    with pytest.raises(gpu_check.StepFailed, match="datasets: ImportError: pyarrow>=24") as err:
        gpu_check.run_install(ctx, gpu_check.Deadline(time.monotonic() + 60))
    assert err.value.result["import_errors"] == {"datasets": "ImportError: pyarrow>=24 is required"}


# -- resume and throughput results --------------------------------------------------------------------------------


def write_log(run: Path, losses: dict[int, float]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in losses.items()),
                                         encoding="utf-8")


@pytest.mark.parametrize(("drift", "tolerance", "passes"), [(0.0, 0.0, True), (1e-6, 0.0, False), (1e-6, 1e-5, True)])
def test_resume_compares_every_step_with_the_uninterrupted_run(tmp_path, monkeypatch, drift, tolerance, passes):
    args = gpu_check.parse_args(["check", "--train_steps", "4", "--resume_tolerance", str(tolerance)])
    ctx = gpu_check.Context(work=tmp_path, logs=tmp_path / "logs", args=args)
    reference = {1: 4.0, 2: 3.5, 3: 3.0, 4: 2.5}
    write_log(tmp_path / "gpt2", reference)
    commands = []

    def fake_run(cmd, deadline, name, env=None):
        commands.append(cmd)
        stop = next((int(a.split("=")[1]) for a in cmd if a.startswith("train.stop_after_steps=")), 4)
        write_log(tmp_path / "gpt2-resume", {s: v + (drift if s == 4 else 0.0) for s, v in reference.items()
                                             if s <= stop})
        return ""

    monkeypatch.setattr(ctx, "run", fake_run)
    deadline = gpu_check.Deadline(time.monotonic() + 60)
    if passes:
        result = gpu_check.run_resume(ctx, deadline)
    else:
        with pytest.raises(gpu_check.StepFailed, match="differ") as err:
            gpu_check.run_resume(ctx, deadline)
        result = err.value.result
    assert "train.stop_after_steps=2" in commands[0] and not any("stop_after" in a for a in commands[1])
    assert result["stopped_after"] == 2 and result["steps_compared"] == 4
    assert result["max_abs_loss_difference"] == pytest.approx(drift, abs=1e-12)
    assert result["first_differing_step"] == (4 if drift else None)


def test_throughput_result_keeps_both_trainers_and_the_speed_rule(tmp_path):
    def trainer(tokens: float, heldout: float) -> dict:
        return {"tokens_per_s": tokens, "heldout_loss": heldout, "mfu": 0.1, "peak_rss_gib": 1.0, "wall_s": 20.0}

    data = {"peaks": {"training_layout": "1 GPU: H100"}, "minutes": 1.5, "results": [
        {"workload": "tiny-gpt2", "ranks": 1, "steps": 60,
         "trainers": {"cotdistill": trainer(3000.0, 2.50), "HF Trainer": trainer(2000.0, 2.49)}},
        {"workload": "tiny-t5", "ranks": 1, "steps": 60,
         "trainers": {"cotdistill": trainer(3000.0, 2.60), "HF Trainer": trainer(2000.0, 2.50)}}]}
    (tmp_path / "t.json").write_text(json.dumps(data), encoding="utf-8")
    result = gpu_check.throughput_result(tmp_path / "t.json", "FusedAdam (JIT)")
    gpt2, t5 = result["workloads"]["tiny-gpt2"], result["workloads"]["tiny-t5"]
    assert gpt2["speedup"] == pytest.approx(1.5) and gpt2["meets_1_3x_rule"]
    assert not t5["meets_1_3x_rule"], "0.1 nats worse held-out loss must miss the rule"
    summary = gpu_check.throughput_summary(result)
    assert "tiny-gpt2: 3000 vs HF 2000 non-pad tokens/s (1.50x)" in summary and "misses the 1.3x rule" in summary


def test_fused_adam_that_does_not_build_switches_training_to_torch_adam(tmp_path, monkeypatch):
    ctx = fake_context(tmp_path)

    def no_nvcc(cmd, deadline, name, env=None):
        raise gpu_check.StepFailed("RuntimeError: Error building extension 'fused_adam'")

    monkeypatch.setattr(ctx, "run", no_nvcc)
    with pytest.raises(gpu_check.StepFailed, match="fused_adam"):
        gpu_check.run_ds_ops(ctx, gpu_check.Deadline(time.monotonic() + 60))
    assert ctx.ds_template == ctx.work / "zero3_torch_adam.json" and ctx.optimizer == gpu_check.TORCH_ADAM_NOTE
    template = json.loads(ctx.ds_template.read_text(encoding="utf-8"))
    original = json.loads((REPO / "ds_configs" / "zero3.json").read_text(encoding="utf-8"))
    assert template["optimizer"]["params"].pop("torch_adam") is True
    assert template == original
    assert f"deepspeed_config={ctx.ds_template}" in gpu_check.train_command(ctx, "gpt2", tmp_path / "run")


def test_report_path_that_cannot_be_written_stops_the_check_before_any_step(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    work = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "check", "--work", str(work), "--out", str(blocker / "r.json")])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    assert exit_.value.code != 0
    assert not work.exists()


def test_packed_kernel_check_compares_the_varlen_runs_first_loss_and_is_unavailable_without_the_kernel(
        tmp_path, monkeypatch):
    args = gpu_check.parse_args(["check", "--train_steps", "4"])
    ctx = gpu_check.Context(work=tmp_path, logs=tmp_path / "logs", args=args)
    deadline = gpu_check.Deadline(time.monotonic() + 60)
    write_log(tmp_path / "llama", {1: 4.0, 2: 3.5, 3: 3.0})
    ctx.logs.mkdir()
    (ctx.logs / "train-llama.log").write_text("x\npacked attention: examples re-padded inside each attention call "
                                              "(SDPA)\n", encoding="utf-8")
    with pytest.raises(gpu_check.StepUnavailable, match="did not use a varlen kernel"):
        gpu_check.run_packed_kernels(ctx, deadline)
    (ctx.logs / "train-llama.log").write_text("packed attention: one varlen flash-attention call per layer "
                                              "(torch.nn.attention.varlen.varlen_attn)\n", encoding="utf-8")
    commands = []

    def fake_run(cmd, deadline, name, env=None, first=4.01):
        commands.append(cmd)
        write_log(tmp_path / "llama-repad", {1: first, 2: 3.6, 3: 3.2})
        return ""

    monkeypatch.setattr(ctx, "run", fake_run)
    result = gpu_check.run_packed_kernels(ctx, deadline)
    assert "train.packed_attention=repad" in commands[0]
    assert result["kernel"].endswith("(torch.nn.attention.varlen.varlen_attn)")
    assert result["first_step_difference"] == pytest.approx(0.01)
    assert result["max_abs_loss_difference"] == pytest.approx(0.2)
    monkeypatch.setattr(ctx, "run", lambda *a, **k: fake_run(*a, first=4.5))
    with pytest.raises(gpu_check.StepFailed, match="step-1 loss differs"):
        gpu_check.run_packed_kernels(ctx, deadline)


def test_the_trainers_packed_attention_line_is_kept_with_the_training_facts():
    facts = gpu_check.deepspeed_facts("a\n[rank0] packed attention: one varlen flash-attention call per layer "
                                      "(flash_attn.flash_attn_varlen_func)\nb")
    assert facts["packed_attention"] == "one varlen flash-attention call per layer (flash_attn.flash_attn_varlen_func)"


def test_on_policy_check_wants_every_step_scored_and_both_sampling_modes_to_agree(tmp_path, monkeypatch):
    args = gpu_check.parse_args(["check"])
    ctx = gpu_check.Context(work=tmp_path, logs=tmp_path / "logs", args=args)
    deadline = gpu_check.Deadline(time.monotonic() + 60)
    steps = gpu_check.ON_POLICY_STEPS

    def fake_run(cmd, deadline, name, env=None, lockstep_first=1.0):
        out = Path(next(a for a in cmd if a.startswith("output_dir=")).partition("=")[2])
        out.mkdir(parents=True, exist_ok=True)
        first = lockstep_first if "gather_for_generation=false" in " ".join(cmd) else 1.0
        rows = [{"step": s, "divergence": first if s == 1 else 0.5, "completion_tokens": 20.0, "generate_s": 0.2,
                 "score_s": 0.1, "train_s": 0.1, "step_time_s": 0.4} for s in range(1, steps + 1)]
        (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return ""

    monkeypatch.setattr(ctx, "run", fake_run)
    result = gpu_check.run_on_policy(ctx, deadline)
    assert set(result) == {"gathered", "lockstep"} and result["gathered"]["divergence"][0] == 1.0
    assert "gathered: 0.40 s/step" in gpu_check.on_policy_summary(result)
    monkeypatch.setattr(ctx, "run", lambda *a, **k: fake_run(*a, lockstep_first=1.5))
    with pytest.raises(gpu_check.StepFailed, match="differs between gathered and lockstep"):
        gpu_check.run_on_policy(ctx, deadline)
