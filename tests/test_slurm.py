"""slurm/*.sbatch on a real Slurm cluster started here: one node, and two nodes made of network namespaces.

Root only (the daemons run as root); Slurm and munge are installed with apt-get when missing, else the module
is skipped with the reason. Each fixture submits its jobs at once and waits for all of them; the tests read
what they left behind:

- one node: a training job (checkpoints, TensorBoard, held-out metrics, final export), an evaluation job
  chained on it (--dependency=afterok), the same training job preempted twice by USR1, during start-up and
  mid-run (each time it checkpoints, requeues itself and resumes; it ends with exactly the uninterrupted
  job's steps and losses), the same training job cancelled mid-run with a plain `scancel` (TERM: it
  checkpoints at the next step and is not requeued) and then submitted again with the same command (it
  resumes from that checkpoint), and a teacher-data build against a loopback fake OpenAI server, preempted and
  requeued.
- two nodes: the same training as one rank per namespace; gloo traffic crosses the bridge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_RUN, read_losses
from fake_openai import FakeOpenAIServer
from slurm_cluster import DONE_STATES, INNER_IFNAME, SlurmCluster, require_slurm

pytestmark = pytest.mark.distributed

MAX_STEPS = 12
# TINY_RUN, long enough to be stopped in the middle; the uninterrupted, preempted and two-node jobs all use it.
TRAIN_OVERRIDES = [*TINY_RUN, f"train.max_steps={MAX_STEPS}", "checkpoint.every=6", "model.make_tiny="]
EVAL_ARGS = ["--datasets", "synthetic", "--synthetic.eval_size", "4", "--synthetic.train_size", "256",
             "--synthetic.operand_max", "9", "--max_new_tokens", "16", "--batch_size", "2"]
KEY_ENV, SECRET = "COTDISTILL_SLURM_TEST_KEY", "sk-slurm-test-0b1e6f2a9c"
QUESTIONS, SAMPLES = 40, 4


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"(no log at {path})"


# The one-node fixture's six jobs run one after another (each takes the node's CPUs): about 3 minutes on a quiet
# 2-core machine, 7 to 10 under a load of other test runs.
JOBS_TIMEOUT_S = 1200


def wait_for_jobs(cluster: SlurmCluster, jobs: dict[str, int], logs: Path, timeout: float = JOBS_TIMEOUT_S,
                  triggers: dict | None = None) -> dict[str, dict[str, str]]:
    """Poll `scontrol show job` until every job ended; `triggers` maps a name to (condition, action) run once."""
    pending = dict(triggers or {})
    deadline = time.monotonic() + timeout
    while True:
        for name, (condition, action) in list(pending.items()):
            if condition():
                action()
                del pending[name]
        records = {name: cluster.job(job_id) for name, job_id in jobs.items()}
        if all(r.get("JobState") in DONE_STATES or r.get("Reason") == "DependencyNeverSatisfied"
               for r in records.values()):
            return records
        if time.monotonic() > deadline:
            tails = "\n".join(f"=== {p.name}\n{read_log(p)[-3000:]}" for p in sorted(logs.glob("*.out")))
            pytest.fail(f"jobs did not end in {timeout:.0f} s: {records}\n{tails}\n{cluster.daemon_logs()}")
        time.sleep(0.2)


def assert_completed(record: dict[str, str], log: Path) -> None:
    assert record.get("JobState") == "COMPLETED" and record.get("ExitCode") == "0:0", \
        f"{record.get('JobState')} {record.get('ExitCode')} {record.get('Reason')}\n{read_log(log)[-6000:]}"


def log_rows(run: Path) -> int:
    log = run / "train_log.jsonl"
    return log.read_text().count("\n") if log.exists() else 0


def resumed_step(text: str) -> int | None:
    """N from the trainer's 'resumed from ... (step N, ...' line, if the text has one."""
    _, found, rest = text.partition("resumed from ")
    return int(rest.split("(step ")[1].split(",")[0]) if found and "(step " in rest else None


def stopped_step(text: str) -> int | None:
    _, found, rest = text.partition("stop requested: checkpoint saved at step ")
    return int(rest.split(";")[0]) if found else None


def cached_lines(out: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in (out / "cache").glob("cot-*.jsonl")) if out.exists() else 0


def cached_samples(out: Path) -> list[tuple[str, int]]:
    return [(row["qid"], i) for f in sorted((out / "cache").glob("cot-*.jsonl"))
            for row in map(json.loads, f.read_text().splitlines()) for i in row["indices"]]


@pytest.fixture(scope="module")
def one_node(request, tmp_path_factory):
    require_slurm()  # before the session's tiny models are built
    tiny_models = request.getfixturevalue("tiny_models")
    root = tmp_path_factory.mktemp("slurm-one-node")
    logs = root / "logs"
    logs.mkdir()
    with SlurmCluster(nodes=1) as cluster, FakeOpenAIServer(api_key=SECRET, delay=0.05) as teacher:
        def submit(script: str, name: str, env: dict, *args: str, options: tuple[str, ...] = ()) -> int:
            return cluster.sbatch(REPO / "slurm" / script, *args, cwd=REPO, env=env,
                                  options=(f"--job-name={name}", f"--output={logs}/{name}-%j.out", *options))

        train_env = {"RECIPE": "recipes/demo-t5-synthetic.yaml", "GPUS_PER_NODE": "2",
                     "OVERRIDES": " ".join([*TRAIN_OVERRIDES, f"model.name_or_path={tiny_models['t5']}"])}
        jobs = {"train": submit("train.sbatch", "train", {**train_env, "OUTPUT_DIR": str(root / "train")})}
        jobs["eval"] = submit("evaluate.sbatch", "eval", {"MODEL": str(root / "train"), "GPUS_PER_NODE": "2",
                                                          "OUTPUT_DIR": str(root / "eval")},
                              *EVAL_ARGS, options=(f"--dependency=afterok:{jobs['train']}",))
        jobs["preempt"] = submit("train.sbatch", "preempt", {**train_env, "OUTPUT_DIR": str(root / "preempt")})
        # Cancelled mid-run, then the same command again once the cancelled job has ended.
        cancel_env = {**train_env, "OUTPUT_DIR": str(root / "cancel")}
        jobs["cancel"] = submit("train.sbatch", "cancel", cancel_env)
        jobs["rerun"] = submit("train.sbatch", "rerun", cancel_env,
                               options=(f"--dependency=afterany:{jobs['cancel']}",))
        data_overrides = [
            "problems.dataset=synthetic", f"problems.synthetic.train_size={QUESTIONS}",
            "problems.synthetic.max_steps=2",
            "teacher.model=fake-teacher", f"teacher.base_url={teacher.base_url}", f"teacher.api_key_env={KEY_ENV}",
            "teacher.concurrency=2", "teacher.samples_per_request=1", "teacher.timeout=5", f"cot.samples={SAMPLES}",
            "cot.k_shot=2"]
        jobs["data"] = submit("build_data.sbatch", "data", {"OUTPUT_DIR": str(root / "data"), KEY_ENV: SECRET},
                              *data_overrides)

        def stop(job: str):
            return lambda: cluster.command("scancel", "--signal=USR1", "--batch", str(jobs[job]))

        preempt_log = logs / f"preempt-{jobs['preempt']}.out"

        def restarted_and_trained_two_steps() -> bool:
            _, restarted, after = read_log(preempt_log).partition("SLURM_RESTART_COUNT=1")
            step = resumed_step(after)
            return bool(restarted) and step is not None and log_rows(root / "preempt") >= step + 2

        started = time.monotonic()
        # USR1 to the batch shell only, as `#SBATCH --signal=B:USR1@180` sends it before a time limit: first while
        # the workers start up (before they handle USR1), then in the middle of the requeued run.
        records = wait_for_jobs(cluster, jobs, logs, triggers={
            "preempt at start-up": (lambda: "node_rank=" in read_log(preempt_log), stop("preempt")),
            "preempt mid-run": (restarted_and_trained_two_steps, stop("preempt")),
            # A plain scancel, as a user stops a job: TERM to the batch shell and every process of the job.
            "cancel mid-run": (lambda: log_rows(root / "cancel") >= 1,
                               lambda: cluster.command("scancel", str(jobs["cancel"]))),
            "data": (lambda: cached_lines(root / "data") >= 20, stop("data"))})
        print(f"one-node jobs took {time.monotonic() - started:.0f} s", flush=True)
        logs_by_job = {name: logs / f"{name}-{job_id}.out" for name, job_id in jobs.items()}
        yield {"root": root, "records": records, "logs": logs_by_job, "jobs": jobs, "logs_dir": logs}


@pytest.fixture(scope="module")
def two_nodes(request, tmp_path_factory):
    require_slurm(namespaces=True)
    tiny_models = request.getfixturevalue("tiny_models")
    root = tmp_path_factory.mktemp("slurm-two-nodes")
    logs = root / "logs"
    logs.mkdir()
    with SlurmCluster(nodes=2, namespaces=True) as cluster:
        env = {"RECIPE": "recipes/demo-t5-synthetic.yaml", "GPUS_PER_NODE": "1", "OUTPUT_DIR": str(root / "run"),
               "COTDISTILL_IFNAME": INNER_IFNAME,
               "OVERRIDES": " ".join([*TRAIN_OVERRIDES, f"model.name_or_path={tiny_models['t5']}"])}
        before = cluster.interface_bytes("node2")
        job = cluster.sbatch(REPO / "slurm" / "train.sbatch", cwd=REPO, env=env,
                             options=("--nodes=2", "--job-name=train2", f"--output={logs}/train2-%j.out"))
        started = time.monotonic()
        record = wait_for_jobs(cluster, {"train": job}, logs)["train"]
        print(f"two-node job took {time.monotonic() - started:.0f} s", flush=True)
        yield {"run": root / "run", "record": record, "log": logs / f"train2-{job}.out",
               "addrs": dict(cluster.node_addrs), "bytes": cluster.interface_bytes("node2") - before,
               "hostfile": logs / f"hostfile-{job}"}


def test_a_training_job_leaves_checkpoints_tensorboard_metrics_and_an_export(one_node):
    from cotdistill.checkpoints import complete_checkpoints

    run, log = one_node["root"] / "train", one_node["logs"]["train"]
    assert_completed(one_node["records"]["train"], log)
    assert [c.step for c in complete_checkpoints(run)] == [6, MAX_STEPS]
    assert sorted(read_losses(run)) == list(range(1, MAX_STEPS + 1))
    assert list((run / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    metrics = json.loads((run / "eval" / "held-out" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["total"] == 6
    assert (run / "final" / "model.safetensors").is_file()
    text = read_log(log)
    assert "MASTER_ADDR=127.0.0.1" in text and "SLURM_RESTART_COUNT=0" in text and "requeue" not in text
    hostfile = one_node["logs_dir"] / f"hostfile-{one_node['jobs']['train']}"
    assert hostfile.read_text().split() == [one_node["records"]["train"]["NodeList"], "slots=2"]


def test_an_evaluation_job_chained_on_the_training_job_writes_metrics(one_node):
    assert_completed(one_node["records"]["eval"], one_node["logs"]["eval"])
    metrics = json.loads((one_node["root"] / "eval" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["datasets"]["synthetic"]["total"] == 4
    assert len((one_node["root"] / "eval" / "synthetic" / "predictions.jsonl").read_text().splitlines()) == 4


def test_a_preempted_training_job_checkpoints_requeues_and_resumes_to_the_same_steps_and_losses(one_node):
    from cotdistill.checkpoints import complete_checkpoints

    record, log = one_node["records"]["preempt"], one_node["logs"]["preempt"]
    assert_completed(record, log)
    assert record["Restarts"] == "2"
    text = read_log(log)
    runs = [text.split(f"SLURM_RESTART_COUNT={n}")[1].split("SLURM_RESTART_COUNT=")[0] for n in range(3)]
    first_stop, second_stop = stopped_step(runs[0]), stopped_step(runs[1])
    # Stopped during start-up: the USR1 waited for the workers' handler, then took effect at the first steps.
    assert first_stop is not None and 1 <= first_stop < MAX_STEPS - 2, runs[0][-4000:]
    assert resumed_step(runs[1]) == first_stop and second_stop is not None and first_stop < second_stop, runs[1]
    assert resumed_step(runs[2]) == second_stop and stopped_step(runs[2]) is None
    for n, run_text in enumerate(runs):
        assert "torchrun exited 0" in run_text, f"run {n}: a worker did not exit cleanly\n{run_text[-4000:]}"
        assert ("received SIGUSR1" in run_text) == (n < 2) and ("requeueing job" in run_text) == (n < 2)
    run = one_node["root"] / "preempt"
    rows = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert rows == list(range(1, MAX_STEPS + 1)), "every optimizer step logged exactly once"
    assert complete_checkpoints(run)[-1].step == MAX_STEPS
    assert second_stop in [c.step for c in complete_checkpoints(run)]
    full, resumed = read_losses(one_node["root"] / "train"), read_losses(run)
    # Exact: the same ranks and kernels on the same inputs (tests/test_resume_exact.py says what had to carry).
    assert resumed == full, {step: resumed[step] - full[step] for step in full if resumed.get(step) != full[step]}
    assert (run / "final" / "model.safetensors").is_file()
    assert json.loads((run / "eval" / "held-out" / "metrics.json").read_text())["total"] == 6


def test_a_cancelled_training_job_checkpoints_is_not_requeued_and_the_same_command_resumes(one_node):
    from cotdistill.checkpoints import complete_checkpoints

    record, log = one_node["records"]["cancel"], one_node["logs"]["cancel"]
    text = read_log(log)
    assert record["JobState"] == "CANCELLED" and record["Restarts"] == "0", (record, text[-4000:])
    assert "received SIGTERM" in text, text[-4000:]
    assert "requeueing job" not in text and "SLURM_RESTART_COUNT=1" not in text
    stop = stopped_step(text)
    assert stop is not None and 1 <= stop < MAX_STEPS, text[-4000:]
    run = one_node["root"] / "cancel"
    assert stop in [c.step for c in complete_checkpoints(run)]
    # The same command again: a fresh job (no restart) that resumes from the cancelled job's checkpoint.
    rerun, rerun_log = one_node["records"]["rerun"], one_node["logs"]["rerun"]
    assert_completed(rerun, rerun_log)
    rerun_text = read_log(rerun_log)
    assert "SLURM_RESTART_COUNT=0" in rerun_text and rerun["Restarts"] == "0"
    assert resumed_step(rerun_text) == stop, rerun_text[-4000:]
    rows = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert rows == list(range(1, MAX_STEPS + 1)), "every optimizer step logged exactly once"
    assert complete_checkpoints(run)[-1].step == MAX_STEPS
    assert (run / "final" / "model.safetensors").is_file()


def test_a_preempted_data_build_requeues_and_ends_with_every_sample_once(one_node):
    record, log = one_node["records"]["data"], one_node["logs"]["data"]
    assert_completed(record, log)
    assert record["Restarts"] == "1", read_log(log)[-4000:]
    text = read_log(log)
    assert "received SIGUSR1" in text and "SLURM_RESTART_COUNT=1" in text
    assert SECRET not in text
    out = one_node["root"] / "data"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True
    samples = cached_samples(out)
    assert len(samples) == len(set(samples)) == QUESTIONS * SAMPLES


def test_a_two_node_job_runs_one_rank_per_namespace_over_the_bridge(two_nodes, one_node):
    from cotdistill.checkpoints import complete_checkpoints

    assert_completed(two_nodes["record"], two_nodes["log"])
    text = read_log(two_nodes["log"])
    addrs = two_nodes["addrs"]
    assert two_nodes["record"]["NodeList"] == "node[1-2]"
    assert f"MASTER_ADDR={addrs['node1']}" in text and f"IFNAME={INNER_IFNAME}" in text
    for rank, node in enumerate(("node1", "node2")):
        assert f"node {node} node_rank={rank}/2 addr={addrs[node]}/24" in text, text[-4000:]
        assert f"node {node}: torchrun exited 0" in text
    run = two_nodes["run"]
    assert [c.meta["world_size"] for c in complete_checkpoints(run)] == [2, 2]
    assert json.loads((run / "eval" / "held-out" / "metrics.json").read_text())["world_size"] == 2
    # Same world size and data order as the one-node job with two ranks: the same losses, up to float sums in
    # another order (each namespace sees the machine's cores, so its rank runs more matmul threads).
    full, two = read_losses(one_node["root"] / "train"), read_losses(run)
    assert sorted(two) == list(range(1, MAX_STEPS + 1))
    for step in two:
        assert two[step] == pytest.approx(full[step], rel=1e-3, abs=1e-3), (step, full, two)
    # ZeRO-3 gathers and reductions between the ranks went through node2's veth (Slurm's own RPCs are KBs).
    assert two_nodes["bytes"] > 1_000_000, two_nodes["bytes"]
    assert two_nodes["hostfile"].read_text().splitlines() == ["node1 slots=1", "node2 slots=1"]
