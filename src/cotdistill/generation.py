"""Generation and reports shared by every evaluation: prompt strategies, Socratic chains, checkpoint selection.

Correct under ZeRO-3 on any number of ranks: every rank makes the same number of ``generate`` calls (short
shards are padded with a dummy batch whose outputs are dropped) and ``generate`` runs with ``synced_gpus``
under ZeRO-3, so no rank waits forever for a partner's parameter gather. Results are gathered to every rank
and put back in the callers' order. Nothing here knows prompts or answers: callers bring token ids and score
the texts.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cotdistill.answers import NEXT_QUESTION
from cotdistill.batching import padded_prompts, prompt_prefix_ids
from cotdistill.chat import chat_prompt_ids, check_chat_student, end_of_turn_id
from cotdistill.engine import Engine


@dataclass
class Prediction:
    """One problem's outcome. ``extraction`` says how the answer was read (``answers.EXTRACTION_METHODS``):
    from an explicit marker, a named fallback, or not at all; ``filters`` holds every reported extraction
    of a protocol that reports several (lm-eval: strict-match and flexible-extract)."""

    index: int
    id: str
    question: str
    gold: str
    prompt: str
    generated: str
    extracted: str | None
    correct: bool
    generated_tokens: int
    samples: list[str] | None = None  # self-consistency: every sampled text (generated is the first)
    votes: dict[str, int] | None = None  # self-consistency: extracted answer -> count
    extraction: str = "none"
    filters: dict[str, dict[str, Any]] | None = None


@dataclass
class EvalReport:
    predictions: list[Prediction]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.predictions)

    @property
    def correct(self) -> int:
        return sum(p.correct for p in self.predictions)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def extraction_counts(self) -> dict[str, int]:
        """How many answers came from a marker, from each fallback, or from nothing (scored wrong)."""
        return dict(sorted(Counter(p.extraction for p in self.predictions).items()))

    def filter_accuracies(self) -> dict[str, float]:
        """Accuracy under each of a protocol's reported extractions (empty when it reports one)."""
        names = [name for p in self.predictions[:1] for name in (p.filters or {})]
        return {name: sum(bool(p.filters and p.filters[name]["correct"]) for p in self.predictions) / self.total
                for name in names}

    def metrics(self) -> dict[str, Any]:
        tokens = [p.generated_tokens for p in self.predictions]
        found = {"accuracy": self.accuracy, "correct": self.correct, "total": self.total,
                 "extraction": self.extraction_counts(),
                 "mean_generated_tokens": sum(tokens) / max(len(tokens), 1),
                 "examples_per_s": self.total / self.seconds if self.seconds else 0.0, **self.settings}
        if self.filter_accuracies():
            found["filters"] = self.filter_accuracies()
        return found

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "predictions.jsonl", "w", encoding="utf-8") as fh:
            for p in self.predictions:
                fh.write(json.dumps(asdict(p)) + "\n")
        metrics = self.metrics()
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        guessed = sum(n for method, n in metrics["extraction"].items() if method not in ("marker", "none"))
        (folder / "summary.md").write_text(
            "| problems | correct | accuracy | answers by fallback | no answer | mean generated tokens | examples/s |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {self.total} | {self.correct} | {100 * self.accuracy:.1f}% | {guessed} | "
            f"{metrics['extraction'].get('none', 0)} | {metrics['mean_generated_tokens']:.1f} | "
            f"{metrics['examples_per_s']:.2f} |\n", encoding="utf-8")


def prompt_hash(prompts: Sequence[str]) -> str:
    """A short fingerprint of every prompt of a data set: equal hashes, equal prompts."""
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(prompt.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def shard_batches(order: Sequence[int], batch_size: int, world: int, rank: int) -> list[list[int]]:
    """This rank's batches: consecutive global batches of similar length, one slice per rank."""
    span = batch_size * world
    batches = []
    for start in range(0, len(order), span):
        piece = list(order[start:start + span])
        batches.append(piece[rank * batch_size:(rank + 1) * batch_size])
    return batches


@dataclass
class ContextFit:
    """How generation was fitted to a model's positions, counted over every prompt (all ranks agree).

    A decoder-only model has a fixed number of positions (GPT-2: ``n_positions``); prompt plus new tokens
    must fit in them, or the position lookup fails mid-generation. Prompts keep their end; new tokens are
    capped to what is left. Both are counted so a report says how many problems were shortened.
    """

    context: int | None = None  # the model's positions; None: no fixed limit (T5's relative positions)
    prompts_truncated: int = 0
    budgets_capped: int = 0

    def settings(self) -> dict[str, Any]:
        return {"context": self.context, "prompts_truncated": self.prompts_truncated,
                "new_tokens_capped": self.budgets_capped}


def model_context(config: Any, causal: bool) -> int | None:
    """Positions a decoder-only model can attend to (None for an encoder-decoder with relative positions)."""
    if not causal:
        return None
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_budget(max_prompt_tokens: int, max_new_tokens: int, context: int | None) -> int:
    """Prompt tokens kept: ``max_prompt_tokens``, and within a fixed context room for the new tokens (at
    least half the context stays for the prompt, so a huge generation budget cannot erase the question)."""
    if context is None:
        return max_prompt_tokens
    return max(1, min(max_prompt_tokens, max(context - max_new_tokens, context // 2)))


def encode_prompts(tokenizer, causal: bool, prompts: Sequence[str], max_prompt_tokens: int,
                   fit: ContextFit | None = None, chat: bool = False) -> list[list[int]]:
    """Token ids of each prompt; longer prompts keep their end (the question is at the end).

    A causal prompt starts as training's sequences start (``batching.prompt_prefix_ids``: Llama 3's BOS, nothing
    for GPT-2 or Qwen), and keeps that start when it is shortened. With ``chat`` (a student trained with
    data.chat_template) the prompt is the user turn of the tokenizer's chat template followed by the assistant's
    header, the ids training put before the target (``cotdistill.chat``); a shortened one keeps the template's
    tokens before the user's text.
    """
    if not prompts:
        return []
    if chat:
        check_chat_student(tokenizer, causal, key="chat_template")
        prefix, encoded = chat_prompt_ids(tokenizer, prompts)
    else:
        prefix = list(prompt_prefix_ids(tokenizer)) if causal else []
        encoded = tokenizer(list(prompts), add_special_tokens=not causal)["input_ids"]
    keep = max(1, max_prompt_tokens - len(prefix))
    if fit is not None:
        fit.prompts_truncated += sum(len(ids) > keep for ids in encoded)
    return [prefix + list(ids[-keep:]) for ids in encoded]


def sharded_generations(
    engine: Engine,
    tokenizer,
    causal: bool,
    encoded: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str] = NEXT_QUESTION,
    samples: int = 1,
    temperature: float = 0.7,
    desc: str = "eval",
    context: int | None = None,
    chat: bool = False,
) -> Iterator[tuple[int, list[str], int, bool]]:
    """Collective: generate for every prompt (token ids), this rank's share; yields (index, texts, tokens, capped).

    ``texts`` holds ``samples`` decoded generations of prompt ``index`` and ``tokens`` the mean count of
    generated tokens per sample; ``capped`` says that the batch's prompt length left fewer than
    ``max_new_tokens`` of the model's ``context`` positions, so its budget was cut to what fits.

    Prompts are sorted by length and cut into global batches of
    ``batch_size`` per rank; a rank with nothing left runs a dummy batch whose outputs are dropped, so
    every rank makes the same number of ``generate`` calls (ZeRO-3 gathers stay matched). Every rank must
    consume the whole iterator. Greedy (``samples`` == 1) or sampled at ``temperature``; causal models stop
    at ``stop_strings`` (seq2seq ones at their end of sequence). A ``chat`` student also stops at its chat
    template's end-of-turn token, which is left out of the text.
    """
    if not encoded:
        return
    stop_ids = [tokenizer.eos_token_id]
    if chat:  # an instruct student closes its turn (Qwen: <|im_end|>, Gemma: <end_of_turn>) rather than the text
        stop_ids = list(dict.fromkeys([*stop_ids, end_of_turn_id(tokenizer)]))
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    batches = shard_batches(order, batch_size, engine.world_size, engine.rank)
    pad_id = tokenizer.pad_token_id
    was_training = engine.module.training
    engine.eval()
    progress = tqdm(total=len(encoded), desc=desc, unit="problem", disable=not engine.is_main,
                    dynamic_ncols=True)
    span = batch_size * engine.world_size
    for number, batch in enumerate(batches):
        indices = batch or order[:1]  # dummy batch keeps this rank in step with the others
        inputs = padded_prompts([encoded[i] for i in indices], pad_id, left=causal)
        budget = max_new_tokens
        if context is not None:  # prompt + new tokens must fit the position table
            budget = max(1, min(max_new_tokens, context - inputs["input_ids"].shape[1]))
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "num_return_sequences": samples} \
            if samples > 1 else {"do_sample": False}
        if causal and stop_strings:  # a decoder-only model may run on past its answer: stop it there
            sampling.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        output = engine.generate(**inputs, max_new_tokens=budget, num_beams=1, pad_token_id=pad_id,
                                 eos_token_id=stop_ids if chat else stop_ids[0], use_cache=True, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1]:] if causal else output[:, 1:]
        progress.update(min(span, len(order) - number * span))  # real problems of this step, all ranks
        if not batch:
            continue
        shown = new_tokens
        if chat:  # the end-of-turn token may be an added token that skip_special_tokens keeps
            shown = new_tokens.masked_fill(torch.isin(new_tokens, torch.tensor(stop_ids, device=new_tokens.device)),
                                           pad_id)
        texts = tokenizer.batch_decode(shown, skip_special_tokens=True)
        for row, i in enumerate(indices):
            rows = slice(row * samples, (row + 1) * samples)
            count = int((new_tokens[rows] != pad_id).sum()) // samples
            yield i, texts[rows], count, budget < max_new_tokens
    progress.close()
    if was_training:
        engine.train()


def generate_texts(engine: Engine, tokenizer, causal: bool, prompts: Sequence[str], *, max_new_tokens: int,
                   batch_size: int, max_prompt_tokens: int, stop_strings: Sequence[str] = NEXT_QUESTION,
                   samples: int = 1, temperature: float = 0.7, desc: str = "generate",
                   fit: ContextFit | None = None, chat: bool = False) -> list[tuple[list[str], int]]:
    """Collective: (sampled texts, mean generated tokens) for every prompt, in order, on every rank.

    Fitted to the model's positions (``fit`` counts the prompts shortened and the budgets capped). ``chat``:
    prompts in the student tokenizer's chat template (``encode_prompts``).
    """
    fit = fit if fit is not None else ContextFit()
    fit.context = model_context(getattr(engine.module, "config", None), causal)
    keep = prompt_budget(max_prompt_tokens, max_new_tokens, fit.context)
    encoded = encode_prompts(tokenizer, causal, prompts, keep, fit, chat=chat)
    mine = list(sharded_generations(engine, tokenizer, causal, encoded, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, stop_strings=stop_strings, samples=samples,
                                    temperature=temperature, desc=desc, context=fit.context, chat=chat))
    found: dict[int, tuple[list[str], int, bool]] = {}
    for shard in engine.all_gather_objects(mine):
        for i, texts, count, capped in shard:
            found.setdefault(i, (texts, count, capped))
    fit.budgets_capped += sum(found[i][2] for i in range(len(prompts)))
    return [found[i][:2] for i in range(len(prompts))]


def generate_all(engine: Engine, tokenizer, causal: bool, prompts: Sequence[str], *, max_new_tokens: int,
                 batch_size: int, stop_strings: Sequence[str] = NEXT_QUESTION, max_source_tokens: int = 1024,
                 desc: str = "generate", fit: ContextFit | None = None, chat: bool = False) -> list[tuple[str, int]]:
    """Collective greedy generation: (text, generated tokens) for every prompt, in order, on every rank.

    Prompts longer than ``max_source_tokens`` (or than the model's positions allow) keep their end.
    """
    return [(texts[0], count) for texts, count in
            generate_texts(engine, tokenizer, causal, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           max_prompt_tokens=max_source_tokens, stop_strings=stop_strings, desc=desc, fit=fit,
                           chat=chat)]

