"""Build a verified teacher dataset: plan, ask (with retries), cache, grade, write. Resumable at any point.

The flow is ``problems -> prompts -> requests -> cache -> grading -> data/ + manifest.json``. Every
answered request is appended to the cache before anything else happens, and the dataset is graded from
the cache alone, so a build that is killed and started again asks only for what is missing and writes
exactly what an uninterrupted build writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cotdistill import __version__
from cotdistill.config import BuildConfig, ProblemsConfig, TeacherConfig, to_dict
from cotdistill.errors import DataError
from cotdistill.outputs import check_output_dir
from cotdistill.problems.loaders import load_problems
from cotdistill.problems.record import Problem
from cotdistill.problems.synthetic import generate_problems
from cotdistill.run_data import synthetic_spec
from cotdistill.teacher.asking import RunCounters, TaskPlan, ask_all, plan_jobs
from cotdistill.teacher.cache import SampleCache
from cotdistill.teacher.files import import_trace_files
from cotdistill.teacher.grading import Graded, grade_cot, grade_decompositions, grade_gold_steps
from cotdistill.teacher.output import DATA_DIR, MANIFEST, write_manifest, write_shards
from cotdistill.teacher.prompts import (
    COT_TEMPLATE,
    DECOMPOSE_TEMPLATE,
    cot_prompt,
    decompose_prompt,
    draw_exemplars,
    read_template,
)
from cotdistill.teacher.retry import RetryPolicy
from cotdistill.teacher.types import Sampling, Teacher

log = logging.getLogger(__name__)

PRODUCTS = {"cot": "cot", "decompose": "decompositions"}  # task -> output file prefix
CACHE_DIR = "cache"


def build_dataset(config: BuildConfig) -> Path:
    """Run a build described by `config`; returns the manifest's path."""
    out = Path(config.output_dir)
    _check_output_dir(out)
    started = time.monotonic()
    problems = load_build_problems(config.problems)
    log.info("%d problems from %s (%s)", len(problems), config.problems.dataset, config.problems.split)
    plans = _task_plans(config, problems)
    counters = RunCounters()
    graded: dict[str, Graded] = {}
    extra: dict[str, Any] = {}
    if config.teacher.backend == "files":
        samples, import_stats = import_trace_files(config.teacher.files, problems, config.teacher.question_field,
                                                   config.teacher.rationale_field)
        extra["import"] = import_stats.as_dict()
        graded["cot"] = _grade_imported(problems, samples)
        teacher_description: dict[str, Any] = {"backend": "files", "files": list(config.teacher.files)}
        cache_stats: dict[str, Any] = {}
    else:
        teacher_description, cache_stats = _ask_and_grade(config, problems, plans, out, counters, graded)
    if config.decompose.enabled and config.decompose.source == "gold":
        graded["decompose"] = _merge(grade_gold_steps(p) for p in problems)
    manifest = _manifest(config, problems, plans, teacher_description, graded, counters, cache_stats, extra,
                         time.monotonic() - started)
    manifest["files"] = write_shards(out, {PRODUCTS[t]: g.records for t, g in graded.items()}, config.shard_size)
    path = write_manifest(out, manifest)
    _log_summary(graded, counters, path)
    if counters.requests_failed:
        raise DataError(f"{counters.requests_failed} request(s) failed after {config.teacher.max_retries} retries; "
                        f"the dataset in {out} holds what was answered (manifest: complete=false). Run the same "
                        "command again to ask only for the missing samples.")
    return path


def load_build_problems(source: ProblemsConfig) -> list[Problem]:
    """The problems to ask about, first `limit` of them; ids must be unique (they key the cache)."""
    if source.dataset == "synthetic":
        problems = generate_problems(synthetic_spec(source.synthetic))
    else:
        problems = load_problems(source.dataset, source.split, data_dir=source.data_dir or None,
                                 path=source.path or None)
    if source.limit:
        problems = problems[: source.limit]
    if not problems:
        raise DataError(f"problems.dataset={source.dataset!r} split {source.split!r} holds no problems")
    counts = Counter(p.id for p in problems)
    repeated = [pid for pid, n in counts.items() if n > 1]
    if repeated:
        raise DataError(f"problem ids must be unique (they key the cache); repeated: {', '.join(repeated[:5])}")
    return problems


def make_teacher(config: TeacherConfig) -> Teacher:
    """The backend the config names; imported lazily (the local one needs torch and transformers)."""
    if config.backend == "openai":
        from cotdistill.teacher.openai_backend import OpenAITeacher

        return OpenAITeacher(config.model, base_url=config.base_url, api=config.api,
                             api_key_env=config.api_key_env, timeout=config.timeout,
                             concurrency=config.concurrency)
    from cotdistill.teacher.hf_local import HFTeacher

    return HFTeacher(config.model, device=config.device, precision=config.precision, batch_size=config.batch_size)


# ---------------------------------------------------------------------------------------------------------
# Asking the teacher


def _ask_and_grade(config: BuildConfig, problems: list[Problem], plans: list[TaskPlan], out: Path,
                   counters: RunCounters, graded: dict[str, Graded]) -> tuple[dict[str, Any], dict[str, Any]]:
    sampling = Sampling(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                        max_tokens=config.sampling.max_tokens, stop=tuple(config.sampling.stop),
                        logprobs=config.sampling.logprobs)
    with ExitStack() as stack:
        caches = {plan.task: stack.enter_context(SampleCache(_cache_path(out, config, plan))) for plan in plans}
        jobs = plan_jobs(plans, problems, caches, config.sampling.seed)
        counters.requests_planned = len(jobs)
        total = sum(len(problems) * len(plan.groups()) for plan in plans)
        description: dict[str, Any] = {"backend": config.teacher.backend, "model": config.teacher.model}
        if jobs:
            log.info("%d of %d requests to send (%d answered in the cache)", len(jobs), total, total - len(jobs))
            teacher = make_teacher(config.teacher)
            description = teacher.describe()
            # A local model batches what is waiting: keep two batches queued so the next one is ready.
            local = config.teacher.backend == "hf"
            workers = 2 * config.teacher.batch_size if local else config.teacher.concurrency
            asked = time.monotonic()
            try:
                asyncio.run(ask_all(teacher, jobs, sampling, caches, _retry_policy(config.teacher), workers,
                                     counters))
            finally:
                counters.ask_seconds = time.monotonic() - asked
        else:
            log.info("all %d requests are answered in the cache; grading only", total)
        cache_stats = {}
        for plan in plans:
            cache = caches[plan.task]
            grade = grade_cot if plan.task == "cot" else grade_decompositions
            graded[plan.task] = _merge(
                grade(p, _cached_samples(cache, p, plan), plan.samples) for p in problems)
            cache_stats[plan.task] = _cache_totals(cache, problems, plan)
    return description, cache_stats


def _retry_policy(config: TeacherConfig) -> RetryPolicy:
    return RetryPolicy(max_retries=config.max_retries, initial=config.backoff_initial, maximum=config.backoff_max)


def _cached_samples(cache: SampleCache, problem: Problem, plan: TaskPlan) -> list[tuple[int, dict[str, Any]]]:
    keys = ((problem.id, i, plan.prompt.hash) for i in range(plan.samples))
    return [(key[1], cache.samples[key]) for key in keys if cache.has(key)]


def _cache_totals(cache: SampleCache, problems: Sequence[Problem], plan: TaskPlan) -> dict[str, Any]:
    """Requests, token usage, retries and teacher time of the cached answers this build uses."""
    ids = {p.id for p in problems}
    usage: Counter = Counter()
    retries: Counter = Counter()
    requests, seconds = 0, 0.0
    for line in cache.lines:
        if line["qid"] in ids and line["prompt_hash"] == plan.prompt.hash and line["indices"][0] < plan.samples:
            requests += 1
            usage.update(line.get("usage", {}))
            retries.update(line.get("retries", {}))
            seconds += float(line.get("seconds", 0.0))
    return {"file": str(cache.path.relative_to(cache.path.parent.parent)), "requests": requests,
            "usage": dict(usage), "retries": dict(retries), "teacher_seconds": round(seconds, 3)}


def _cache_path(out: Path, config: BuildConfig, plan: TaskPlan) -> Path:
    """One cache file per task and decoding setup: other settings never reuse these samples."""
    settings = {"backend": config.teacher.backend, "model": config.teacher.model, "api": config.teacher.api,
                "sampling": to_dict(config.sampling), "per_request": plan.per_request}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return out / CACHE_DIR / f"{plan.task}-{digest}.jsonl"


# ---------------------------------------------------------------------------------------------------------
# Planning, grading and reporting


def _task_plans(config: BuildConfig, problems: list[Problem]) -> list[TaskPlan]:
    """The tasks that ask the teacher (gold decompositions and imported files ask nothing)."""
    if config.teacher.backend == "files":
        return []
    plans = []
    per_request = config.teacher.samples_per_request
    if config.cot.enabled:
        c = config.cot
        exemplars = draw_exemplars(problems, c.k_shot, c.exemplar_seed, usable="rationale")
        spec = cot_prompt(exemplars, read_template(c.template, COT_TEMPLATE, "cot.template"))
        plans.append(TaskPlan("cot", spec, c.samples, min(per_request or c.samples, c.samples)))
    if config.decompose.enabled and config.decompose.source == "teacher":
        d = config.decompose
        exemplars = draw_exemplars(problems, d.k_shot, d.exemplar_seed, usable="steps")
        spec = decompose_prompt(exemplars, read_template(d.template, DECOMPOSE_TEMPLATE, "decompose.template"))
        plans.append(TaskPlan("decompose", spec, d.samples, min(per_request or d.samples, d.samples)))
    return plans


def _grade_imported(problems: list[Problem], samples: dict[str, list[tuple[int, dict[str, Any]]]]) -> Graded:
    """Grade imported traces; only questions with at least one trace count."""
    return _merge(grade_cot(p, samples[p.id], len(samples[p.id])) for p in problems if p.id in samples)


def _merge(parts: Any) -> Graded:
    merged = Graded()
    for part in parts:
        merged.records.extend(part.records)
        merged.stats.add(part.stats)
    return merged


def _manifest(config: BuildConfig, problems: list[Problem], plans: list[TaskPlan], teacher: dict[str, Any],
              graded: dict[str, Graded], counters: RunCounters, cache_stats: dict[str, Any],
              extra: dict[str, Any], seconds: float) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for task, result in graded.items():
        tasks[task] = {**result.stats.summary(), **({"cache": cache_stats[task]} if task in cache_stats else {})}
    complete = counters.requests_failed == 0 and all(g.stats.missing == 0 for g in graded.values())
    return {
        "format_version": 1,
        "cotdistill_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "problems": {"dataset": config.problems.dataset, "split": config.problems.split,
                     "path": config.problems.path, "count": len(problems)},
        "teacher": teacher,
        "sampling": to_dict(config.sampling),
        "prompts": {plan.task: plan.prompt.manifest_entry() for plan in plans},
        "tasks": tasks,
        "this_run": {"requests_planned": counters.requests_planned, "requests_sent": counters.requests_sent,
                     "requests_failed": counters.requests_failed,
                     "retries_of_failed_requests": dict(counters.retries_of_failed),
                     "ask_seconds": round(counters.ask_seconds, 3), "wall_seconds": round(seconds, 3)},
        **extra,
        "config": to_dict(config),
    }


def _log_summary(graded: dict[str, Graded], counters: RunCounters, manifest: Path) -> None:
    for task, result in graded.items():
        s = result.stats.summary()
        first = s["first_sample_accuracy"]
        majority = s["majority_vote_accuracy"]
        log.info("%s: kept %d of %d samples for %d of %d questions (first-sample accuracy %s, majority vote %s, "
                 "%d wrong, %d without an answer, %d malformed in all, %d duplicates)", task, s["kept"], s["samples"],
                 s["questions_kept"], s["questions"], _percent(first), _percent(majority), s["wrong"],
                 s["no_answer"], s["malformed"], s["duplicates"])
    log.info("wrote %s", manifest)


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def _check_output_dir(out: Path) -> None:
    """Refuse a folder that holds something other than a dataset (nothing of the user's is overwritten), or that
    cannot be written."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output_dir {out} is a file; give a folder")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if p.name not in (DATA_DIR, CACHE_DIR, MANIFEST)
                   and not p.name.startswith(".")]
        if foreign:
            raise DataError(f"output_dir {out} holds files a build did not write ({', '.join(sorted(foreign)[:5])}); "
                            "choose a new or empty folder")
    check_output_dir(out)  # the build writes its cache and shards here: refuse now, not after the build
