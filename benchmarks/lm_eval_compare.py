"""cotdistill's ``--protocol lm-eval`` against EleutherAI's lm-evaluation-harness on the same student and problems.

A number reported "under the lm-eval protocol" is only worth quoting if the harness itself would give it, so both
evaluators run here, offline, on the same exported student, the same GSM8K problems and the same demonstrations,
with greedy decoding and batch size 1, and are compared problem by problem: prompt text, generated text, the
strict-match and flexible-extract answers and their correctness, and the accuracies under both filters.

    python benchmarks/lm_eval_compare.py --model DIR --problems 50 --k_shot 0 3 --out runs/bench-lm-eval/result.json

- The problems are the first --problems of GSM8K test, the demonstrations the first max(--k_shot) of GSM8K train,
  both read with cotdistill's loader (calculator marks stripped, solution lines stripped, "####" answer without
  thousands separators) and written to two local JSONL files as {"question", "answer": "<solution>\\n#### N"},
  so both sides read the same text.
- The harness runs the task in lm_eval_gsm8k_local.yaml (its own gsm8k task with local files and the first-k
  sampler; see that file) through ``lm_eval.simple_evaluate`` with model ``hf``
  (pretrained=DIR, dtype=float32, batch_size 1, CPU), ``log_samples`` for the per-problem texts,
  HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set.
- cotdistill runs as ``python -m cotdistill.cli eval DIR --protocol lm-eval --strategy zero_shot_cot|few_shot_cot
  --k_shot K --datasets TEST --demos DEMOS --precision fp32 --zero_stage 0 --batch_size 1 --max_new_tokens N
  --max_prompt_tokens P`` with P = the model's context length minus N (a T5's whole context length): the harness
  keeps the last P prompt tokens (``max_length - max_gen_toks``; ``max_length`` for an encoder-decoder) and so does
  cotdistill with that setting; ``truncated`` in the JSON counts the prompts that were cut (neither evaluator
  differs there, but their scores then mean little).
- ``--make_memorizer`` first builds DIR when it does not exist: a tiny GPT-2 trained for a few hundred steps on
  these problems' own solutions, each written one of four ways (right ``#### N``; wrong ``#### N+1``; no
  ``####`` line but "The answer is N."; ``#### N.`` then a wrong last number), so that greedy outputs contain
  "####" lines, stop strings, trailing periods and both right and wrong answers under each filter. Its accuracy
  measures nothing; a random tiny model's junk text would exercise almost none of the extraction paths.
- ``--verbatim`` gives both evaluators the official GSM8K lines unchanged instead: the harness then shows the
  demonstrations with their ``<<48/2=24>>`` calculator marks and "#### 1,600" as written, while cotdistill's loader
  removes the marks and the separators, so few-shot prompts differ (the one difference docs/BENCHMARKS.md names).

Writes the JSON (--out): settings, per k: both sides' accuracies per filter, agreement counts, wall times and
every problem on which anything differs, with both sides' text. Prints a Markdown table. Exits 1 on a difference.
The harness's seconds are its simple_evaluate call (model load, data set build, generation) in this process;
cotdistill's are its whole CLI process (interpreter start, imports, engine, model load, generation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from cotdistill.entrypoints import run_or_exit
from cotdistill.outputs import check_output_file

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("lm_eval_gsm8k_local.yaml")
TASK = "gsm8k_local"
FILTERS = ("strict-match", "flexible-extract")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class Side:
    """One evaluator's view of one problem."""

    prompt: str
    generated: str
    extracted: dict[str, str]  # filter -> answer ("[invalid]": none)
    correct: dict[str, bool]  # filter -> exact match with the gold answer


def default_data_dir() -> Path:
    return Path(os.environ.get("COTDISTILL_DATA_DIR") or REPO.parent / "shared" / "data")


def gsm8k_record(problem: Any) -> dict[str, str]:
    """A problem as GSM8K's own JSONL writes it; the rationale is cotdistill's (calculator marks already gone)."""
    return {"question": problem.question, "answer": f"{problem.rationale}\n#### {problem.answer}"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_problem_files(data_dir: Path, problems: int, demos: int, folder: Path,
                        verbatim: bool = False) -> tuple[list[Any], Path, Path]:
    """The first ``problems`` GSM8K test problems and ``demos`` train problems as two local JSONL files;
    returns the test problems too. ``verbatim``: the official lines as they are (calculator marks, "1,600")."""
    from cotdistill.problems.gsm8k import gsm8k_file, read_gsm8k

    test = read_gsm8k(gsm8k_file(data_dir, "test"), "test")[:problems]
    if verbatim:
        files = []
        for split, name, count in (("test", "gsm8k_test", problems), ("train", "gsm8k_demos", max(demos, 1))):
            lines = gsm8k_file(data_dir, split).read_text(encoding="utf-8").splitlines(keepends=True)[:count]
            files.append(folder / f"{name}.jsonl")
            files[-1].parent.mkdir(parents=True, exist_ok=True)
            files[-1].write_text("".join(lines), encoding="utf-8")
        return test, files[0], files[1]
    train = read_gsm8k(gsm8k_file(data_dir, "train"), "train")[: max(demos, 1)]
    return (test, write_jsonl(folder / "gsm8k_test.jsonl", [gsm8k_record(p) for p in test]),
            write_jsonl(folder / "gsm8k_demos.jsonl", [gsm8k_record(p) for p in train]))


def write_task(folder: Path, test_file: Path, demo_file: Path, max_new_tokens: int) -> Path:
    """The harness's gsm8k task (lm_eval_gsm8k_local.yaml) with the local files and the generation budget."""
    task = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    task["dataset_kwargs"]["data_files"] = {"test": str(test_file.resolve()), "train": str(demo_file.resolve())}
    task["generation_kwargs"]["max_gen_toks"] = max_new_tokens
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return folder


def memorized_target(problem: Any, variant: int) -> str:
    """One of four ways to end a solution, so the memorizer's outputs hit every extraction path (module doc)."""
    gold = problem.answer
    wrong = str(int(gold) + 1) if gold.lstrip("-").isdigit() else gold + "1"
    ending = [f"#### {gold}", f"#### {wrong}", f"The answer is {gold}.", f"#### {gold}.\nSo it is {wrong}"][variant % 4]
    return f"{problem.rationale}\n{ending}"


def make_memorizer(out_dir: Path, problems: list[Any], corpus: list[Any], steps: int = 300, seed: int = 0) -> Path:
    """A tiny GPT-2 (tokenizer trained on GSM8K text, 1024 positions) trained to recite ``problems``' solutions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.config import TinyModelConfig
    from cotdistill.tiny import build_tiny_model

    texts = [f"Question: {p.question}\nAnswer: {p.rationale}\n#### {p.answer}" for p in [*corpus, *problems]]
    size = TinyModelConfig(vocab_size=1000, d_model=128, num_layers=2, num_heads=4, d_ff=256, n_positions=1024)
    docs = [f"Question: {p.question}\nAnswer: {memorized_target(p, i)}\n\nQuestion:" for i, p in enumerate(problems)]
    with tempfile.TemporaryDirectory() as tmp:
        initial = build_tiny_model("gpt2", Path(tmp) / "initial", texts, size, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(initial)
        model = AutoModelForCausalLM.from_pretrained(initial, dtype=torch.float32)
        recite(model, [tokenizer(doc)["input_ids"] for doc in docs], tokenizer.pad_token_id, steps, seed)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return out_dir


def recite(model: Any, docs: list[list[int]], pad_id: int, steps: int, seed: int) -> None:
    """Plain AdamW steps on random batches of whole documents until the model reproduces them greedily."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batch_size = min(8, len(docs))
    model.train()
    try:
        for _ in range(steps):
            chosen = [docs[i] for i in torch.randperm(len(docs), generator=generator)[:batch_size].tolist()]
            ids = torch.full((batch_size, max(map(len, chosen))), pad_id)
            labels = torch.full_like(ids, -100)
            for row, doc in enumerate(chosen):
                ids[row, : len(doc)] = labels[row, : len(doc)] = torch.tensor(doc)
            model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        model.eval()


def run_harness(model: Path, task_dir: Path, k_shot: int) -> tuple[list[Side], dict[str, float], float]:
    """lm_eval.simple_evaluate on the local task: per-problem sides (in file order), accuracies, seconds."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model), "dtype": "float32"}, tasks=[TASK], num_fewshot=k_shot,
        batch_size=1, device="cpu", log_samples=True, bootstrap_iters=0,
        # Only the local task: indexing the harness's thousands of task files took most of a run's seconds.
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    seconds = time.perf_counter() - started
    by_doc: dict[int, Side] = {}
    for sample in results["samples"][TASK]:
        side = by_doc.setdefault(sample["doc_id"], Side(prompt=sample["arguments"][0][0],
                                                        generated=sample["resps"][0][0], extracted={}, correct={}))
        side.extracted[sample["filter"]] = sample["filtered_resps"][0]
        side.correct[sample["filter"]] = bool(sample["exact_match"])
    accuracy = {name: float(results["results"][TASK][f"exact_match,{name}"]) for name in FILTERS}
    return [by_doc[i] for i in sorted(by_doc)], accuracy, seconds


def run_cotdistill(model: Path, test_file: Path, demo_file: Path, k_shot: int, max_new_tokens: int,
                   max_prompt_tokens: int, out_dir: Path) -> tuple[list[Side], dict[str, float], float]:
    """``cotdistill eval --protocol lm-eval`` in its own process: per-problem sides, accuracies, seconds."""
    strategy = "few_shot_cot" if k_shot else "zero_shot_cot"
    cmd = [sys.executable, "-m", "cotdistill.cli", "eval", str(model), "--protocol", "lm-eval",
           "--strategy", strategy, "--k_shot", str(k_shot), "--datasets", str(test_file), "--demos", str(demo_file),
           "--precision", "fp32", "--zero_stage", "0", "--batch_size", "1", "--max_new_tokens", str(max_new_tokens),
           "--max_prompt_tokens", str(max_prompt_tokens), "--output_dir", str(out_dir)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **OFFLINE}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    (name, dataset), = metrics["datasets"].items()
    lines = (out_dir / name / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    rows.sort(key=lambda row: row["index"])
    sides = [Side(prompt=row["prompt"], generated=row["generated"],
                  extracted={f: row["filters"][f]["extracted"] for f in FILTERS},
                  correct={f: bool(row["filters"][f]["correct"]) for f in FILTERS}) for row in rows]
    return sides, {f: float(dataset["filters"][f]) for f in FILTERS}, seconds


def compare(harness: list[Side], ours: list[Side], questions: list[str]) -> dict[str, Any]:
    """Agreement counts per field and every problem on which any field differs, with both sides' text."""
    if len(harness) != len(ours):
        raise RuntimeError(f"the harness scored {len(harness)} problems, cotdistill {len(ours)}")
    fields = {"prompt": lambda s: s.prompt, "generated": lambda s: s.generated,
              **{f"{f} extracted": (lambda s, f=f: s.extracted[f]) for f in FILTERS},
              **{f"{f} correct": (lambda s, f=f: s.correct[f]) for f in FILTERS}}
    agree = {name: 0 for name in fields}
    differing = []
    for index, (theirs, mine) in enumerate(zip(harness, ours, strict=True)):
        differs = [name for name, get in fields.items() if get(theirs) != get(mine)]
        for name in fields:
            agree[name] += name not in differs
        if differs:
            differing.append({"index": index, "question": questions[index], "fields": differs,
                              "lm_eval": asdict(theirs), "cotdistill": asdict(mine)})
    return {"problems": len(harness), "agree": agree, "differing": differing}


def harness_prompt_budget(model: Path, max_new_tokens: int) -> int:
    """Prompt tokens the harness's HF backend keeps (the last ones): its own max_length rule (the config's
    n_positions / max_position_embeddings / n_ctx, else the tokenizer's model_max_length, else 2048) less
    max_gen_toks for a causal LM; all of it for an encoder-decoder, whose prompt and output do not share positions."""
    from lm_eval.models.utils import DEFAULT_MAX_LENGTH, resolve_max_length
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    length = resolve_max_length(config, AutoTokenizer.from_pretrained(model), default=DEFAULT_MAX_LENGTH)
    return length if config.is_encoder_decoder else length - max_new_tokens


def prompt_tokens(model: Path, prompts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return [len(tokenizer(prompt)["input_ids"]) for prompt in prompts]


def field_value(side: dict[str, Any], name: str) -> str:
    """A compared field of Side as text: "prompt", "generated", "<filter> extracted" or "<filter> correct"."""
    if name in ("prompt", "generated"):
        return side[name]
    filter_name, what = name.rsplit(" ", 1)
    return str(side[what][filter_name])


def around_difference(text: str, other: str, width: int = 60) -> str:
    """``text`` near its first difference from ``other``, quoted, so a long prompt's change fits on a line."""
    first = next((i for i, (a, b) in enumerate(zip(text, other, strict=False)) if a != b), min(len(text), len(other)))
    start = max(first - width, 0)
    return ("..." if start else "") + repr(text[start: first + width]) + ("..." if first + width < len(text) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="exported student (GPT-2 or T5 Hugging Face folder)")
    parser.add_argument("--problems", type=int, default=50, help="first N GSM8K test problems")
    parser.add_argument("--k_shot", type=int, nargs="+", default=[0, 3], help="demonstrations per run (0: zero-shot)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--data_dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=Path("runs/bench-lm-eval/result.json"))
    parser.add_argument("--make_memorizer", action="store_true",
                        help="build --model first (when missing): a tiny GPT-2 that recites these problems' solutions")
    parser.add_argument("--memorizer_steps", type=int, default=300)
    parser.add_argument("--verbatim", action="store_true",
                        help="give both evaluators the official GSM8K lines as they are (calculator marks, '1,600'): "
                             "the harness shows them in its demonstrations, cotdistill's loader removes them")
    args = parser.parse_args()
    run_or_exit(lambda: check_output_file(args.out, make_parent=True))  # before the run, not after it

    work = args.out.parent / f"{args.out.stem}-files"  # task, data and cotdistill outputs
    os.environ.update(OFFLINE)  # before datasets / lm_eval are imported
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf_datasets_cache"))
    problems, test_file, demo_file = write_problem_files(args.data_dir, args.problems, max(args.k_shot),
                                                         work / "data", verbatim=args.verbatim)
    task_dir = write_task(work / "task", test_file, demo_file, args.max_new_tokens)
    if args.make_memorizer and not args.model.exists():
        from cotdistill.problems.gsm8k import gsm8k_file, read_gsm8k

        corpus = read_gsm8k(gsm8k_file(args.data_dir, "train"), "train")[:2000]
        make_memorizer(args.model, problems, corpus, steps=args.memorizer_steps)
    max_prompt_tokens = harness_prompt_budget(args.model, args.max_new_tokens)

    report: dict[str, Any] = {
        "model": str(args.model), "problems": args.problems, "verbatim": args.verbatim,
        "max_new_tokens": args.max_new_tokens,
        "max_prompt_tokens": max_prompt_tokens, "data": {"test": str(test_file), "demos": str(demo_file)},
        "lm_eval_version": __import__("lm_eval").__version__, "runs": {}}
    rows = []
    for k in args.k_shot:
        harness, harness_acc, harness_s = run_harness(args.model, task_dir, k)
        ours, our_acc, our_s = run_cotdistill(args.model, test_file, demo_file, k, args.max_new_tokens,
                                              max_prompt_tokens, work / f"cotdistill-k{k}")
        result = compare(harness, ours, [p.question for p in problems])
        lengths = prompt_tokens(args.model, [side.prompt for side in harness])
        result.update(lm_eval_accuracy=harness_acc, cotdistill_accuracy=our_acc, lm_eval_s=round(harness_s, 1),
                      cotdistill_s=round(our_s, 1), truncated=sum(n > max_prompt_tokens for n in lengths),
                      max_prompt_len=max(lengths),
                      strict_valid=sum(s.extracted["strict-match"] != "[invalid]" for s in harness),
                      flexible_valid=sum(s.extracted["flexible-extract"] != "[invalid]" for s in harness))
        report["runs"][f"{k}-shot"] = result
        agree = result["agree"]
        rows.append([f"{k}-shot", result["problems"], *(f"{harness_acc[f]:.3f} / {our_acc[f]:.3f}" for f in FILTERS),
                     agree["prompt"], agree["generated"], agree["strict-match extracted"],
                     agree["flexible-extract extracted"], agree["strict-match correct"],
                     agree["flexible-extract correct"], result["strict_valid"], result["flexible_valid"],
                     result["truncated"],
                     f"{harness_s:.0f} / {our_s:.0f}"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    from cotdistill.report import markdown_table

    print(markdown_table(["run", "problems", "strict-match acc (lm-eval / ours)", "flexible-extract acc",
                          "same prompt", "same text", "same strict", "same flexible", "same strict correct",
                          "same flexible correct", "strict answers found", "flexible answers found",
                          "prompts truncated", "seconds (lm-eval / ours)"], rows))
    differing = [(k, d) for k, run in report["runs"].items() for d in run["differing"]]
    for k, d in differing:
        print(f"\n{k} problem {d['index']} differs in {', '.join(d['fields'])} (whole texts in {args.out}):")
        for name in d["fields"]:
            theirs, ours = (field_value(d[side], name) for side in ("lm_eval", "cotdistill"))
            print(f"  {name}:\n    lm-eval:    {around_difference(theirs, ours)}\n"
                  f"    cotdistill: {around_difference(ours, theirs)}")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
