"""The ``cotdistill`` command (python-fire): build-data, eval, eval-checkpoints, make-tiny, make-random, export,
show-config, plan-memory.

Training runs through ``deepspeed launchers/train.py`` so that the DeepSpeed launcher owns the ranks.
"""

from __future__ import annotations

from pathlib import Path

import fire

from cotdistill.config import RunConfig, load_config, to_yaml, validate_run
from cotdistill.entrypoints import run_or_exit


def _recipe_texts(config: str, overrides: tuple[str, ...]):
    """A recipe's run config and the texts its run trains on (to train a model's tokenizer on)."""
    from cotdistill.run_data import load_run_problems, run_examples

    run = load_config(config or None, list(overrides))
    problems, _ = load_run_problems(run.data)
    return run, [e.source + e.target for e in run_examples(run, problems)]


def make_tiny(architecture: str, out_dir: str, config: str = "", *overrides: str) -> str:
    """Write a tiny random T5 or GPT-2 (architecture: t5 | gpt2) with a tokenizer trained on a recipe's data.

    Example: cotdistill make-tiny t5 runs/tiny-t5 --config recipes/demo-t5-synthetic.yaml
    """

    def work() -> str:
        from cotdistill.tiny import build_tiny_model

        run, texts = _recipe_texts(config, overrides)
        return str(build_tiny_model(architecture, out_dir, texts, run.model.tiny, seed=run.train.seed))

    return run_or_exit(work)


def make_random(model: str, out_dir: str, config: str = "", *overrides: str) -> str:
    """Write a full-size architecture (gpt2-large, flan-t5-xl, a hub id or config .json) with random weights and
    a tokenizer trained on a recipe's data: real sizes for speed and memory runs, no download.

    Example: cotdistill make-random gpt2-large runs/random-gpt2-large --config recipes/demo-gpt2-synthetic.yaml
    """

    def work() -> str:
        from cotdistill.tiny import build_random_model

        run, texts = _recipe_texts(config, overrides)
        return str(build_random_model(model, out_dir, texts, seed=run.train.seed))

    return run_or_exit(work)


def export(checkpoint: str, out_dir: str, dtype: str = "bf16") -> str:
    """Consolidate a saved checkpoint (any world size) into Hugging Face weights, on CPU.

    Example: cotdistill export runs/demo-t5/checkpoints/step-000200 runs/demo-t5/step200-hf
    """
    from cotdistill.export import export_checkpoint

    return str(run_or_exit(lambda: export_checkpoint(Path(checkpoint), Path(out_dir), dtype=dtype)))


def evaluate(model: str, **options) -> str:
    """Accuracy of a student on data sets; prints the summary table and writes predictions and metrics.

    Example: cotdistill eval runs/demo-gpt2/final --datasets gsm8k,svamp --strategy few_shot_cot --k_shot 4
    Socratic: --strategy socratic [--decomposer D --solver S] [--subquestions gold] (default: MODEL plays both).
    Protocols: --protocol cotdistill | kojima | lm-eval (how prompts are written and answers read).
    Options are the keys of EvalRunConfig (see README); across ranks use deepspeed launchers/evaluate.py.
    """
    from cotdistill.evaluate import run_evaluation, settings_line, summary_table

    reports = run_or_exit(lambda: run_evaluation(_eval_request(model, options)))
    return f"{summary_table(reports)}\n\n{settings_line(reports)}"


def _eval_request(model: str, options: dict):
    """The evaluation config of a CLI call; inside a run, ``synthetic`` is generated with the run's settings."""
    import os

    from cotdistill.config import eval_config
    from cotdistill.logs import setup_logging
    from cotdistill.runs import with_run_synthetic

    options, note = with_run_synthetic(model, options)
    config = eval_config({"model": model, **options})
    if note:
        setup_logging(int(os.environ.get("RANK", "0"))).info(note)
    return config


def eval_checkpoints(run_dir: str, in_distribution: str = "", **options) -> str:
    """Evaluate every saved checkpoint of a run; table, PNG plot and the best checkpoint per data set.

    Example: cotdistill eval-checkpoints runs/flan-t5-base --datasets gsm8k,multiarith,asdiv,svamp
    The first data set is in-distribution unless --in_distribution names another.
    """
    from cotdistill.checkpoint_selection import evaluate_checkpoints

    options.setdefault("output_dir", str(Path(run_dir) / "checkpoint_selection"))
    selection = run_or_exit(lambda: evaluate_checkpoints(_eval_request(run_dir, options), in_distribution))
    return selection.table()


def build_data(config: str = "", *overrides: str) -> str:
    """Sample, verify and decompose teacher traces into a dataset folder; prints the manifest's path.

    Example: cotdistill build-data --config recipes/data/gsm8k-vllm.yaml teacher.base_url=http://gpu1:8000/v1
    Keys: python launchers/build_data.py --keys. Killed builds resume from their cache when run again.
    """
    from cotdistill.config import load_build_config
    from cotdistill.logs import setup_logging
    from cotdistill.teacher.builder import build_dataset

    setup_logging()
    return str(run_or_exit(lambda: build_dataset(load_build_config(config or None, list(overrides)))))


def show_config(config: str = "", *overrides: str) -> None:
    """Print the fully resolved run config of a recipe with overrides applied, validated as training validates
    it (``validate_run``), so a recipe it prints does not fail at launch."""

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
    other flags override them (0 or '': not set). The last line names the fewest --gpu_gib GPUs that fit.
    """
    from cotdistill.memory_plan import plan, render_plan

    def work() -> str:
        result = plan(str(model), nodes, gpus_per_node, recipe=recipe or None,
                      micro_batch_size=micro_batch_size or None, source_tokens=source_tokens or None,
                      target_tokens=target_tokens or None, precision=precision or None,
                      gradient_checkpointing=gradient_checkpointing)
        return render_plan(result, gpu_gib=gpu_gib, ram_gib=ram_gib or None)

    return run_or_exit(work)


def main() -> None:
    fire.Fire({"build-data": build_data, "eval": evaluate, "eval-checkpoints": eval_checkpoints,
               "make-tiny": make_tiny, "make-random": make_random, "export": export, "show-config": show_config,
               "plan-memory": plan_memory})


if __name__ == "__main__":
    main()
