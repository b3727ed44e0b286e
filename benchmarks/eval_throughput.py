"""Examples/s of cotdistill's evaluator against Seq2SeqTrainer.predict and a plain generate loop.

Same model, problems, batch size and greedy settings; the three must produce the same predictions.
Usage: python benchmarks/eval_throughput.py --model runs/tiny-t5 --problems 128 --batch_size 16
Writes a Markdown table to stdout (and --out, if given).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cotdistill.entrypoints import run_or_exit
from cotdistill.outputs import check_output_file


def plain_generate_loop(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """What a user writes by hand: dataset order, dynamic padding per batch, greedy generate."""
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return texts


def seq2seq_trainer_predict(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
                            tmp: Path) -> list[str]:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    encoded = tokenizer(prompts)
    # Seq2SeqTrainer expects labels in an evaluation set; one token each keeps the extra loss pass cheap.
    data = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                              "labels": [[tokenizer.eos_token_id]] * len(prompts)})
    args = Seq2SeqTrainingArguments(output_dir=str(tmp), per_device_eval_batch_size=batch_size,
                                    predict_with_generate=True, generation_max_length=None,
                                    generation_num_beams=1, use_cpu=True, report_to=[],
                                    disable_tqdm=True, dataloader_num_workers=0)
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=DataCollatorForSeq2Seq(tokenizer),
                             processing_class=tokenizer)
    out = trainer.predict(data, max_new_tokens=max_new_tokens, do_sample=False)
    ids = [[t for t in row if t >= 0] for row in out.predictions.tolist()]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.out:  # checked now: a missing folder must not cost the whole run
        run_or_exit(lambda: check_output_file(args.out))

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from cotdistill.answers import clean_generation
    from cotdistill.config import EvalSpec
    from cotdistill.engine import Engine
    from cotdistill.evaluate import evaluate_problems
    from cotdistill.formats import eval_prompts
    from cotdistill.problems.loaders import load_problems
    from cotdistill.report import markdown_table
    from cotdistill.student import open_student

    problems = load_problems("gsm8k", "test", data_dir=args.data_dir)[: args.problems]
    prompts = eval_prompts(problems, "zero_shot_cot")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    results = {}

    engine = Engine()
    student = open_student(engine, args.model, precision="fp32", zero_stage=0)
    started = time.perf_counter()
    spec = EvalSpec(strategy="zero_shot_cot", max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    report = evaluate_problems(engine, student, problems, spec, desc="cotdistill")
    results["cotdistill evaluate_problems"] = (time.perf_counter() - started, [p.generated for p in report.predictions])
    engine.release_model()

    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, dtype=torch.float32).eval()
    started = time.perf_counter()
    texts = plain_generate_loop(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)
    results["plain batched generate loop"] = (time.perf_counter() - started, [clean_generation(t) for t in texts])

    started = time.perf_counter()
    texts = seq2seq_trainer_predict(model, tokenizer, prompts, args.batch_size, args.max_new_tokens,
                                    Path("/tmp/cotdistill-bench-trainer"))
    results["Seq2SeqTrainer.predict(predict_with_generate)"] = (time.perf_counter() - started,
                                                                [clean_generation(t) for t in texts])
    engine.close()

    reference = results["cotdistill evaluate_problems"][1]
    base = len(problems) / results["Seq2SeqTrainer.predict(predict_with_generate)"][0]
    rows = []
    for name, (seconds, preds) in results.items():
        same = sum(a == b for a, b in zip(preds, reference, strict=True))
        rate = len(problems) / seconds
        rows.append([name, f"{rate:.2f}", f"{rate / base:.2f}x", f"{same}/{len(problems)}"])
    table = markdown_table(["method", "examples/s", "vs Seq2SeqTrainer", "same predictions as cotdistill"], rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
