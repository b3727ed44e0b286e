"""The OpenAI backend against the fake OpenAI server: parsing, sampling settings, error mapping, key hygiene."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from conftest import free_port
from cotdistill.errors import ConfigError
from cotdistill.teacher.openai_backend import QUIET_LOGGERS, OpenAITeacher, retry_after_seconds
from cotdistill.teacher.probe import Capabilities, ProtocolMismatch, probe_capabilities
from cotdistill.teacher.retry import RetryPolicy, call_with_retries
from cotdistill.teacher.types import SampleRequest, Sampling, TeacherError, TransientTeacherError
from fake_openai import FakeOpenAIServer, Fault, echo_responder, pieces, question_of

KEY_ENV = "COTDISTILL_TEST_TEACHER_KEY"
PROMPT = "Question: What is 2 + 3?\nAnswer: 5\n\nQuestion: What is 40 + 2?\nAnswer:"


def labelled(question: str, prompt: str, sample: int) -> str:
    """Answers that say which sample they are, so order and seeds can be checked."""
    return f"Sample {sample} thinks about {question} and answers {sample * 10}."


@pytest.fixture
def serve():
    """Start fake servers for a test; all are stopped at teardown."""
    servers: list[FakeOpenAIServer] = []

    def start(**kwargs) -> FakeOpenAIServer:
        kwargs.setdefault("responder", labelled)
        servers.append(FakeOpenAIServer(**kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def teacher_for(server: FakeOpenAIServer, **kwargs) -> OpenAITeacher:
    kwargs.setdefault("api_key_env", KEY_ENV)
    return OpenAITeacher("fake-teacher", base_url=server.base_url, **kwargs)


def request(n: int = 1, seed: int | None = None, prompt: str = PROMPT, **sampling) -> SampleRequest:
    return SampleRequest(prompt=prompt, n=n, sampling=Sampling(**sampling), seed=seed)


def ask(teacher: OpenAITeacher, *requests: SampleRequest) -> list:
    """Send the requests one after another on one event loop; each result is a response or the exception."""

    async def go() -> list:
        results = []
        try:
            for req in requests:
                try:
                    results.append(await teacher.sample(req))
                except Exception as err:  # collected for the assertions
                    results.append(err)
        finally:
            await teacher.close()
        return results

    return asyncio.run(go())


# -- answers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_returns_n_completions_in_order_with_finish_reasons_and_usage(serve, api):
    server = serve()
    (response,) = ask(teacher_for(server, api=api), request(n=3))
    texts = [c.text for c in response.completions]
    assert texts == [labelled("What is 40 + 2?", PROMPT, i) for i in range(3)]
    assert [c.finish_reason for c in response.completions] == ["stop"] * 3
    assert all(c.tokens == () for c in response.completions)  # not asked for
    assert response.usage.prompt_tokens == len(pieces(PROMPT))
    assert response.usage.completion_tokens == sum(len(pieces(t)) for t in texts)
    assert server.answered == 1 and server.requests == 1


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_top_k_logprobs_are_parsed_and_tokens_rebuild_the_text(serve, api):
    server = serve()
    (response,) = ask(teacher_for(server, api=api), request(n=2, logprobs=3))
    for completion in response.completions:
        assert completion.tokens
        assert "".join(t.token for t in completion.tokens) == completion.text
        for i, token in enumerate(completion.tokens):
            assert token.logprob == pytest.approx(-0.05 * (i % 7))
            assert len(token.top) == 3
            assert token.top[0] == (token.token, token.logprob)
            assert [lp for _, lp in token.top] == sorted((lp for _, lp in token.top), reverse=True)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_stop_strings_cut_the_text_and_are_not_returned(serve, api):
    server = serve(responder=lambda q, p, s: "Five plus two is 7.\n\nQuestion: what next?")
    (response,) = ask(teacher_for(server, api=api), request(stop=("\n\nQuestion:",), max_tokens=50))
    assert response.completions[0].text == "Five plus two is 7."
    assert response.completions[0].finish_reason == "stop"


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_max_tokens_truncates_with_finish_reason_length(serve, api):
    server = serve()
    (response,) = ask(teacher_for(server, api=api), request(n=2, max_tokens=4))
    for i, completion in enumerate(response.completions):
        assert completion.finish_reason == "length"
        assert completion.text == "".join(pieces(labelled("What is 40 + 2?", PROMPT, i))[:4])
    assert response.usage.completion_tokens == 8


def test_seed_picks_the_sample_numbers(serve):
    server = serve()
    seeded, unseeded = ask(teacher_for(server), request(n=2, seed=10), request(n=2))
    assert [c.text for c in seeded.completions] == [labelled("What is 40 + 2?", PROMPT, s) for s in (10, 11)]
    assert [c.text for c in unseeded.completions] == [labelled("What is 40 + 2?", PROMPT, s) for s in (0, 1)]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_an_answer_with_fewer_choices_than_n_is_returned_as_is_for_the_builder_to_judge(serve, api):
    server = serve(ignores=["n"])  # as transformers serve: one choice whatever n says
    (response,) = ask(teacher_for(server, api=api), request(n=3, seed=5))
    assert [c.text for c in response.completions] == [labelled("What is 40 + 2?", PROMPT, 5)]
    assert server.requests == 1


# -- the capability probe -------------------------------------------------------------------------------


def probe(server: FakeOpenAIServer, api: str = "completions", **sampling) -> Capabilities:
    async def go() -> Capabilities:
        teacher = teacher_for(server, api=api)
        try:
            return await probe_capabilities(teacher, PROMPT, Sampling(**sampling), 7, "the teacher at URL",
                                            RetryPolicy(initial=0.0, maximum=0.0))
        finally:
            await teacher.close()

    return asyncio.run(go())


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize(("ignores", "expected"), [
    ((), {"n": True, "seed": True, "samples_vary": True}),
    (("n",), {"n": False, "seed": True, "samples_vary": True}),
    (("seed",), {"n": True, "seed": False, "samples_vary": True}),
])
def test_the_probe_measures_what_the_server_honours_in_three_requests(serve, api, ignores, expected):
    server = serve(ignores=ignores)
    capabilities = probe(server, api)
    assert {k: getattr(capabilities, k) for k in expected} == expected
    assert capabilities.logprobs is None and capabilities.probed == "this run"
    assert capabilities.probe_requests == server.requests == 3


def test_the_probe_finds_a_greedy_server_and_skips_seeds_at_temperature_zero(serve):
    greedy = serve(responder=lambda question, prompt, sample: "The same answer every time.")
    assert probe(greedy).samples_vary is False
    server = serve()
    capabilities = probe(server, temperature=0.0, logprobs=2)
    assert (capabilities.seed, capabilities.samples_vary, capabilities.logprobs) == (None, None, True)
    assert server.requests == 1


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_the_probe_stops_a_build_that_asks_logprobs_of_a_server_that_ignores_them(serve, api):
    server = serve(ignores=["logprobs"])
    with pytest.raises(ConfigError, match="the teacher at URL does not return token log-probs") as caught:
        probe(server, api, logprobs=3)
    assert "sampling.logprobs=0" in str(caught.value)
    assert server.requests == 1


def test_the_probe_refuses_a_choice_count_that_is_neither_n_nor_one_without_retrying(serve):
    class Generous(FakeOpenAIServer):
        def _samples(self, prompt, body):
            samples, prompt_tokens, completion_tokens = super()._samples(prompt, {**body, "n": 3})
            return samples, prompt_tokens, completion_tokens

    server = Generous(responder=labelled).start()
    try:
        with pytest.raises(ProtocolMismatch, match="3 choices to a request for n=2"):
            probe(server)
    finally:
        server.stop()
    assert server.requests == 1


def test_the_probe_retries_transient_failures_then_names_the_server_that_never_answered(serve):
    server = serve(faults=[Fault("503", 2)])
    assert probe(server).n is True and server.requests == 2 + 3
    down = serve(faults=[Fault("500", 100)])
    with pytest.raises(TeacherError, match="the teacher at URL did not answer the capability probe"):
        probe(down)


# -- failures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "cause"), [
    ("429", "rate_limit"),
    ("500", "server_error"),
    ("503", "server_error"),
    ("truncate", "malformed"),
    ("cut", "connection"),
    ("drop", "connection"),
    ("hang", "timeout"),
])
def test_transient_faults_map_to_their_cause_and_the_next_request_succeeds(serve, kind, cause):
    server = serve(faults=[Fault(kind)], hang_seconds=2.0)
    err, response = ask(teacher_for(server, timeout=0.5), request(), request())
    assert isinstance(err, TransientTeacherError), err
    assert err.cause == cause
    assert server.base_url in str(err)
    assert err.retry_after == (0.0 if kind == "429" else None)
    assert response.completions[0].text  # the pool recovers from a broken connection
    assert server.faults_injected == {kind: 1}


def test_a_refused_connection_is_a_connection_failure():
    teacher = OpenAITeacher("m", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout=2.0)
    (err,) = ask(teacher, request())
    assert isinstance(err, TransientTeacherError) and err.cause == "connection"


@pytest.mark.parametrize(("kind", "expected"), [
    ("401", ["HTTP 401", "Incorrect API key", f"${KEY_ENV}"]),
    ("404", ["HTTP 404", "'fake-teacher'", "does not exist", "served at this URL"]),
    ("400", ["HTTP 400", "told to reject"]),
])
def test_permanent_http_errors_are_teacher_errors_that_say_what_to_fix(serve, kind, expected):
    server = serve(faults=[Fault(kind)])
    (err,) = ask(teacher_for(server), request())
    assert isinstance(err, TeacherError) and not isinstance(err, TransientTeacherError)
    message = str(err)
    assert server.base_url in message and "fake-teacher" in message
    for text in expected:
        assert text in message


def test_retries_over_a_real_server_count_each_cause_then_succeed(serve):
    server = serve(faults=[Fault("429", 2), Fault("500", 1)])
    causes, delays = [], []

    async def no_sleep(seconds: float) -> None:
        delays.append(seconds)

    async def go():
        teacher = teacher_for(server)
        try:
            return await call_with_retries(lambda: teacher.sample(request(n=2)), RetryPolicy(initial=0.01),
                                           on_retry=causes.append, sleep=no_sleep, rng=random.Random(0))
        finally:
            await teacher.close()

    response = asyncio.run(go())
    assert len(response.completions) == 2
    assert causes == ["rate_limit", "rate_limit", "server_error"]
    assert len(delays) == 3
    assert server.requests == 4 and server.answered == 1
    assert server.faults_injected == {"429": 2, "500": 1}


def test_faults_filtered_by_question_hit_only_matching_requests(serve):
    server = serve(faults=[Fault("500", times=5, question="40 + 2")])
    other = "Question: What is 1 + 1?\nAnswer:"
    hit, missed = ask(teacher_for(server), request(), request(prompt=other))
    assert isinstance(hit, TransientTeacherError) and hit.cause == "server_error"
    assert missed.completions[0].text == labelled("What is 1 + 1?", other, 0)


# -- the key --------------------------------------------------------------------------------------------


def test_the_key_is_sent_but_never_described_represented_or_logged(serve, monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv(KEY_ENV, secret)
    server = serve(api_key=secret)
    teacher = teacher_for(server)
    assert secret not in repr(teacher) and secret not in str(teacher.describe())
    caplog.set_level(logging.DEBUG)
    for name in QUIET_LOGGERS:  # undo the backend's quieting: even full debug logging must not show the key
        caplog.set_level(logging.DEBUG, logger=name)
    (response,) = ask(teacher, request())
    assert response.completions[0].text
    assert server.authorization_headers == {f"Bearer {secret}"}
    assert caplog.records, "expected debug records from the HTTP stack"
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(record.args)


def test_construction_quiets_the_http_loggers(serve):
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    teacher_for(serve())
    assert {logging.getLogger(name).level for name in QUIET_LOGGERS} == {logging.WARNING}


def test_a_wrong_key_is_refused_with_a_hint_but_not_echoed(serve, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-42")
    server = serve(api_key="sk-right-key")
    (err,) = ask(teacher_for(server), request())
    assert isinstance(err, TeacherError) and "HTTP 401" in str(err) and f"${KEY_ENV}" in str(err)
    assert "sk-wrong-key-42" not in str(err)


def test_a_local_server_without_a_key_gets_a_placeholder(serve):
    server = serve()
    (response,) = ask(teacher_for(server), request())
    assert response.completions[0].text
    assert server.authorization_headers == {"Bearer EMPTY"}


def test_the_openai_api_without_a_key_is_refused_naming_the_variable():
    with pytest.raises(TeacherError, match=f"\\${KEY_ENV}"):
        OpenAITeacher("gpt-4o-mini", api_key_env=KEY_ENV)


def test_describe_names_the_real_api_when_no_url_is_given(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-secret-value")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere.invalid/v1")  # must not redirect requests
    teacher = OpenAITeacher("gpt-4o-mini", api="chat", api_key_env=KEY_ENV)
    assert teacher.describe() == {"backend": "openai", "model": "gpt-4o-mini",
                                  "base_url": "https://api.openai.com/v1", "api": "chat"}
    assert str(teacher._client.base_url).rstrip("/") == "https://api.openai.com/v1"
    asyncio.run(teacher.close())


def test_an_unknown_api_is_refused():
    with pytest.raises(TeacherError, match="completions, chat"):
        OpenAITeacher("m", base_url="http://127.0.0.1:1/v1", api="responses")


# -- helpers of the backend and the fake server ---------------------------------------------------------


def test_retry_after_reads_milliseconds_seconds_and_dates():
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_fake_server_questions_and_echo_answers():
    assert question_of(PROMPT) == "What is 40 + 2?"
    assert echo_responder("What is 40 + 2?", PROMPT, 0) == "Let me think. The answer is 2."
    assert echo_responder("How many?", "", 0) == "Let me think. The answer is 0."
    assert "".join(pieces(" a  b\n c \n")) == " a  b\n c \n"


def test_fake_server_rejects_unknown_fault_kinds():
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("418")
