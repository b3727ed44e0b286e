"""A local Hugging Face model as the teacher: requests are micro-batched into ``generate`` calls on one device.

Plain transformers, no DeepSpeed: a teacher only generates, so one device holds it. ``sample()`` only queues
the request; one consumer task gathers waiting requests with equal :class:`Sampling` settings into a batch of
at most ``batch_size`` sequences and runs ``generate`` in a worker thread, so the event loop (and the builder's
other work) stays responsive while the model runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from cotdistill.alignment import token_spans
from cotdistill.batching import padded_prompts
from cotdistill.cpu_precision import slow_precision_note
from cotdistill.errors import ConfigError
from cotdistill.modeling import detect_kind, load_model, load_tokenizer
from cotdistill.teacher.types import (
    Completion,
    SampleRequest,
    SampleResponse,
    Sampling,
    TeacherError,
    TokenLogprob,
    Usage,
)

log = logging.getLogger(__name__)

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Generation settings a checkpoint's generation_config.json may carry (transformers fills unset ones from it)
# that would bend the sampled distribution away from plain temperature / top-p sampling.
# (min_new_tokens=0 also overrides a configured min_length.)
NEUTRAL_GENERATION = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0, "num_beams": 1,
                      "typical_p": 1.0}


@dataclass
class _Job:
    request: SampleRequest
    prompt_ids: list[int]
    future: asyncio.Future[SampleResponse]


class HFTeacher:
    """A seq2seq (T5) or causal (GPT-2, LLaMA, ...) checkpoint answering :class:`SampleRequest` locally."""

    def __init__(self, model: str, device: str = "auto", precision: str = "bf16", batch_size: int = 8) -> None:
        if precision not in PRECISIONS:
            raise TeacherError(f"unknown precision {precision!r} for teacher {model!r}; use one of "
                               f"{', '.join(PRECISIONS)}")
        if batch_size < 1:
            raise TeacherError(f"batch_size must be at least 1, got {batch_size}")
        self.model_name = model
        self.batch_size = batch_size
        self.device = resolve_device(device)
        if self.device.type == "cpu" and precision == "fp16":
            log.warning("fp16 is not supported for generation on CPU; loading teacher %s in fp32", model)
            precision = "fp32"
        slow = slow_precision_note(self.device.type, precision, "teacher.precision")
        if slow:
            log.warning("%s", slow)
        self.precision = precision
        if _looks_local(model) and not Path(model).expanduser().exists():
            raise TeacherError(f"teacher model {model!r} does not exist: no such folder")
        try:
            self.kind = detect_kind(model)
            self.tokenizer = load_tokenizer(model, self.kind)
            self.model = load_model(model, self.kind, PRECISIONS[precision])
        except ConfigError as exc:
            raise TeacherError(f"cannot load teacher model {model!r}: {exc}") from exc
        self.model.to(self.device).eval().requires_grad_(False)
        if self.kind == "causal":
            self.tokenizer.padding_side = "left"  # generation continues the prompt, so pads go in front
        self._eos_ids = _eos_ids(self.model, self.tokenizer)
        self._dropped_ids = self._eos_ids | {self.tokenizer.pad_token_id}  # never part of a completion
        self._max_positions = _max_positions(self.model) if self.kind == "causal" else None
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[list[SampleResponse]] | None = None
        self._closed = False

    def describe(self) -> dict[str, object]:
        return {"backend": "hf", "model": self.model_name, "kind": self.kind, "device": str(self.device),
                "precision": self.precision}

    async def sample(self, request: SampleRequest) -> SampleResponse:
        """Queue the request for the next batch with its Sampling settings and wait for its completions."""
        if self._closed:
            raise TeacherError(f"teacher {self.model_name!r} is closed")
        prompt_ids = self._encode(request)
        self._ensure_consumer()
        assert self._loop is not None and self._wakeup is not None
        future: asyncio.Future[SampleResponse] = self._loop.create_future()
        self._pending.append(_Job(request, prompt_ids, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop the consumer, fail queued requests, wait for a running generate, and free the model."""
        self._closed = True
        loop = asyncio.get_running_loop()
        inflight = self._inflight if self._loop is loop else None
        if self._consumer is not None and not self._consumer.done() and self._consumer.get_loop() is loop:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        if inflight is not None:  # a worker thread cannot be interrupted: let it finish before freeing the model
            await asyncio.gather(inflight, return_exceptions=True)
        self._fail(list(self._pending), TeacherError(f"teacher {self.model_name!r} was closed"))
        self._pending.clear()
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _encode(self, request: SampleRequest) -> list[int]:
        """Check a request and tokenize its prompt here, so a bad request fails alone, not its whole batch."""
        s = request.sampling
        problems = [text for bad, text in [
            (request.n < 1, f"n must be at least 1, got {request.n}"),
            (s.max_tokens < 1, f"max_tokens must be at least 1, got {s.max_tokens}"),
            (s.temperature < 0, f"temperature must be >= 0, got {s.temperature}"),
            (not 0 < s.top_p <= 1, f"top_p must be in (0, 1], got {s.top_p}"),
            (s.logprobs < 0, f"logprobs must be >= 0, got {s.logprobs}"),
            (any(not stop for stop in s.stop), "stop strings must not be empty"),
        ] if bad]
        if problems:
            raise TeacherError(f"bad request for teacher {self.model_name!r}: {'; '.join(problems)}")
        ids = list(self.tokenizer(request.prompt)["input_ids"])
        if not ids:
            raise TeacherError(f"the prompt encodes to no tokens; teacher {self.model_name!r} needs at least one")
        if self._max_positions is not None and len(ids) + s.max_tokens > self._max_positions:
            raise TeacherError(f"prompt of {len(ids)} tokens + max_tokens {s.max_tokens} exceeds the "
                               f"{self._max_positions} positions of teacher {self.model_name!r}")
        return ids

    def _ensure_consumer(self) -> None:
        """Start the consumer on first use, and again under a new event loop (each asyncio.run has its own)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._wakeup, self._inflight = loop, asyncio.Event(), None
            self._pending.clear()  # futures of a finished loop can no longer be awaited
        if self._consumer is None or self._consumer.done() or self._consumer.get_loop() is not loop:
            self._consumer = loop.create_task(self._consume(), name=f"hf-teacher {self.model_name}")

    async def _consume(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            jobs = self._take_batch()
            if not jobs:
                continue
            # shield: cancelling the consumer (close) must not orphan the thread close() waits for
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self._run, jobs))
            try:
                responses = await asyncio.shield(self._inflight)
            except asyncio.CancelledError:
                self._fail(jobs, TeacherError(f"teacher {self.model_name!r} was closed"))
                raise
            except Exception as exc:  # whatever it is, it must reach the awaiting sample() calls
                self._fail(jobs, exc)
                continue
            finally:
                self._inflight = None
            for job, response in zip(jobs, responses, strict=True):
                if not job.future.done():
                    job.future.set_result(response)

    def _take_batch(self) -> list[_Job]:
        """The oldest live request plus later ones with equal Sampling, up to batch_size sequences in all."""
        while self._pending and self._pending[0].future.done():  # cancelled by its caller
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending.popleft()
        jobs, total, rest = [first], first.request.n, deque[_Job]()
        while self._pending:
            job = self._pending.popleft()
            if job.future.done():
                continue
            if total < self.batch_size and job.request.sampling == first.request.sampling \
                    and total + job.request.n <= self.batch_size:
                jobs.append(job)
                total += job.request.n
            else:
                rest.append(job)
        self._pending = rest
        return jobs

    def _fail(self, jobs: list[_Job], error: Exception) -> None:
        for job in jobs:
            if job.future.done():
                continue
            message = str(error) if isinstance(error, TeacherError) else \
                f"teacher {self.model_name!r} failed while generating: {error!r}"
            wrapped = TeacherError(message)  # one exception object per future: each gets its own traceback
            wrapped.__cause__ = error
            job.future.set_exception(wrapped)

    def _run(self, jobs: list[_Job]) -> list[SampleResponse]:
        """Worker thread: each prompt n times, in chunks of batch_size rows, seeded by the first request."""
        sampling = jobs[0].request.sampling
        rows = [job.prompt_ids for job in jobs for _ in range(job.request.n)]
        finished: list[tuple[Completion, int]] = []
        with torch.inference_mode(), _seeded(jobs[0].request.seed, self.device):
            for start in range(0, len(rows), self.batch_size):
                finished += self._generate(rows[start:start + self.batch_size], sampling)
        responses, at = [], 0
        for job in jobs:
            mine, at = finished[at:at + job.request.n], at + job.request.n
            usage = Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=sum(count for _, count in mine))
            responses.append(SampleResponse(tuple(completion for completion, _ in mine), usage))
        return responses

    def _generate(self, prompts: list[list[int]], sampling: Sampling) -> list[tuple[Completion, int]]:
        """One generate call; each row becomes (completion, number of generated tokens kept)."""
        causal = self.kind == "causal"
        inputs = {k: v.to(self.device) for k, v in
                  padded_prompts(prompts, self.tokenizer.pad_token_id, left=causal).items()}
        kwargs: dict[str, object] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                                     "eos_token_id": sorted(self._eos_ids), "use_cache": True,
                                     "return_dict_in_generate": True, "output_logits": sampling.logprobs > 0,
                                     **NEUTRAL_GENERATION}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        out = self.model.generate(**inputs, **kwargs)
        new_ids = out.sequences[:, inputs["input_ids"].shape[1]:] if causal else out.sequences[:, 1:]
        chosen = top = None
        if sampling.logprobs > 0:
            chosen, top = _step_logprobs(out.logits, new_ids, min(sampling.logprobs, len(self.tokenizer)),
                                         len(self.tokenizer))
        return [self._finish(row, new_ids[row].tolist(), sampling.stop, chosen, top) for row in range(len(prompts))]

    def _finish(self, row: int, ids: list[int], stops: tuple[str, ...], chosen: list[list[float]] | None,
                top: list[list[list[tuple[int, float]]]] | None) -> tuple[Completion, int]:
        """Cut a row at eos or its first stop string (OpenAI semantics) and align tokens with the text."""
        end = next((i for i, token in enumerate(ids) if token in self._eos_ids), None)
        reason = "length" if end is None else "stop"
        steps = [i for i, token in enumerate(ids[:end]) if token not in self._dropped_ids]
        kept = [ids[i] for i in steps]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((text.find(stop) for stop in stops if stop in text), default=None)
        if cut is None and chosen is None:
            return Completion(text, reason), len(kept)
        spans = token_spans(self.tokenizer, kept, text)
        if cut is not None:
            text, reason = text[:cut], "stop"
            spans = [(start, min(stop, cut)) for start, stop in spans if start < cut]  # a prefix: spans ascend
            steps = steps[:len(spans)]
        if chosen is None or top is None:
            return Completion(text, reason), len(spans)
        tokens = tuple(
            TokenLogprob(text[start:stop], chosen[row][step],
                         tuple((alternative_text(self.tokenizer, kept[i - 1] if i else None, alt), value)
                               for alt, value in top[row][step]))
            for i, (step, (start, stop)) in enumerate(zip(steps, spans, strict=True)))
        return Completion(text, reason, tokens), len(tokens)

def alternative_text(tokenizer, previous: int | None, token: int) -> str:
    """A token's text after the previous token, so a sentencepiece "▁" reads as a space."""
    if previous is None:
        return tokenizer.decode([token])
    context = tokenizer.decode([previous])
    both = tokenizer.decode([previous, token])
    return both[len(context):] if both.startswith(context) else tokenizer.decode([token])


def _step_logprobs(logits: tuple[torch.Tensor, ...], new_ids: torch.Tensor, k: int,
                   vocab: int) -> tuple[list[list[float]], list[list[list[tuple[int, float]]]]]:
    """Per row and step: the chosen token's log-prob and the top-k (id, log-prob), from the raw logits.

    Steps are reduced one at a time so a (batch, steps, vocab) tensor is never built; ids past the
    tokenizer's vocabulary (padded embedding rows) are never offered as alternatives.
    """
    chosen, values, indices = [], [], []
    for step, step_logits in enumerate(logits):
        logp = step_logits.float().log_softmax(-1)
        chosen.append(logp.gather(1, new_ids[:, step:step + 1]).squeeze(1).cpu())
        best = logp[:, :vocab].topk(k, dim=-1)
        values.append(best.values.cpu())
        indices.append(best.indices.cpu())
    chosen_t, values_t, indices_t = torch.stack(chosen, 1), torch.stack(values, 1), torch.stack(indices, 1)
    top = [[list(zip(i_step, v_step, strict=True)) for i_step, v_step in zip(i_row, v_row, strict=True)]
           for i_row, v_row in zip(indices_t.tolist(), values_t.tolist(), strict=True)]
    return chosen_t.tolist(), top


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch for one batch without disturbing the caller's RNG streams afterwards."""
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise TeacherError(f"unknown device {device!r} for the teacher: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TeacherError(f"device {device!r} was asked for the teacher, but CUDA is not available")
    return resolved


def _looks_local(model: str) -> bool:
    """A path rather than a hub name ("org/name"), so a missing folder fails at once instead of asking the hub."""
    return model.startswith((".", "~")) or Path(model).is_absolute() or model.count("/") > 1 or "\\" in model


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the tokenizer's eos and the generation config's (e.g. LLaMA-3's eot)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    return {int(i) for i in ids if i is not None}


def _max_positions(model) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
