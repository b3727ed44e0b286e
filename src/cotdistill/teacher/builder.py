"""Build a verified teacher dataset: plan, ask (with retries), cache, grade, write. Resumable at any point.

The flow is ``problems -> prompts -> requests -> cache -> grading -> data/ + manifest.json``. Every
answered request is appended to the cache before anything else happens, and the dataset is graded from
the cache alone, so a build that is killed and started again asks only for what is missing and writes
exactly what an uninterrupted build writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
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
from cotdistill.teacher.asking import Job, RunCounters, TaskPlan, ask_all, plan_jobs
from cotdistill.teacher.cache import SampleCache
from cotdistill.teacher.files import import_trace_files
from cotdistill.teacher.grading import Graded, grade_cot, grade_decompositions, grade_gold_steps
from cotdistill.teacher.output import DATA_DIR, MANIFEST, write_manifest, write_shards
from cotdistill.teacher.probe import LOCAL, Capabilities, probe_capabilities, where_is
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
CAPABILITIES = "capabilities.json"  # in CACHE_DIR: the last capability probe of the teacher


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
    """Probe an HTTP teacher (once, if anything is to be asked), ask what the cache lacks, grade the cache."""
    sampling = Sampling(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                        max_tokens=config.sampling.max_tokens, stop=tuple(config.sampling.stop),
                        logprobs=config.sampling.logprobs)
    description: dict[str, Any] = {"backend": config.teacher.backend, "model": config.teacher.model}
    capabilities = LOCAL if config.teacher.backend == "hf" else _earlier_capabilities(out, config.teacher)
    made = [folder for folder in (out / CACHE_DIR, out) if not folder.exists()]  # removed again if left empty
    with _TaskCaches(out, config, _prefer_earlier_layout(out, config, plans)) as caches:
        jobs = caches.jobs(problems)
        if jobs and config.teacher.backend == "openai":
            try:
                capabilities, description = _probe(config, jobs[0], sampling)
            except BaseException:  # stopped before asking anything: leave no empty cache behind
                caches.close(drop_empty=True)
                _remove_empty_folders(made)
                raise
            _save_capabilities(out, capabilities, description)
            counters.probe_requests = capabilities.probe_requests
            if not capabilities.n and any(plan.per_request > 1 for plan in caches.plans):
                # One sample per request, in its own cache file (the seeds of a grouping never move).
                caches.open([dataclasses.replace(plan, per_request=1) for plan in caches.plans])
                jobs = caches.jobs(problems)
        counters.requests_planned = len(jobs)
        total = sum(len(problems) * len(plan.groups()) for plan in caches.plans)
        if jobs:
            log.info("%d of %d requests to send (%d answered in the cache)", len(jobs), total, total - len(jobs))
            description = _ask(config, jobs, sampling, caches.by_task, counters)
        else:
            log.info("all %d requests are answered in the cache; grading only", total)
        cache_stats = _grade_cached(caches.plans, caches.by_task, problems, graded)
    return {**description, "capabilities": capabilities.as_dict() if capabilities else None}, cache_stats


class _TaskCaches:
    """The open cache files of a build's tasks, reopened when the probe changes how samples are grouped."""

    def __init__(self, out: Path, config: BuildConfig, plans: list[TaskPlan]) -> None:
        self.out, self.config = out, config
        self.plans: list[TaskPlan] = []
        self.by_task: dict[str, SampleCache] = {}
        self._stack = ExitStack()
        self.open(plans)

    def open(self, plans: list[TaskPlan]) -> None:
        """Close the open caches (dropping any left empty) and open those of `plans`."""
        self.close(drop_empty=True)
        self._stack = ExitStack()
        self.plans = plans
        try:
            for plan in plans:
                cache = SampleCache(_cache_path(self.out, self.config, plan))
                self.by_task[plan.task] = self._stack.enter_context(cache)
        except BaseException:  # one cache in use by another build: release those already locked
            self._stack.close()
            raise

    def jobs(self, problems: list[Problem]) -> list[Job]:
        for plan in self.plans:
            _warn_of_unkeyed_lines(self.by_task[plan.task], problems, plan)
        return plan_jobs(self.plans, problems, self.by_task, self.config.sampling.seed)

    def close(self, drop_empty: bool = False) -> None:
        self._stack.close()
        if drop_empty:
            _remove_if_empty(cache.path for cache in self.by_task.values())

    def __enter__(self) -> _TaskCaches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ask(config: BuildConfig, jobs: list[Job], sampling: Sampling, caches: dict[str, SampleCache],
         counters: RunCounters) -> dict[str, Any]:
    """Send the jobs into the caches; returns the teacher's description."""
    teacher = make_teacher(config.teacher)
    description = teacher.describe()
    # A local model batches what is waiting: keep two batches queued so the next one is ready.
    local = config.teacher.backend == "hf"
    workers = 2 * config.teacher.batch_size if local else config.teacher.concurrency
    asked = time.monotonic()
    try:
        asyncio.run(ask_all(teacher, jobs, sampling, caches, _retry_policy(config.teacher), workers, counters,
                            where_is(description)))
    finally:
        counters.ask_seconds = time.monotonic() - asked
    return description


def _grade_cached(plans: list[TaskPlan], caches: dict[str, SampleCache], problems: list[Problem],
                  graded: dict[str, Graded]) -> dict[str, Any]:
    """Grade every task from its cache alone; returns the cache statistics per task."""
    cache_stats = {}
    for plan in plans:
        cache = caches[plan.task]
        grade = grade_cot if plan.task == "cot" else grade_decompositions
        graded[plan.task] = _merge(grade(p, _cached_samples(cache, p, plan), plan.samples) for p in problems)
        cache_stats[plan.task] = {**_cache_totals(cache, problems, plan), "samples_per_request": plan.per_request}
    return cache_stats


def _probe(config: BuildConfig, job: Job, sampling: Sampling) -> tuple[Capabilities, dict[str, Any]]:
    """Probe the server with the build's first prompt; log one line with what it honours."""
    teacher = make_teacher(config.teacher)  # its own client: a client lives in one event loop
    description = teacher.describe()
    where = where_is(description)

    async def go() -> Capabilities:
        try:
            return await probe_capabilities(teacher, job.plan.prompt.render(job.problem.question), sampling,
                                            config.sampling.seed, where, _retry_policy(config.teacher))
        finally:
            await teacher.close()

    capabilities = asyncio.run(go())
    log.info("teacher capabilities of %s: %s", where, capabilities.summary())
    if not capabilities.n:
        log.info("%s ignores n: asking one sample per request (seed sampling.seed + sample index)", where)
    if capabilities.seed is False:
        log.warning("%s ignores seed: samples asked again after an interruption will differ from those of an "
                    "uninterrupted build", where)
    if capabilities.samples_vary is False:
        log.warning("%s gave the same text for two seeds at temperature %g: it may decode greedily, which makes "
                    "every sample of a question a duplicate (transformers serve samples only when the model's "
                    "generation_config.json says do_sample=true)", where, sampling.temperature)
    return capabilities, description


def _prefer_earlier_layout(out: Path, config: BuildConfig, plans: list[TaskPlan]) -> list[TaskPlan]:
    """Resume in the one-sample-per-request cache an earlier run adapted to, rather than probe again to find it."""
    preferred = []
    for plan in plans:
        single = dataclasses.replace(plan, per_request=1)
        if plan.per_request > 1 and _has_lines(_cache_path(out, config, single)) \
                and not _has_lines(_cache_path(out, config, plan)):
            plan = single
        preferred.append(plan)
    return preferred


def _remove_if_empty(paths: Iterable[Path]) -> None:
    """Drop the empty cache files (and their locks) opened before the probe changed the plan."""
    for path in paths:
        if path.is_file() and path.stat().st_size == 0:
            path.unlink()
            path.with_name(path.name + ".lock").unlink(missing_ok=True)


def _remove_empty_folders(folders: list[Path]) -> None:
    """Remove each folder, innermost first, if it is empty (a folder holding anything is kept)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _has_lines(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _save_capabilities(out: Path, capabilities: Capabilities, description: dict[str, Any]) -> None:
    """Kept beside the cache, so a later run that asks nothing still reports what the server honours."""
    record = {"model": description.get("model"), "base_url": description.get("base_url"),
              "api": description.get("api"), **capabilities.as_dict()}
    path = out / CACHE_DIR / CAPABILITIES
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CAPABILITIES}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _earlier_capabilities(out: Path, teacher: TeacherConfig) -> Capabilities | None:
    """The last probe of this output folder's teacher (same model and API), if any."""
    path = out / CACHE_DIR / CAPABILITIES
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("model") != teacher.model or record.get("api") != teacher.api:
            return None
        fields = {f.name for f in dataclasses.fields(Capabilities)}
        return Capabilities(**{**{k: v for k, v in record.items() if k in fields}, "probed": "an earlier run",
                               "probe_requests": 0})
    except (OSError, ValueError, TypeError):
        return None


def _retry_policy(config: TeacherConfig) -> RetryPolicy:
    return RetryPolicy(max_retries=config.max_retries, initial=config.backoff_initial, maximum=config.backoff_max)


def _warn_of_unkeyed_lines(cache: SampleCache, problems: Sequence[Problem], plan: TaskPlan) -> None:
    """One line when the cache holds answers keyed by the prompt template alone (builds before 2026-12-07): they
    cannot be tied to a question's text, so they are not reused and their questions are asked again."""
    ids = {p.id for p in problems}
    old = sum(1 for line in cache.lines if line["prompt_hash"] == plan.prompt.hash and line["qid"] in ids
              and line["indices"])
    if old:
        log.warning("%s: %d cached answers were stored without their question's text hash (an older build); they "
                    "are not reused, and their questions are asked again", cache.path, old)


def _cached_samples(cache: SampleCache, problem: Problem, plan: TaskPlan) -> list[tuple[int, dict[str, Any]]]:
    prompt_hash = plan.cache_hash(problem)  # rendered and hashed once, not once per sample index
    keys = ((problem.id, i, prompt_hash) for i in range(plan.samples))
    return [(key[1], cache.samples[key]) for key in keys if cache.has(key)]


def _cache_totals(cache: SampleCache, problems: Sequence[Problem], plan: TaskPlan) -> dict[str, Any]:
    """Requests, token usage, retries and teacher time of the cached answers this build uses, with the retries of
    requests that failed (`failed` lines) or were cut off by a kill (`retried` lines) in any run."""
    hashes = {p.id: plan.cache_hash(p) for p in problems}
    usage: Counter = Counter()
    retries: Counter = Counter()
    requests, seconds = 0, 0.0
    failed = 0
    lines = [line for line in cache.lines if _counts_for(line, hashes, plan)]
    finished = {line.get("request") for line in lines if "retried" not in line}
    for line in lines:
        if "retried" in line:  # a retry line counts only where its request never finished (a killed run)
            retries.update([line["cause"]] if line.get("request") not in finished else [])
            continue
        retries.update(line.get("retries", {}))  # failed requests' too: they cost the server as much
        seconds += float(line.get("seconds", 0.0))
        if "failed" in line:
            failed += 1
            continue
        requests += 1
        usage.update(line.get("usage", {}))
    return {"file": str(cache.path.relative_to(cache.path.parent.parent)), "requests": requests,
            "failed_requests": failed, "usage": dict(usage), "retries": dict(retries),
            "teacher_seconds": round(seconds, 3)}


def _counts_for(line: dict[str, Any], hashes: dict[str, str], plan: TaskPlan) -> bool:
    """Whether a cache line belongs to this build: its questions (by id and exact prompt text, `hashes`) and
    sample range."""
    indices = line.get("failed") or line.get("retried") or line["indices"]
    return bool(line["prompt_hash"] == hashes.get(line["qid"]) and indices and indices[0] < plan.samples)


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
        "this_run": {"probe_requests": counters.probe_requests,
                     "requests_planned": counters.requests_planned, "requests_sent": counters.requests_sent,
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
                 "%d wrong, %d without an answer, %d cut off at max_tokens, %d malformed in all, %d duplicates)",
                 task, s["kept"], s["samples"], s["questions_kept"], s["questions"], _percent(first),
                 _percent(majority), s["wrong"], s["no_answer"], s["truncated"], s["malformed"], s["duplicates"])
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
