"""The ``cotdistill`` command (python-fire): build-data, eval, eval-checkpoints, make-tiny, make-random, export,
show-config, plan-memory.

Training runs through ``deepspeed launchers/train.py`` so that the DeepSpeed launcher owns the ranks.
``cotdistill COMMAND --help`` prints the command's own help (``command_help``): its arguments and flags with
their defaults and help texts, read from the function's signature and docstring ``Args:`` section and, for
the evaluation commands, from the fields of ``EvalRunConfig`` (their flags), so no list is kept twice.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire

from cotdistill.config import (
    BuildConfig,
    ConfigKey,
    EvalRunConfig,
    RunConfig,
    config_keys,
    describe_config,
    load_config,
    to_yaml,
    validate_run,
)
from cotdistill.entrypoints import exit_without_teardown, run_or_exit
from cotdistill.run_folder import RunFolder

OVERRIDES_HELP = "dotted config overrides KEY=VALUE, e.g. train.max_steps=20"


def _recipe_texts(config: str, overrides: tuple[str, ...]):
    """A recipe's run config and the texts its run trains on (to train a model's tokenizer on)."""
    from cotdistill.run_data import load_run_problems, run_examples

    run = load_config(config or None, list(overrides))
    problems, _ = load_run_problems(run.data)
    return run, [e.source + e.target for e in run_examples(run, problems)]


def make_tiny(architecture: str, out_dir: str, config: str = "", *overrides: str) -> str:
    """Write a tiny random student of a registered family with a tokenizer trained on a recipe's data.

    Example: cotdistill make-tiny llama runs/tiny-llama --config recipes/demo-gpt2-synthetic.yaml

    Args:
        architecture: t5 | umt5 | gpt2 | llama | qwen2 | qwen3 | gemma3 (cotdistill.families)
        out_dir: folder to write the model and tokenizer to (must not exist)
        config: training recipe whose texts train the tokenizer and whose model.tiny sets the size ('': defaults)
        overrides: dotted run-config overrides KEY=VALUE, e.g. model.tiny.d_model=64 (cotdistill show-config
            --keys lists them)
    """

    def work() -> str:
        from cotdistill.tiny import build_tiny_model

        run, texts = _recipe_texts(config, overrides)
        return str(build_tiny_model(architecture, out_dir, texts, run.model.tiny, seed=run.train.seed))

    return run_or_exit(work)


def make_random(model: str, out_dir: str, config: str = "", *overrides: str) -> str:
    """Write a full-size architecture (gpt2-large, flan-t5-xl, qwen2.5-0.5b, a hub id or config .json) with random
    weights and a tokenizer of its family (T5, GPT-2, Llama, Qwen or Gemma style) trained on a recipe's data: real sizes
    for speed and memory runs, no download.

    Example: cotdistill make-random gpt2-large runs/random-gpt2-large --config recipes/demo-gpt2-synthetic.yaml

    Args:
        model: shipped size (gpt2-large, flan-t5-xl, ...), hub id or config .json whose architecture is built
        out_dir: folder to write the model and tokenizer to (must not exist)
        config: training recipe whose texts train the tokenizer ('': defaults)
        overrides: dotted run-config overrides KEY=VALUE, e.g. train.seed=1 (cotdistill show-config --keys lists
            them)
    """

    def work() -> str:
        from cotdistill.tiny import build_random_model

        run, texts = _recipe_texts(config, overrides)
        return str(build_random_model(model, out_dir, texts, seed=run.train.seed))

    return run_or_exit(work)


def export(checkpoint: str, out_dir: str, dtype: str = "bf16") -> str:
    """Consolidate a saved checkpoint (any world size) into Hugging Face weights, on CPU.

    Example: cotdistill export runs/demo-t5/checkpoints/step-000200 runs/demo-t5/step200-hf

    Args:
        checkpoint: a saved checkpoint folder (runs/NAME/checkpoints/step-NNNNNN)
        out_dir: folder for the Hugging Face weights and tokenizer
        dtype: bf16 | fp16 | fp32: dtype of the written weights
    """
    from cotdistill.export import export_checkpoint

    return str(run_or_exit(lambda: export_checkpoint(Path(checkpoint), Path(out_dir), dtype=dtype)))


def evaluate(model: str, **options) -> str:
    """Accuracy of a student on data sets; prints the summary table and writes predictions and metrics.

    Example: cotdistill eval runs/demo-gpt2/final --datasets gsm8k,svamp --strategy few_shot_cot --k_shot 4
    Socratic: --strategy socratic [--decomposer D --solver S] [--subquestions gold] (default: MODEL plays both).
    Protocols: --protocol cotdistill | kojima | lm-eval (how prompts are written and answers read).
    Across ranks: deepspeed launchers/evaluate.py MODEL [flags], with the same flags.
    """
    request = run_or_exit(lambda: _eval_request(model, options))
    from cotdistill.evaluate import run_evaluation, settings_line, summary_table

    reports = run_or_exit(lambda: run_evaluation(request))
    return f"{summary_table(reports)}\n\n{settings_line(reports)}"


def _eval_request(model: str, options: dict):
    """The evaluation config of a CLI call; inside a run, ``synthetic`` is generated with the run's settings."""
    import os

    from cotdistill.config import eval_config
    from cotdistill.logs import setup_logging
    from cotdistill.runs import with_run_synthetic
    from cotdistill.targets import check_eval_request

    options, note = with_run_synthetic(model, options)
    config = eval_config({"model": model, **options})
    if note:
        setup_logging(int(os.environ.get("RANK", "0"))).info(note)
    check_eval_request(config)  # here, before the evaluator's imports (torch, transformers, DeepSpeed) take seconds
    return config


def eval_checkpoints(run_dir: str, in_distribution: str = "", output_dir: str = "", **options) -> str:
    """Evaluate every saved checkpoint of a run; table, PNG plot and the best checkpoint per data set.

    Example: cotdistill eval-checkpoints runs/flan-t5-base --datasets gsm8k,multiarith,asdiv,svamp
    Takes every flag of cotdistill eval; across ranks: deepspeed launchers/eval_checkpoints.py RUN_DIR [flags].

    Args:
        run_dir: a training run's folder (its checkpoints/ are evaluated)
        in_distribution: the data set the best checkpoint is chosen on ('': the first of --datasets)
        output_dir: folder for the table, plot and per-checkpoint results ('': RUN_DIR/checkpoint_selection)
    """
    options["output_dir"] = output_dir or str(RunFolder(run_dir).selection)
    request = run_or_exit(lambda: _eval_request(run_dir, options))
    from cotdistill.checkpoint_selection import evaluate_checkpoints

    selection = run_or_exit(lambda: evaluate_checkpoints(request, in_distribution))
    return selection.table()


def build_data(config: str = "", *overrides: str, keys: bool = False) -> str:
    """Sample, verify and decompose teacher traces into a dataset folder; prints the manifest's path.

    Example: cotdistill build-data --config recipes/data/gsm8k-vllm.yaml teacher.base_url=http://gpu1:8000/v1
    Killed builds resume from their cache when run again.

    Args:
        config: data-build recipe (recipes/data/*.yaml; '': defaults)
        overrides: dotted build-config overrides KEY=VALUE, e.g. cot.samples=8 (--keys lists them)
        keys: list every build-config key with its default and help, and exit
    """
    from cotdistill.config import load_build_config
    from cotdistill.logs import setup_logging
    from cotdistill.teacher.builder import build_dataset

    if keys:
        return "\n".join(describe_config(BuildConfig))
    setup_logging()
    return str(run_or_exit(lambda: build_dataset(load_build_config(config or None, list(overrides)))))


def show_config(config: str = "", *overrides: str, keys: bool = False) -> None:
    """Print the fully resolved run config of a recipe with overrides applied, validated as training validates
    it (``validate_run``), so a recipe it prints does not fail at launch.

    Example: cotdistill show-config --config recipes/demo-t5-synthetic.yaml train.lr=1e-3

    Args:
        config: training recipe (recipes/*.yaml; '': defaults)
        overrides: dotted run-config overrides KEY=VALUE, e.g. train.max_steps=20 (--keys lists them)
        keys: list every run-config key with its default and help (as launchers/train.py --keys), and exit
    """
    if keys:
        print("\n".join(describe_config(RunConfig)))
        return

    def work() -> RunConfig:
        run = load_config(config or None, list(overrides))
        validate_run(run)
        return run

    print(to_yaml(run_or_exit(work)), end="")


def plan_memory(model: str = "", nodes: int = 1, gpus_per_node: int = 1, recipe: str = "",
                micro_batch_size: int = 0, source_tokens: int = 0, target_tokens: int = 0, precision: str = "",
                gradient_checkpointing: bool | None = None, gpu_gib: float = 80, ram_gib: float = 0) -> str:
    """GPU, CPU and NVMe memory of every ZeRO setting for a model, from its config alone (no GPU, no weights).

    Example: cotdistill plan-memory --model flan-t5-xxl --nodes 2 --gpus-per-node 8
    With --recipe the model, micro-batch, lengths, precision and checkpointing come from the recipe; the
    other flags override them (0 or '': not set). Memory is in GiB per GPU or per node, as each column says.
    The last two lines recommend a setting for the --nodes x --gpus_per_node GPUs asked for, and name the
    fewest --gpu_gib GPUs that fit (on nodes of --gpus_per_node GPUs; of 8 when it is 1).

    Args:
        model: shipped size (flan-t5-xxl, gpt2-large, ...), hub id, local folder or config .json
        nodes: machines
        gpus_per_node: GPUs per machine
        recipe: training recipe to read the model and workload from ('': none)
        micro_batch_size: examples per GPU per forward (0: the recipe's, else 8)
        source_tokens: prompt tokens per example (0: the recipe's data.max_source_tokens, else 256)
        target_tokens: target tokens per example (0: the recipe's data.max_target_tokens, else 192)
        precision: bf16 | fp16 | fp32 ('': the recipe's, else bf16)
        gradient_checkpointing: true | false (unset: the recipe's, else false)
        gpu_gib: memory of one GPU, GiB
        ram_gib: host memory per node, GiB; settings that need more are not recommended (0: no limit)
    """
    from cotdistill.memory_plan import plan, render_plan

    def work() -> str:
        result = plan(str(model), nodes, gpus_per_node, recipe=recipe or None,
                      micro_batch_size=micro_batch_size or None, source_tokens=source_tokens or None,
                      target_tokens=target_tokens or None, precision=precision or None,
                      gradient_checkpointing=gradient_checkpointing)
        return render_plan(result, gpu_gib=gpu_gib, ram_gib=ram_gib or None)

    return run_or_exit(work)


COMMANDS: dict[str, Callable[..., Any]] = {
    "build-data": build_data, "eval": evaluate, "eval-checkpoints": eval_checkpoints, "make-tiny": make_tiny,
    "make-random": make_random, "export": export, "show-config": show_config, "plan-memory": plan_memory,
}
# Commands whose **options are the keys of a config dataclass: those keys are their flags (MODEL is positional).
CONFIG_FLAGS: dict[str, tuple[type, frozenset[str]]] = {
    "eval": (EvalRunConfig, frozenset({"model"})),
    "eval-checkpoints": (EvalRunConfig, frozenset({"model"})),
}


def _docstring_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """A function's docstring without its ``Args:`` section, and that section's help text by argument name."""
    text = inspect.getdoc(fn) or ""
    body, _, args = text.partition("\nArgs:\n")
    helps: dict[str, str] = {}
    name = ""
    for line in args.splitlines():
        if line.startswith("    ") and not line.startswith("     ") and ":" in line:
            name, _, first = line.strip().partition(":")
            helps[name] = first.strip()
        elif name and line.strip():
            helps[name] += " " + line.strip()
    return body.strip(), helps


def _shown(value: Any) -> str:
    """A default as it would be typed on the command line ('' for an empty string, lists comma-separated)."""
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "[]"
    if isinstance(value, dict):
        return str(value) if value else "{}"
    return "''" if value == "" else str(value)


def _entry(flag: str, default: Any, help_text: str) -> list[str]:
    """One argument or flag: its name and default on one line, its help wrapped below it."""
    head = f"  {flag}" + ("" if default is inspect.Parameter.empty else f"  (default: {_shown(default)})")
    body = textwrap.wrap(help_text or "(no help text)", width=100, initial_indent=" " * 6,
                         subsequent_indent=" " * 6, break_on_hyphens=False)
    return [head, *body]


def _config_keys_of(name: str) -> tuple[list[ConfigKey], frozenset[str]]:
    """The config keys behind a command's **options, and those of them that are not flags (none: no options)."""
    if name not in CONFIG_FLAGS:
        return [], frozenset()
    cls, excluded = CONFIG_FLAGS[name]
    return config_keys(cls), excluded


def _argument_lines(params: list[inspect.Parameter], helps: dict[str, str]) -> list[str]:
    """The positional arguments (NAME) and the KEY=VALUE overrides of a command, if it has any."""
    lines = []
    for p in params:
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty:
            lines += _entry(p.name.upper(), p.empty, helps.get(p.name, ""))
        elif p.kind is p.VAR_POSITIONAL:
            lines += _entry("KEY=VALUE ...", p.empty, helps.get(p.name, OVERRIDES_HELP))
    return ["", "arguments:", *lines] if lines else []


def _flag_lines(params: list[inspect.Parameter], helps: dict[str, str], keys: list[ConfigKey]) -> list[str]:
    """The flags: parameters with a default, then the config keys the command takes, minus those it names."""
    lines = ["", "flags (--name VALUE or --name=VALUE; lists comma-separated):"]
    for p in params:
        if p.default is not p.empty:
            lines += _entry(f"--{p.name}", p.default, helps.get(p.name, ""))
    named = {p.name for p in params}
    for key in keys:
        if key.name not in named:
            lines += _entry(f"--{key.name}", key.default, key.help)
    return lines


def command_help(name: str, prog: str = "") -> str:
    """``cotdistill NAME --help``: usage, description, then every argument and flag with default and help.

    Parameters come from the signature (defaults included) and the docstring's ``Args:`` (else the config key
    of the same name); a command that takes a config's keys as flags lists every leaf key of that dataclass,
    nested ones as --section.key. ``prog`` names the program in the usage line (default ``cotdistill NAME``;
    a launcher passes its own).
    """
    fn = COMMANDS[name]
    description, helps = _docstring_parts(fn)
    keys, excluded = _config_keys_of(name)
    helps = {**{key.name: key.help for key in keys}, **helps}
    keys = [key for key in keys if key.name not in excluded]
    params = list(inspect.signature(fn).parameters.values())
    positional = [p.name.upper() for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    overrides = ["[KEY=VALUE ...]" for p in params if p.kind is p.VAR_POSITIONAL]
    usage = " ".join([f"usage: {prog or 'cotdistill ' + name}", *positional, *overrides, "[--FLAG VALUE ...]"])
    lines = [usage, "", description, *_argument_lines(params, helps), *_flag_lines(params, helps, keys)]
    return "\n".join(lines)


def asks_for_help(args: list[str]) -> bool:
    """--help (or -h) among a command's own arguments, before any ``--`` separator: python-fire would pass it on
    to a command that takes **options as one more option, fail, and exit 2."""
    own = args[:args.index("--")] if "--" in args else args
    return "--help" in own or "-h" in own


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in COMMANDS and asks_for_help(args[1:]):
        print(command_help(args[0]))
        return
    fire.Fire(COMMANDS, command=args)


def console_main() -> None:
    """The ``cotdistill`` command: ``main`` ended as every entry point that may start torch.distributed is."""
    exit_without_teardown(main)


if __name__ == "__main__":
    console_main()
