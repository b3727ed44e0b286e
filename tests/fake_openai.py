"""An OpenAI-compatible HTTP server on loopback, for the test suite and the teacher benchmark.

Standard library only, so the benchmark can run it in its own process (`python tests/fake_openai.py`).
Answers are deterministic: a responder maps (question, prompt, sample number) to text, and a request's
choice i is sample `seed + i`, so a seeded client sees the same texts on every call. Faults (429, 5xx,
hangs, truncated bodies, dropped connections, 4xx) are injected on the first matching requests, so
retry and error-mapping code can be tested against real sockets instead of mocks. `ignores` makes it
accept but not honour parts of the request, as real servers do (`transformers serve` ignores `n` and
`logprobs`): a build's capability probe and adaptation are tested fast here, and against the real server
in test_teacher_real_server.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Error statuses answer with an OpenAI-style JSON error (429 adds `Retry-After: 0`). The others break the
# connection: hang (no answer for hang_seconds, then close), drop (close without a byte), truncate (a 200 with
# a consistent Content-Length but half of the JSON), cut (a 200 whose headers promise the whole JSON but
# only half arrives before the close).
FAULT_STATUSES = ("429", "500", "503", "401", "404", "400")
FAULT_KINDS = (*FAULT_STATUSES, "hang", "drop", "truncate", "cut")
IGNORABLE = ("n", "logprobs", "seed", "echo")  # n: one choice; logprobs: none returned; seed: every answer
# differs; echo: the prompt is neither echoed nor scored (llama.cpp's server)
_PIECE = re.compile(r"\s*\S+|\s+")  # tokens: each carries its leading whitespace, so they join to the text
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

Responder = Callable[[str, str, int], str]
# Scores a whole text for `echo`: (text, k) -> the legacy completions `logprobs` object of every token of it
# (tokens, token_logprobs and top_logprobs with None first, text_offset). Tests pass one backed by a real model.
EchoScorer = Callable[[str, int], dict]


def pieces(text: str) -> list[str]:
    """The fake tokenizer: whitespace-led words (plus trailing whitespace), concatenating to `text`."""
    return _PIECE.findall(text)


def question_of(prompt: str) -> str:
    """The text after the last 'Question:' up to the next newline; the whole prompt when there is none."""
    _, marker, tail = prompt.rpartition("Question:")
    if not marker:
        return prompt.strip()
    return tail.split("\n", 1)[0].strip()


def echo_responder(question: str, prompt: str, sample: int) -> str:
    """A teacher that 'solves' a question by repeating its last number, so answers are checkable."""
    numbers = _NUMBER.findall(question)
    return f"Let me think. The answer is {numbers[-1] if numbers else 0}."


@dataclass
class Fault:
    """Instead of answering, hit the first `times` requests (whose question contains `question`, if set) after
    letting the first `after` of them through."""

    kind: str
    times: int = 1
    question: str | None = None
    after: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")


_ERRORS = {
    "400": ("Invalid request: the fake server was told to reject this one.", "invalid_request_error", None),
    "401": ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    "404": ("The model `{model}` does not exist or you do not have access to it.", "invalid_request_error",
            "model_not_found"),
    "500": ("The server had an error while processing your request.", "server_error", None),
    "503": ("The server is overloaded.", "server_error", None),
    "429": ("Rate limit reached. Please try again later.", "requests", "rate_limit_exceeded"),
}


def _logprob(position: int) -> float:
    return round(-0.05 * (position % 7), 6) + 0.0  # + 0.0: no "-0.0" in the JSON


def _alternatives(token: str, position: int, k: int) -> list[tuple[str, float]]:
    """The chosen token first, then k-1 made-up alternatives with strictly lower log-probs."""
    chosen = _logprob(position)
    return [(token, chosen)] + [(f"{token}#{j}", chosen - 0.5 - j) for j in range(1, k)]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops connects when a benchmark opens many at once


class FakeOpenAIServer:
    """A threaded loopback server speaking enough of the OpenAI API for the teacher backends."""

    def __init__(self, responder: Responder = echo_responder, delay: float = 0.0, faults: Sequence[Fault] = (),
                 api_key: str | None = None, hang_seconds: float = 30.0, model: str = "fake-teacher",
                 port: int = 0, host: str = "127.0.0.1", ignores: Sequence[str] = (),
                 echo_scorer: EchoScorer | None = None) -> None:
        unknown = set(ignores) - set(IGNORABLE)
        if unknown:
            raise ValueError(f"cannot ignore {sorted(unknown)}; known: {', '.join(IGNORABLE)}")
        self.ignores = frozenset(ignores)
        self.responder = responder
        self.delay = delay
        self.faults = list(faults)
        self.api_key = api_key
        self.hang_seconds = hang_seconds
        self.model = model
        self.echo_scorer = echo_scorer
        self._remaining = [f.times for f in self.faults]
        self._passed = [0 for _ in self.faults]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests = 0
        self._answered = 0
        self._unseeded = 10_000  # sample numbers for a server that ignores seeds: never repeat
        self._faults_injected: dict[str, int] = {}
        self._authorization_headers: set[str] = set()
        self._connections: set[socket.socket] = set()
        self._httpd = _Server((host, port), _handler_class(self))
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-openai",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging handlers and close kept-alive connections so no thread lingers."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counters ----------------------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def answered(self) -> int:
        with self._lock:
            return self._answered

    @property
    def faults_injected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._faults_injected)

    @property
    def authorization_headers(self) -> set[str]:
        with self._lock:
            return set(self._authorization_headers)

    # -- the handler's helpers ---------------------------------------------------------------------------

    def _count_request(self, authorization: str | None) -> None:
        with self._lock:
            self._requests += 1
            if authorization is not None:
                self._authorization_headers.add(authorization)

    def _take_fault(self, question: str) -> str | None:
        """The kind of the first fault with times left whose filter matches, consuming one use of it."""
        with self._lock:
            for i, fault in enumerate(self.faults):
                if self._remaining[i] > 0 and (fault.question is None or fault.question in question):
                    if self._passed[i] < fault.after:
                        self._passed[i] += 1
                        continue
                    self._remaining[i] -= 1
                    self._faults_injected[fault.kind] = self._faults_injected.get(fault.kind, 0) + 1
                    return fault.kind
        return None

    def _next_unseeded(self, n: int) -> int:
        with self._lock:
            self._unseeded += n
            return self._unseeded - n

    def _count_answer(self) -> None:
        with self._lock:
            self._answered += 1

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _samples(self, prompt: str, body: dict[str, Any]) -> tuple[list[tuple[str, str]], int, int]:
        """(text, finish_reason) per choice, prompt tokens, completion tokens; stop and max_tokens applied."""
        question = question_of(prompt)
        n = 1 if "n" in self.ignores else int(body.get("n") or 1)
        seed = self._next_unseeded(n) if "seed" in self.ignores else int(body.get("seed") or 0)
        stop = body.get("stop") or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))  # 0 is a limit (echo only)
        out = []
        for i in range(n):
            text, reason = self.responder(question, prompt, seed + i), "stop"
            cuts = [text.find(s) for s in stops if s and s in text]
            if cuts:
                text = text[: min(cuts)]
            toks = pieces(text)
            if max_tokens is not None and len(toks) > int(max_tokens):
                text, reason = "".join(toks[: int(max_tokens)]), "length"
            out.append((text, reason))
        return out, len(pieces(prompt)), sum(len(pieces(t)) for t, _ in out)


def _completion_logprobs(text: str, k: int, offset: int) -> dict[str, Any]:
    toks = pieces(text)
    offsets = [offset + sum(len(t) for t in toks[:i]) for i in range(len(toks))]
    return {
        "tokens": toks,
        "token_logprobs": [_logprob(i) for i in range(len(toks))],
        "top_logprobs": [dict(_alternatives(t, i, k)) for i, t in enumerate(toks)],
        "text_offset": offsets,
    }


def _echo_logprobs(text: str, k: int) -> dict[str, Any]:
    """An echoed text's logprobs as servers send them: nothing predicts the first token, so it has None."""
    out = _completion_logprobs(text, k, 0)
    if out["tokens"]:
        out["token_logprobs"][0] = None
        out["top_logprobs"][0] = None
    return out


def _chat_logprobs(text: str, k: int) -> dict[str, Any]:
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = []
    for i, tok in enumerate(pieces(text)):
        item = entry(tok, _logprob(i))
        item["top_logprobs"] = [entry(t, lp) for t, lp in _alternatives(tok, i, k)] if k > 0 else []
        content.append(item)
    return {"content": content}


def _user_prompt(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content") or ""
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def _handler_class(fake: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised
        disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the body ~40 ms

        def setup(self) -> None:
            super().setup()
            fake._track(self.connection, True)

        def finish(self) -> None:
            fake._track(self.connection, False)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: the test output should not fill with access logs."""

        def _send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _send_error(self, kind: str, model: str) -> None:
            message, type_, code = _ERRORS[kind]
            headers = {"Retry-After": "0"} if kind == "429" else None
            body = {"error": {"message": message.format(model=model), "type": type_, "code": code}}
            self._send_json(int(kind), body, headers)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send_json(200, {"object": "list", "data": [
                    {"id": fake.model, "object": "model", "created": 0, "owned_by": "fake-openai"}]})
            else:
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            authorization = self.headers.get("Authorization")
            fake._count_request(authorization)
            path = self.path.rstrip("/")
            if path not in ("/v1/completions", "/v1/chat/completions"):
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
                return
            chat = path.endswith("/chat/completions")
            prompt = _user_prompt(body.get("messages") or []) if chat else str(body.get("prompt") or "")
            model = str(body.get("model") or "")
            if fake.delay > 0:
                time.sleep(fake.delay)
            if fake.api_key is not None and authorization != f"Bearer {fake.api_key}":
                self._send_error("401", model)
                return
            kind = fake._take_fault(question_of(prompt))
            if kind is not None:
                self._fault(kind, chat, prompt, model, body)
                return
            self._send_json(200, self._answer(chat, prompt, model, body))
            fake._count_answer()

        def _fault(self, kind: str, chat: bool, prompt: str, model: str, body: dict[str, Any]) -> None:
            if kind in FAULT_STATUSES:  # an error answer on a kept-alive connection, as real servers send them
                self._send_error(kind, model)
                return
            self.close_connection = True
            if kind == "hang":
                fake._stopping.wait(fake.hang_seconds)
            elif kind in ("truncate", "cut"):
                # truncate: a complete HTTP message (Content-Length fits what is sent) whose JSON is cut in half;
                # cut: the headers promise the whole body but only half is sent before the connection closes.
                data = json.dumps(self._answer(chat, prompt, model, body)).encode("utf-8")
                half = data[: len(data) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(half) if kind == "truncate" else len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(half)

        def _answer(self, chat: bool, prompt: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
            samples, prompt_tokens, completion_tokens = fake._samples(prompt, body)
            if "logprobs" in fake.ignores:
                body = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
            choices = []
            for i, (text, reason) in enumerate(samples):
                if chat:
                    k = int(body.get("top_logprobs") or 0)
                    logprobs = _chat_logprobs(text, k) if body.get("logprobs") else None
                    choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                    "finish_reason": reason, "logprobs": logprobs})
                elif body.get("echo") and "echo" not in fake.ignores:
                    k = body.get("logprobs")
                    full = prompt + text
                    logprobs = None if k is None else (fake.echo_scorer(full, int(k)) if fake.echo_scorer
                                                       else _echo_logprobs(full, int(k)))
                    choices.append({"index": i, "text": full, "finish_reason": reason, "logprobs": logprobs})
                else:
                    k = body.get("logprobs")
                    logprobs = _completion_logprobs(text, int(k), len(prompt)) if k is not None else None
                    choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": logprobs})
            return {
                "id": f"fake-{fake.requests}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }

    return Handler


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI API (echo_responder) until killed.")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    args = parser.parse_args(argv)
    with FakeOpenAIServer(echo_responder, delay=args.delay, port=args.port) as server:
        print(server.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
