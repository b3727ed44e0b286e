"""Help that stands on its own: every command's --help, the --keys listings, and the data summary's format split."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from cotdistill import cli
from cotdistill.config import EvalRunConfig
from cotdistill.formats import Example, build_examples, format_split
from cotdistill.problems.synthetic import SyntheticSpec, generate_problems
from cotdistill.run_data import RUN_DATASETS

CLI = Path(sys.executable).parent / "cotdistill"
EVERY_COMMAND = ["build-data", "eval", "eval-checkpoints", "make-tiny", "make-random", "export", "show-config",
                 "plan-memory"]


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) of every leaf field, walked here independently of the code under test."""
    found = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            found += leaf_fields(type(value), f"{prefix}{f.name}.")
        else:
            found.append((f"{prefix}{f.name}", value, f.metadata["help"]))
    return found


def entries(help_text: str) -> dict[str, str]:
    """An entry's first line ('  --name  (default: x)') -> its help text, joined from the indented lines below."""
    found: dict[str, str] = {}
    head = ""
    for line in help_text.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            head = line.strip()
            found[head] = ""
        elif head and line.startswith("      "):
            found[head] = (found[head] + " " + line.strip()).strip()
        else:
            head = ""
    return found


def printed_help(argv: list[str], capsys) -> str:
    cli.main(argv)
    return capsys.readouterr().out


# --- --help ------------------------------------------------------------------------------------------------


def test_eval_help_exits_0_and_lists_every_eval_config_key_with_its_default_and_help():
    done = subprocess.run([str(CLI), "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = entries(done.stdout)
    keys = [key for key in leaf_fields(EvalRunConfig) if key[0] != "model"]
    assert len(keys) > 25  # the spec, the job's own keys and the nested synthetic.* keys
    for name, default, help_text in keys:
        head = next((h for h in listed if h.split()[0] == f"--{name}"), None)
        assert head is not None, f"--{name} is not listed"
        typed = ",".join(default) if isinstance(default, list) else ("''" if default == "" else str(default))
        assert head == f"--{name}  (default: {typed})", head
        assert listed[head].startswith(" ".join(help_text.split()[:4])), (name, listed[head])
    assert "MODEL" in listed and listed["MODEL"].startswith("exported Hugging Face folder")


def test_eval_help_shows_defaults_as_they_are_typed():
    listed = entries(subprocess.run([str(CLI), "eval", "--help"], capture_output=True, text=True,
                                    timeout=120).stdout)
    assert "--datasets  (default: gsm8k)" in listed
    assert "--strategy  (default: '')" in listed
    assert "--max_new_tokens  (default: 256)" in listed
    assert "--synthetic.operations  (default: add,sub)" in listed


@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_every_command_lists_each_parameter_with_a_help_text(command, capsys):
    text = printed_help([command, "--help"], capsys)
    assert text.startswith(f"usage: cotdistill {command}")
    listed = entries(text)
    params = inspect.signature(cli.COMMANDS[command]).parameters.values()
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            continue
        name = ("KEY=VALUE ..." if p.kind is p.VAR_POSITIONAL else
                p.name.upper() if p.default is p.empty else f"--{p.name}")
        head = next((h for h in listed if h.split("  (")[0] == name), None)
        assert head is not None, f"{command}: {name} is not listed"
        assert listed[head] and listed[head] != "(no help text)", f"{command}: {name} has no help"
        if p.default is not p.empty and p.kind is not p.VAR_POSITIONAL:
            assert "(default: " in head


def test_eval_checkpoints_lists_the_eval_flags_but_its_run_dir_instead_of_a_model_flag(capsys):
    listed = [head.split("  (")[0] for head in entries(printed_help(["eval-checkpoints", "--help"], capsys))]
    assert "RUN_DIR" in listed and "--model" not in listed
    assert {"--max_new_tokens", "--synthetic.operand_max", "--in_distribution", "--output_dir"} <= set(listed)
    assert listed.count("--output_dir") == 1  # its own (RUN_DIR/checkpoint_selection), not eval's as well


def test_help_anywhere_among_a_commands_arguments_is_help_but_not_after_the_separator():
    assert cli.asks_for_help(["runs/x", "--datasets", "gsm8k", "--help"])
    assert cli.asks_for_help(["-h"])
    assert not cli.asks_for_help(["runs/x", "--", "--help"])
    assert not cli.asks_for_help(["runs/x", "--datasets", "gsm8k"])


@pytest.mark.parametrize("script, flag", [("launchers/evaluate.py", "--max_new_tokens"),
                                          ("launchers/eval_checkpoints.py", "--in_distribution")])
def test_the_evaluation_launchers_print_the_same_help_and_exit_0(script, flag):
    done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: deepspeed {script}")
    assert f"  {flag}  (default: " in done.stdout


# --- --keys ------------------------------------------------------------------------------------------------


def dataset_line(listing: str, key: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(f"{key} = "))


@pytest.mark.parametrize("argv, key", [([sys.executable, "launchers/train.py", "--keys"], "data.dataset"),
                                       ([sys.executable, "launchers/build_data.py", "--keys"], "problems.dataset"),
                                       ([str(CLI), "show-config", "--keys"], "data.dataset"),
                                       ([str(CLI), "build-data", "--keys"], "problems.dataset")])
def test_keys_list_every_data_set_validation_accepts_including_teacher_data(argv, key):
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    accepted = dataset_line(done.stdout, key).split("one of: ", 1)[1].split(", ")
    assert accepted == list(RUN_DATASETS)
    assert "teacher_data" in accepted


# --- the data summary's format split ----------------------------------------------------------------------


def fake(fmt: str, n: int) -> list[Example]:
    return [Example(f"p{i}", fmt, "source", "target") for i in range(n)]


def test_format_split_reports_the_examples_built_per_format():
    examples = fake("solver", 4042) + fake("decomposer", 2000)
    assert format_split(examples) == "decomposer 2,000 (33%), solver 4,042 (67%)"


def test_format_split_of_a_socratic_mixture_differs_from_its_equal_weights():
    problems = generate_problems(SyntheticSpec(n=40, seed=3, min_steps=2, max_steps=3))
    examples = build_examples(problems, {"decomposer": 1.0, "solver": 1.0}, per_problem=True)
    solver = sum(e.format == "solver" for e in examples)
    assert solver > 40  # one solver example per sub-question, one decomposer example per problem
    expected = f"decomposer 40 ({40 / len(examples):.0%}), solver {solver} ({solver / len(examples):.0%})"
    assert format_split(examples) == expected
    assert "50%" not in format_split(examples)
