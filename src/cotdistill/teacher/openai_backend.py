"""A teacher behind any OpenAI-compatible HTTP server (vLLM, TGI, the OpenAI API), via the official client.

The client's own retries are off (`max_retries=0`): the builder retries and counts why, so every failure
is mapped here to a :class:`TransientTeacherError` with a cause (worth retrying) or a
:class:`TeacherError` that says what to fix. The API key is read from the environment only and kept out
of messages, reprs, `describe()` and the HTTP libraries' logs.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import httpx2
import openai

from cotdistill.teacher.types import (
    Completion,
    SampleRequest,
    SampleResponse,
    TeacherError,
    TokenLogprob,
    TransientTeacherError,
    Usage,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"
APIS = ("completions", "chat")
PLACEHOLDER_KEY = "EMPTY"  # local servers accept any key, but the client insists on one
# The client logs at DEBUG; the transport logs connection details. Quiet them so a verbose root logger
# (or OPENAI_LOG=debug) cannot put request details, and perhaps headers, into a run's log files.
QUIET_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2")
_SERVER_ERROR_STATUSES = (408, 409)  # request timeout, lock conflict: the server's trouble, worth retrying


def _quiet_http_loggers() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def retry_after_seconds(headers: Any) -> float | None:
    """The delay a 429 asked for: `retry-after-ms`, else `Retry-After` as seconds or an HTTP date."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            seconds = when.timestamp() - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


class EchoedToken(NamedTuple):
    """One token of a text the server scored: where it starts in the text, and its log-probs."""

    offset: int
    token: TokenLogprob


class OpenAITeacher:
    """Samples `n` completions per request from an OpenAI-compatible server ('completions' or 'chat' API)."""

    def __init__(self, model: str, base_url: str = "", api: str = "completions", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, concurrency: int = 16) -> None:
        if api not in APIS:
            raise TeacherError(f"teacher.api must be one of {', '.join(APIS)}, got {api!r}")
        if not model:
            raise TeacherError("teacher.model is empty: name the model the server serves")
        if concurrency < 1:
            raise TeacherError(f"teacher.concurrency must be at least 1, got {concurrency}")
        _quiet_http_loggers()
        self.model = model
        # An explicit URL also keeps $OPENAI_BASE_URL, which the client would read, from redirecting requests.
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self.api = api
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.concurrency = concurrency
        key = os.environ.get(api_key_env, "")
        if not key and not base_url:
            raise TeacherError(f"the OpenAI API needs a key: set ${api_key_env} (or set teacher.base_url to a "
                               f"local OpenAI-compatible server)")
        self._key_is_placeholder = not key
        self._secrets = (key,) if key else ()
        # The pool must hold `concurrency` connections, or requests queue for a connection inside the client.
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = openai.AsyncOpenAI(
            api_key=key or PLACEHOLDER_KEY,
            base_url=self.base_url,
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout),
        )

    def __repr__(self) -> str:
        return f"OpenAITeacher(model={self.model!r}, base_url={self.base_url!r}, api={self.api!r})"

    def describe(self) -> dict[str, object]:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url, "api": self.api}

    async def close(self) -> None:
        await self._client.close()

    async def sample(self, request: SampleRequest) -> SampleResponse:
        if self.api == "chat":
            raw = await self._request(lambda: self._client.chat.completions.create(**self._chat_args(request)))
        else:
            raw = await self._request(lambda: self._client.completions.create(**self._completion_args(request)))
        return self._parse(raw)

    async def echo_logprobs(self, text: str, top_k: int) -> tuple[EchoedToken, ...]:
        """The server's log-probabilities of the tokens of ``text`` itself, each with its top ``top_k``.

        The request (vLLM's and the OpenAI legacy API's behaviour; servers that do not implement it, such as
        llama.cpp's, are refused with an error rather than trusted): ``POST /completions`` with
        ``{"prompt": text, "echo": true, "max_tokens": 0, "logprobs": top_k, "temperature": 0}``. The answer's
        ``logprobs`` hold every token of ``text`` (the first with a null log-prob: nothing predicts it) and
        ``text_offset``, each token's first character in ``text``. The first token is left out.
        """
        args = {"model": self.model, "prompt": text, "echo": True, "max_tokens": 0, "logprobs": top_k,
                "temperature": 0.0}
        raw = await self._request(lambda: self._client.completions.create(**args))
        choices = getattr(raw, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise self._malformed(f"no choices in a {type(raw).__name__}")
        logprobs = getattr(choices[0], "logprobs", None)
        tokens = list(getattr(logprobs, "tokens", None) or [])
        values = list(getattr(logprobs, "token_logprobs", None) or [])
        tops = list(getattr(logprobs, "top_logprobs", None) or [])
        offsets = getattr(logprobs, "text_offset", None)
        if len(values) != len(tokens):
            raise self._malformed(f"{len(tokens)} echoed tokens but {len(values)} log-probs")
        if not isinstance(offsets, list) or len(offsets) != len(tokens):
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]  # the tokens' own lengths
        covered = (offsets[-1] + len(tokens[-1])) if tokens else 0
        if not tokens or offsets[0] != 0 or covered < len(text):
            raise TeacherError(
                f"{self._where()} returned log-probs for {len(tokens)} tokens covering {covered} of the "
                f"{len(text)} characters it was asked to echo: the server does not score given text "
                f"(completions with echo=true, max_tokens=0, logprobs; vLLM does, llama.cpp's server does not)")
        out = []
        for i in range(1, len(tokens)):
            top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            out.append(EchoedToken(int(offsets[i]), self._token(tokens[i], values[i], top.items())))
        return tuple(out)

    async def _request(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``await call()`` with every failure mapped to a TransientTeacherError (retry) or a TeacherError."""
        try:
            return await call()
        except openai.APIStatusError as err:
            raise self._status_error(err) from None
        except openai.APITimeoutError:
            raise TransientTeacherError("timeout", f"{self._where()}: no response within {self.timeout:g} s") from None
        except openai.APIConnectionError as err:
            raise TransientTeacherError("connection", f"{self._where()}: {self._cause_text(err)}") from None
        except openai.APIResponseValidationError as err:
            raise TransientTeacherError("malformed", f"{self._where()}: {self._redact(str(err))}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a 200 whose JSON body is cut or garbled
            raise TransientTeacherError("malformed", f"{self._where()}: response body is not JSON: {err}") from None
        except openai.OpenAIError as err:
            raise TeacherError(f"{self._where()}: {type(err).__name__}: {self._redact(str(err))}") from None

    # -- requests ----------------------------------------------------------------------------------------

    def _common_args(self, request: SampleRequest) -> dict[str, Any]:
        s = request.sampling
        args: dict[str, Any] = {"model": self.model, "n": request.n, "temperature": s.temperature,
                                "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.stop:
            args["stop"] = list(s.stop)
        if request.seed is not None:
            args["seed"] = request.seed
        return args

    def _completion_args(self, request: SampleRequest) -> dict[str, Any]:
        args = {**self._common_args(request), "prompt": request.prompt}
        if request.sampling.logprobs > 0:
            args["logprobs"] = request.sampling.logprobs
        return args

    def _chat_args(self, request: SampleRequest) -> dict[str, Any]:
        args = {**self._common_args(request), "messages": [{"role": "user", "content": request.prompt}]}
        if request.sampling.logprobs > 0:
            args["logprobs"] = True
            args["top_logprobs"] = request.sampling.logprobs
        return args

    # -- errors ------------------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"teacher {self.model!r} at {self.base_url}"

    def _redact(self, text: str) -> str:
        """A server may echo the key back in an error message; never pass it on."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    @staticmethod
    def _cause_text(err: Exception) -> str:
        cause = err.__cause__ or err.__context__
        return f"{type(cause).__name__}: {cause}" if cause is not None else str(err)

    def _status_error(self, err: openai.APIStatusError) -> Exception:
        status = err.status_code
        message = self._redact(self._server_message(err))
        if status == 429:
            return TransientTeacherError("rate_limit", f"{self._where()}: HTTP 429: {message}",
                                         retry_after=retry_after_seconds(err.response.headers))
        if status >= 500 or status in _SERVER_ERROR_STATUSES:
            return TransientTeacherError("server_error", f"{self._where()}: HTTP {status}: {message}")
        hint = ""
        if status in (401, 403):
            hint = (f" (${self.api_key_env} is not set; set it to the server's key)" if self._key_is_placeholder
                    else f" (check the key in ${self.api_key_env})")
        elif status == 404:
            hint = f" (is the model {self.model!r} served at this URL? GET {self.base_url}/models lists them)"
        return TeacherError(f"{self._where()} refused the request: HTTP {status}: {message}{hint}")

    @staticmethod
    def _server_message(err: openai.APIStatusError) -> str:
        body = err.body
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            text = body["message"]
        elif body is not None:
            text = str(body)
        else:
            text = err.message
        return text if len(text) <= 500 else text[:500] + "..."

    # -- responses ---------------------------------------------------------------------------------------

    def _malformed(self, what: str) -> TransientTeacherError:
        return TransientTeacherError("malformed", f"{self._where()}: malformed response: {what}")

    def _parse(self, raw: Any) -> SampleResponse:
        choices = getattr(raw, "choices", None)
        if not isinstance(choices, list):
            raise self._malformed(f"no choices in a {type(raw).__name__}")
        # A valid answer with another number of choices than asked is not malformed but a server that ignores
        # `n` (transformers serve): the builder's probe and checks judge it; retrying would get the same answer.
        ordered = sorted(enumerate(choices), key=lambda ic: _index(ic[1], ic[0]))
        completions = tuple(self._completion(choice) for _, choice in ordered)
        usage = getattr(raw, "usage", None)
        return SampleResponse(completions, Usage(
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        ))

    def _completion(self, choice: Any) -> Completion:
        finish = str(getattr(choice, "finish_reason", "") or "")
        if self.api == "chat":
            message = getattr(choice, "message", None)
            if message is None:
                raise self._malformed("a choice without a message")
            text = getattr(message, "content", None) or ""
            tokens = self._chat_tokens(getattr(choice, "logprobs", None))
        else:
            text = getattr(choice, "text", None)
            tokens = self._completion_tokens(getattr(choice, "logprobs", None))
        if not isinstance(text, str):
            raise self._malformed("a choice without text")
        return Completion(text=text, finish_reason=finish, tokens=tokens)

    def _completion_tokens(self, logprobs: Any) -> tuple[TokenLogprob, ...]:
        tokens = getattr(logprobs, "tokens", None) or []
        values = getattr(logprobs, "token_logprobs", None) or []
        tops = getattr(logprobs, "top_logprobs", None) or []
        if len(values) != len(tokens):
            raise self._malformed(f"{len(tokens)} tokens but {len(values)} log-probs")
        out = []
        for i, (token, value) in enumerate(zip(tokens, values, strict=True)):
            top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            out.append(self._token(token, value, top.items()))
        return tuple(out)

    def _chat_tokens(self, logprobs: Any) -> tuple[TokenLogprob, ...]:
        content = getattr(logprobs, "content", None) or []
        return tuple(
            self._token(getattr(item, "token", None), getattr(item, "logprob", None),
                        [(getattr(t, "token", None), getattr(t, "logprob", None))
                         for t in getattr(item, "top_logprobs", None) or []])
            for item in content
        )

    def _token(self, token: Any, logprob: Any, top: Any) -> TokenLogprob:
        if not isinstance(token, str) or not isinstance(logprob, (int, float)):
            raise self._malformed(f"a token log-prob entry {token!r}: {logprob!r}")
        alternatives = [(t, float(lp)) for t, lp in top if isinstance(t, str) and isinstance(lp, (int, float))]
        alternatives.sort(key=lambda tl: -tl[1])  # stable: ties keep the server's order
        return TokenLogprob(token=token, logprob=float(logprob), top=tuple(alternatives))


def _index(choice: Any, position: int) -> int:
    index = getattr(choice, "index", None)
    return index if isinstance(index, int) else position
