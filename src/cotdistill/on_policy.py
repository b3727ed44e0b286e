"""On-policy distillation's mechanics (GKD, Agarwal et al. 2024): the student samples, the teacher scores.

``OnPolicyDistillation`` (``cotdistill.training_objectives``, ``train.objective=on_policy``) calls these per
micro-batch: `sample_completions` (every rank generates in lockstep under ZeRO-3, seeded per micro-step and
rank, without touching training's random streams), `score_completions` (the teacher's top-k per token of each
completion, mapped onto the student's tokens by ``cotdistill.alignment.scored_targets``), and `divergence_batch`
(the student's teacher-forced inputs with the teacher's targets laid over the completion positions).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from cotdistill.alignment import StudentVocab, TeacherTarget, scored_targets
from cotdistill.batching import TokenizedExample, collate, pack_causal, pack_seq2seq, positions_from_mask
from cotdistill.objectives import IGNORE_INDEX


def samples_this_micro_step(seed: int, index: int, fraction: float) -> bool:
    """Whether global micro-step `index` samples the student's own completions: the same draw on every rank
    (under ZeRO-3 either every rank generates or none does) and on every resume."""
    return random.Random(f"on-policy:{seed}:{index}").random() < fraction


def sampling_seed(seed: int, index: int, rank: int) -> int:
    """The torch seed of one rank's sampling at one micro-step: resumable, and different on every rank."""
    return random.Random(f"sample:{seed}:{index}:{rank}").getrandbits(63)


def prompt_of(example: TokenizedExample) -> tuple[int, ...]:
    """The prompt a student completes: a causal example's ids before its first label, a seq2seq one's source."""
    if not example.causal:
        return tuple(example.input_ids)
    first = next((k for k, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels))
    return tuple(example.input_ids[:first])


def target_of(example: TokenizedExample) -> tuple[int, ...]:
    """The completion the data holds for an example (the teacher's text): its labelled tokens."""
    return tuple(label for label in example.labels if label != IGNORE_INDEX)


def ancestral_samples(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                      max_new_tokens: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """What ``generate(do_sample=True, top_k=0, top_p=1.0, temperature=...)`` returns for a causal model whose
    prompts are padded on the left (prompt + new tokens, finished rows filled with ``pad_id``), drawn the same way
    from the same RNG (fp32 logits, divided by the temperature unless it is 1, softmax, one multinomial draw per
    row and step; positions counted from each row's first real token), without generate's per-token machinery
    (logits processors, stopping criteria, cache bookkeeping), which cost a tiny student most of its sampling
    time on CPU. One forward per new token with the KV cache; stops when every row has its EOS."""
    positions = positions_from_mask(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
    new: list[torch.Tensor] = []
    last = positions[:, -1:]
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if temperature != 1.0:
            logits = logits / temperature
        token = torch.multinomial(logits.softmax(-1), num_samples=1).squeeze(1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        new.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.size(0), 1))], dim=1)
        last = last + 1
        out = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=last, cache=out.cache,
                    use_cache=True)
    return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1) if new else input_ids


def sample_completions(engine: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], causal: bool,
                       temperature: float, max_new_tokens: int, seed: int, gathered: bool = False
                       ) -> list[tuple[int, ...]]:
    """The student's sampled completion of each prompt (ending with EOS when it stopped), from the live engine.

    Plain ancestral sampling at `temperature` (no top-k / top-p from the checkpoint's generation config), in eval
    mode (no dropout), seeded by `seed` inside a forked RNG so training's streams (dropout, resume) are untouched.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    if causal:  # generation continues the prompt: pads go in front
        ids = [[pad] * (width - len(p)) + list(p) for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    else:
        ids = [list(p) + [pad] * (width - len(p)) for p in prompts]
        mask = [[1] * len(p) + [0] * (width - len(p)) for p in prompts]
    engine.eval()
    try:
        with torch.random.fork_rng(devices=[engine.device] if engine.device.type == "cuda" else []):
            torch.manual_seed(seed)
            if gathered and causal:  # each rank alone: a plain loop, without generate's per-token machinery
                with torch.no_grad(), engine.gathered_weights():
                    out = ancestral_samples(engine.module, torch.tensor(ids, device=engine.device),
                                            torch.tensor(mask, device=engine.device), temperature, max_new_tokens,
                                            tokenizer.eos_token_id, pad)
            else:
                out = engine.generate(gathered=gathered, input_ids=torch.tensor(ids),
                                      attention_mask=torch.tensor(mask), do_sample=True, temperature=temperature,
                                      top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                      eos_token_id=tokenizer.eos_token_id, use_cache=True)
    finally:
        engine.train()
    new = out[:, width:] if causal else out[:, 1:]  # a seq2seq output starts with the decoder start token
    completions = []
    for row in new.tolist():
        kept = []
        for token in row:
            kept.append(token)
            if token == tokenizer.eos_token_id:
                break
        while kept and kept[-1] == pad and pad != tokenizer.eos_token_id:
            kept.pop()
        completions.append(tuple(kept))
    return completions


def samples_correct(problems: Sequence[Any | None], texts: Sequence[str]) -> int:
    """How many of the student's sampled texts answer their problem, graded as evaluation grades (the cotdistill
    protocol: the text cut where the student invents a next question, then the problem's answer kind, numbers
    within tolerance); an example without a problem counts as wrong."""
    from cotdistill.protocols import CotdistillProtocol

    protocol = CotdistillProtocol()
    return sum(1 for problem, text in zip(problems, texts, strict=True)
               if problem is not None and protocol.score(problem, protocol.clean(text)).correct)


def _prompt_and_completion_text(tokenizer: Any, prompt: Sequence[int], completion: Sequence[int]) -> tuple[str, str]:
    """The prompt's text and the completion's text as it reads after the prompt: the completion cut from the
    decode of both (special tokens left out). Decoding the completion alone loses a sentencepiece tokenizer's
    leading space ("▁Ann" -> "Ann"), and the teacher would read "How many?Ann has ...", a text nobody writes."""
    head = tokenizer.decode(list(prompt), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    both = tokenizer.decode(list(prompt) + list(completion), skip_special_tokens=True,
                            clean_up_tokenization_spaces=False)
    if both.startswith(head):
        return head, both[len(head):]
    return head, tokenizer.decode(list(completion), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def score_completions(scorer: Any, tokenizer: Any, vocab: StudentVocab, prompts: Sequence[Sequence[int]],
                      completions: Sequence[Sequence[int]], top_k: int) -> list[list[TeacherTarget | None]]:
    """Per completion token, the teacher's distribution over student ids there (None: no loss there).

    The teacher reads the prompt and completion as text (special tokens left out) and scores the completion's
    tokens in its own tokenizer; those are aligned to the student's tokens by their text, and a completion that
    stopped gets the teacher's probability of stopping there at its EOS (`alignment.END_OF_TEXT`; a served teacher
    does not score EOS yet, so there the student's EOS gets no loss). A local teacher with the
    student's own vocabulary reads the student's ids instead (`HFTokenScorer.score_ids`): no text round trip, and
    the very tokens the student wrote are scored."""
    shares = getattr(scorer, "shares_vocabulary", None)
    if shares is not None and shares(tokenizer):
        return scorer.score_ids(prompts, completions, top_k)
    pairs = [_prompt_and_completion_text(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    ended = [bool(c) and c[-1] == tokenizer.eos_token_id for c in completions]
    scored = scorer.score(pairs, top_k, ended=ended)
    targets = []
    for tokens, completion in zip(scored, completions, strict=True):
        teacher_tokens = [[t.token, t.logprob, [[text, lp] for text, lp in t.top]] for t in tokens]
        targets.append(scored_targets(teacher_tokens, completion, tokenizer, vocab) if completion else [])
    return targets


def divergence_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                     targets: Sequence[Sequence[TeacherTarget | None]], causal: bool, pad_id: int,
                     pack: bool = False) -> dict[str, torch.Tensor]:
    """The teacher-forced micro-batch of prompts + completions, padded, with ``kd_ids``/``kd_probs`` [B, T, K]
    holding the teacher's distribution at each completion token and ``token_weights`` 1 where it has one (0: no
    loss there). Labels hold every completion token (a seq2seq decoder reads them as its inputs). ``pack`` lays
    the examples end to end as a packed training micro-batch does (`cotdistill.batching.pack_causal`,
    `pack_seq2seq`): sampled completions differ in length, and padding is what a padded batch pays for."""
    examples = []
    for prompt, completion in zip(prompts, completions, strict=True):
        if causal:
            examples.append(TokenizedExample(tuple(prompt) + tuple(completion),
                                             (IGNORE_INDEX,) * len(prompt) + tuple(completion), True))
        else:
            examples.append(TokenizedExample(tuple(prompt), tuple(completion), False))
    batch = collate(examples, pad_id)
    labels = batch["labels"]
    width = max([1] + [len(t[0]) for row in targets for t in row if t is not None])
    ids = torch.zeros((*labels.shape, width), dtype=torch.long)
    # float64: the teacher's tail (1 - the sum) stays as precise as the teacher gave it (generalized_jsd)
    probs = torch.zeros((*labels.shape, width), dtype=torch.float64)
    weights = torch.zeros(labels.shape, dtype=torch.float32)
    for row, row_targets in enumerate(targets):
        positions = (labels[row] != IGNORE_INDEX).nonzero()[:, 0].tolist()
        for position, target in zip(positions, row_targets, strict=True):
            if target is None:
                continue
            token_ids, token_probs = target
            ids[row, position, :len(token_ids)] = torch.tensor(token_ids, dtype=torch.long)
            probs[row, position, :len(token_probs)] = torch.tensor(token_probs, dtype=torch.float64)
            weights[row, position] = 1.0
    batch.update(kd_ids=ids, kd_probs=probs, token_weights=weights)
    if pack and causal:
        return pack_causal(batch, [len(e.input_ids) for e in examples])
    if pack:
        return pack_seq2seq(batch, [len(e.input_ids) for e in examples], [len(e.labels) for e in examples])
    return batch
