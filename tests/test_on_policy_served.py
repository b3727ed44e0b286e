"""A served teacher scores the student's completions (issue 18, items 3b and 4): legacy completions with echo,
checked against the same model scoring locally; a server that cannot echo is refused; transient faults are
retried; a teacher that stays down stops a 2-rank run with a checkpoint and one line (exit 75), and rerunning
resumes it with exactly the losses of a run the teacher never failed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import launch
from cotdistill.errors import TeacherUnavailable
from cotdistill.teacher.openai_backend import EchoedToken
from cotdistill.teacher.openai_scoring import OpenAITokenScorer, completion_tokens
from cotdistill.teacher.retry import RetryPolicy
from cotdistill.teacher.scoring import HFTokenScorer
from cotdistill.teacher.types import TeacherError, TokenLogprob
from fake_openai import FakeOpenAIServer, Fault
from served_teacher import model_echo_scorer
from test_on_policy import COMPLETION, PROMPT, compared, logged, on_policy_args, sharp_teacher

NO_WAIT = RetryPolicy(max_retries=2, initial=0.0, maximum=0.0)


@pytest.fixture(scope="module")
def teacher_dir(tiny_models, tmp_path_factory) -> Path:
    return sharp_teacher(tiny_models["gpt2"], tmp_path_factory.mktemp("served-teacher") / "teacher")


def served_scorer(server: FakeOpenAIServer, retry: RetryPolicy = NO_WAIT) -> OpenAITokenScorer:
    return OpenAITokenScorer("fake-teacher", server.base_url, timeout=30.0, concurrency=4, retry=retry)


def test_a_served_teacher_scores_the_completion_as_the_same_model_does_locally(teacher_dir):
    pairs = [(PROMPT, COMPLETION), (PROMPT, " 7"), (PROMPT, "")]
    local = HFTokenScorer(str(teacher_dir), device="cpu", precision="fp32").score(pairs, top_k=4)
    with FakeOpenAIServer(echo_scorer=model_echo_scorer(teacher_dir)) as server:
        scorer = served_scorer(server)
        try:
            served = scorer.score(pairs, top_k=4)
        finally:
            scorer.close()
    assert served[2] == () and server.requests == 2  # nothing to score: no request
    assert "".join(t.token for t in served[0]) == COMPLETION
    for ours, theirs in zip(served[:2], local[:2], strict=True):
        assert [t.token for t in ours] == [t.token for t in theirs]
        assert [t.logprob for t in ours] == pytest.approx([t.logprob for t in theirs], abs=1e-5)
        for a, b in zip(ours, theirs, strict=True):
            assert dict(a.top) == pytest.approx(dict(b.top), abs=1e-5)


def test_a_token_straddling_the_prompts_end_belongs_to_the_completion():
    echoed = [EchoedToken(2 * i, TokenLogprob(text, -1.0, ())) for i, text in enumerate(["ab", "cd", "ef"], 1)]
    # the text "..abcdef" (8 characters); its first token ".." is not echoed (nothing predicts it)
    assert [t.token for t in completion_tokens(echoed, prompt_chars=5, text_chars=8)] == ["cd", "ef"]
    assert [t.token for t in completion_tokens(echoed, prompt_chars=4, text_chars=8)] == ["cd", "ef"]
    assert [t.token for t in completion_tokens(echoed, prompt_chars=3, text_chars=8)] == ["ab", "cd", "ef"]


def test_a_server_that_does_not_echo_the_scored_text_is_refused_with_what_it_lacks():
    with FakeOpenAIServer(ignores=("echo",)) as server:
        scorer = served_scorer(server)
        try:
            with pytest.raises(TeacherError, match="does not score given text .*llama.cpp"):
                scorer.score([(PROMPT, COMPLETION)], top_k=3)
        finally:
            scorer.close()


def test_transient_faults_are_retried_and_counted():
    with FakeOpenAIServer(faults=[Fault("503", times=1), Fault("429", times=1), Fault("drop", times=1)]) as server:
        scorer = served_scorer(server, RetryPolicy(max_retries=3, initial=0.0, maximum=0.0))
        try:
            tokens, = scorer.score([(PROMPT, COMPLETION)], top_k=3)
        finally:
            scorer.close()
    assert "".join(t.token for t in tokens) == COMPLETION
    assert dict(scorer.retries) == {"server_error": 1, "rate_limit": 1, "connection": 1}


def test_a_teacher_down_past_the_retry_budget_raises_teacher_unavailable_with_exit_code_75():
    with FakeOpenAIServer(faults=[Fault("500", times=100)]) as server:
        scorer = served_scorer(server)
        try:
            with pytest.raises(TeacherUnavailable, match="gave up after 3 attempts.*HTTP 500") as caught:
                scorer.score([(PROMPT, COMPLETION), (PROMPT, " 7")], top_k=3)
        finally:
            scorer.close()
    assert caught.value.exit_code == 75
    assert server.requests == 6  # both requests ran their whole budget: none is left running


# --- 2 ranks under ZeRO-3: a tiny Llama student, the sharp tiny GPT-2 served (another tokenizer) -----------------

# Steps 1-2 score 2 micro-steps x 2 ranks x 2 completions = 16 texts (seed 42 samples no empty completion there);
# the teacher goes down from the 17th request on: the first micro-step of step 3.
SCORED_BEFORE_STEP_3 = 16


def served_args(student: Path, teacher: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return on_policy_args(student, teacher, out, "train.on_policy.teacher.backend=openai",
                          "train.on_policy.teacher.model=fake-teacher", f"train.on_policy.teacher.base_url={base_url}",
                          "train.on_policy.teacher.max_retries=2", "train.on_policy.teacher.backoff_initial=0",
                          "train.on_policy.teacher.backoff_max=0", "train.on_policy.teacher.timeout=60",
                          "checkpoint.every=4", *extra)


@pytest.fixture(scope="module")
def served_runs(tiny_models, teacher_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("on-policy-served")
    student, scorer = tiny_models["llama"], model_echo_scorer(teacher_dir)
    runs: dict = {}
    # Uninterrupted, but every kind of transient fault on the way (each retried within the budget of 2).
    faults = [Fault("503", times=1, after=3), Fault("429", times=1, after=9), Fault("drop", times=1, after=20)]
    with FakeOpenAIServer(echo_scorer=scorer, faults=faults) as server:
        launch("launchers/train.py", served_args(student, teacher_dir, root / "full", server.base_url))
        runs["faults_retried"] = server.faults_injected
    with FakeOpenAIServer(echo_scorer=scorer, faults=[Fault("500", times=10**6, after=SCORED_BEFORE_STEP_3)]) as server:
        # through the real `deepspeed` command, as a user or an sbatch script runs it: its exit code is what a
        # Slurm requeue rule sees
        runs["down"] = launch("launchers/train.py", served_args(student, teacher_dir, root / "resumed",
                                                                server.base_url), expect_ok=False, deepspeed_cli=True)
        runs["checkpoints_after_down"] = sorted(p.name for p in (root / "resumed" / "checkpoints").iterdir())
    with FakeOpenAIServer(echo_scorer=scorer) as server:
        launch("launchers/train.py", served_args(student, teacher_dir, root / "resumed", server.base_url))
    runs.update(full=root / "full", resumed=root / "resumed")
    return runs


def test_a_served_teacher_trains_a_student_through_retried_faults(served_runs):
    assert served_runs["faults_retried"] == {"503": 1, "429": 1, "drop": 1}
    rows = logged(served_runs["full"])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0.1 and r["score_s"] > 0 for r in rows)


def test_a_teacher_that_stays_down_stops_the_run_with_a_checkpoint_and_one_line(served_runs):
    down = served_runs["down"]
    assert down.returncode == 75  # EX_TEMPFAIL, through DeepSpeed's launcher
    errors = [line for line in down.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, down.stderr[-3000:]
    assert "gave up after 3 attempts" in errors[0] and "HTTP 500" in errors[0]
    assert "during step 3; checkpoint step 2 is saved; rerun the same command" in errors[0]
    assert "Traceback" not in down.stderr
    assert served_runs["checkpoints_after_down"] == ["step-000002"]


def test_rerunning_after_the_teacher_came_back_gives_the_uninterrupted_losses(served_runs):
    assert compared(served_runs["resumed"]) == compared(served_runs["full"])
    shutil.rmtree(served_runs["resumed"] / "final", ignore_errors=True)
