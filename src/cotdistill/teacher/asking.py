"""Asking the teacher: which requests a build still needs, and sending them with retries into the cache.

Requests go out through at most `workers` coroutines; each answer is appended to the cache the moment it
arrives, with its token usage, time and retry causes. A request that still fails after all retries is
counted, logged and kept in the cache with its retries (each retry is written as it happens), not
fatal; a permanent teacher error (bad key, unknown model, an answer that lacks what was asked) stops every
worker, unretried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from cotdistill.problems.record import Problem
from cotdistill.teacher.cache import SampleCache
from cotdistill.teacher.probe import check_response
from cotdistill.teacher.prompts import PromptSpec
from cotdistill.teacher.retry import RetriesExhausted, RetryPolicy, call_with_retries
from cotdistill.teacher.types import Completion, SampleRequest, Sampling, Teacher

log = logging.getLogger(__name__)

MAX_FAILURE_LINES = 10  # failed requests logged one per line; beyond this only counted


@dataclass(frozen=True)
class TaskPlan:
    """One task of a build: its prompt, how many samples per question, how they are grouped in requests."""

    task: str
    prompt: PromptSpec
    samples: int
    per_request: int

    def groups(self) -> list[tuple[int, ...]]:
        """Sample indices asked together; fixed by (samples, per_request), so seeds never move on resume."""
        return [tuple(range(s, min(s + self.per_request, self.samples))) for s in range(0, self.samples,
                                                                                         self.per_request)]

    def cache_hash(self, problem: Problem) -> str:
        """The cache key's prompt part for one problem: the exact prompt text it is asked with."""
        return self.prompt.request_hash(problem.question)


@dataclass(frozen=True)
class Job:
    plan: TaskPlan
    problem: Problem
    group: tuple[int, ...]  # asked as n = len(group)
    missing: tuple[int, ...]  # the indices of the group the cache lacks: only these are stored
    seed: int


@dataclass
class RunCounters:
    """What happened in this invocation (the cache holds the rest)."""

    probe_requests: int = 0  # the capability probe's, before sampling (not cached)
    requests_planned: int = 0
    requests_sent: int = 0
    requests_failed: int = 0
    retries_of_failed: Counter = field(default_factory=Counter)
    failures_logged: int = 0
    ask_seconds: float = 0.0  # wall time of the asking phase alone (throughput = requests_sent / this)


def plan_jobs(plans: Sequence[TaskPlan], problems: Sequence[Problem], caches: dict[str, SampleCache],
              base_seed: int) -> list[Job]:
    """The requests still needed: every group with at least one sample the cache lacks.

    A group's seed depends only on the base seed and its first index, so a group asked again after a
    crash is the same request a seeded server answers identically.
    """
    jobs = []
    for problem in problems:
        for plan in plans:
            cache, prompt_hash = caches[plan.task], plan.cache_hash(problem)  # one render and hash per problem
            for group in plan.groups():
                missing = tuple(i for i in group if not cache.has((problem.id, i, prompt_hash)))
                if missing:
                    jobs.append(Job(plan, problem, group, missing, seed=base_seed + group[0]))
    return jobs




async def ask_all(teacher: Teacher, jobs: list[Job], sampling: Sampling, caches: dict[str, SampleCache],
                   policy: RetryPolicy, workers: int, counters: RunCounters, where: str = "the teacher") -> None:
    """Send the jobs with at most `workers` in flight; a permanent teacher error stops the build."""
    pending = iter(jobs)
    rng = random.Random()  # jitter only: never affects what is asked or stored
    progress = tqdm(total=len(jobs), unit="req", desc="teacher", dynamic_ncols=True, mininterval=1.0)
    retries: Counter = Counter()

    async def worker() -> None:
        for job in pending:
            await ask_one(teacher, job, sampling, caches[job.plan.task], policy, rng, counters, retries, where)
            progress.update(1)
            if retries or counters.requests_failed:
                progress.set_postfix(retries=sum(retries.values()), failed=counters.requests_failed, refresh=False)

    tasks = [asyncio.create_task(worker()) for _ in range(min(workers, len(jobs)))]
    try:
        await asyncio.gather(*tasks)  # the first worker error (a TeacherError) stops the others
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        progress.close()
        await teacher.close()


async def ask_one(teacher: Teacher, job: Job, sampling: Sampling, cache: SampleCache, policy: RetryPolicy,
                  rng: random.Random, counters: RunCounters, all_retries: Counter, where: str = "the teacher") -> None:
    """Ask one job; a deterministic mismatch (wrong choice count, missing log-probs) stops the build unretried.

    Each retry is written to the cache as it happens, tied to the request's final line by a request id:
    a build killed while retrying (even with SIGKILL) leaves its retries for the next run to count.
    """
    request = SampleRequest(prompt=job.plan.prompt.render(job.problem.question), n=len(job.group),
                            sampling=sampling, seed=job.seed)
    retries: Counter = Counter()
    key = uuid.uuid4().hex[:16]
    prompt_hash = job.plan.cache_hash(job.problem)

    def on_retry(cause: str) -> None:
        retries[cause] += 1
        all_retries[cause] += 1
        cache.append_note(job.problem.id, prompt_hash, {"retried": list(job.missing), "cause": cause, "request": key})

    started = time.monotonic()
    try:
        response = await call_with_retries(lambda: teacher.sample(request), policy, on_retry=on_retry, rng=rng)
    except RetriesExhausted as err:
        cache.append_note(job.problem.id, prompt_hash, {
            "failed": list(job.missing), "cause": err.cause, "seed": job.seed, "retries": dict(retries),
            "seconds": round(time.monotonic() - started, 4), "request": key})
        _count_failure(job, err, retries, counters)
        return
    check_response(response, len(job.group), sampling.logprobs, f"{where} ({job.problem.id})")
    by_index = dict(zip(job.group, response.completions, strict=True))
    cache.append(job.problem.id, prompt_hash, list(job.missing),
                 [_serialize(by_index[i]) for i in job.missing],
                 {"seed": job.seed, "usage": dataclasses.asdict(response.usage),
                  "seconds": round(time.monotonic() - started, 4), "retries": dict(retries), "request": key})
    counters.requests_sent += 1


def _count_failure(job: Job, err: RetriesExhausted, retries: Counter, counters: RunCounters) -> None:
    """Count a request that failed after all retries; log the first few, one line each."""
    counters.requests_failed += 1
    counters.retries_of_failed.update(retries)
    if counters.failures_logged < MAX_FAILURE_LINES:
        counters.failures_logged += 1
        log.warning("request for %s (%s, samples %d-%d) failed after %d attempts: %s: %s", job.problem.id,
                    job.plan.task, job.group[0], job.group[-1], err.attempts, err.cause, err.message)
        if counters.failures_logged == MAX_FAILURE_LINES:
            log.warning("further failed requests are counted, not logged")


def _serialize(completion: Completion) -> dict[str, Any]:
    sample: dict[str, Any] = {"text": completion.text, "finish_reason": completion.finish_reason}
    if completion.tokens:
        sample["tokens"] = [[t.token, t.logprob, [list(alt) for alt in t.top]] for t in completion.tokens]
    return sample
