"""One chat completion with tools against Groq (or any server speaking its API), with the
failures sorted into what the agent does about them.

Retries are ours, not the SDK's (the client is built with max_retries=0): a customer is
waiting, so a request is repeated at most WSM_LLM_MAX_RETRIES times, only for what a repeat
can fix (timeouts, network errors, 5xx, Groq's 400 `tool_use_failed` when the model produced
a broken tool call), and a 429 only when its retry-after is short. The SDK would wait up to 60 s
on a 429 before its retry; the menu answers right away instead.

Exceptions (what the fallback brain switches on; `reason` labels the metrics):

    LLMError
    ├── LLMUnavailable   retryable later: timeout, connection_error, rate_limited,
    │                    server_error (also opens the circuit breaker)
    └── LLMRejected      terminal for this configuration: model_not_found, not_found,
                         auth_error, bad_request (these open the circuit breaker too),
                         bad_response (a malformed answer: the menu answers this message),
                         request_too_large (413, or 400 `context_length_exceeded`: this
                         one request is too big; the menu answers this message and the
                         breaker is not touched, so one conversation cannot open it for all)

Every response's `x-ratelimit-remaining-requests` / `-tokens` headers are read (the SDK's raw
response, as `with_raw_response` asks for it) into `wsm_llm_ratelimit_remaining{kind}`.

WSM_LLM_TIMEOUT_SECONDS bounds each request as a whole (`whole_request`): httpx's timeouts
bound each wait for bytes, so a server trickling its answer a few bytes at a time would keep a
request alive far past them (found by an audit). Past it the request is a `timeout`, as httpx's
own would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar, cast

import groq
import httpx
from groq._constants import RAW_RESPONSE_HEADER
from groq.types.chat import ChatCompletion

from engine.agent.breaker import CircuitBreaker
from engine.agent.metrics import LLM_DURATION, LLM_REQUESTS, LLM_TOKENS, RATELIMIT_REMAINING
from shared.backoff import backoff_seconds
from shared.lean_http import LeanHTTPTransport
from shared.retry_after import retry_after_of

# A 429 is retried in place only when Groq asks for a wait this short or shorter.
RETRY_AFTER_MAX_SECONDS = 2.0
RETRY_PAUSE_SECONDS = 0.25
# Connections to Groq kept open between calls, per process. A worker slot makes one call at a
# time, so at most --concurrency are ever in flight; keeping that many (up to this) means a fleet
# above 64 slots does not close and reopen a connection, TLS handshake included, per call.
MAX_IDLE_CONNECTIONS = 512
# Where the SDK's `chat.completions.create` posts.
COMPLETIONS_PATH = "/openai/v1/chat/completions"

T = TypeVar("T")


class LLMError(Exception):
    reason = "model_error"

    def __init__(self, reason: str, detail: str = "", *, retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.retry_after = retry_after


class LLMUnavailable(LLMError):
    """The model cannot answer now (timeout, network, 429, 5xx)."""


class LLMRejected(LLMError):
    """The request is refused as configured (unknown model, bad key, a malformed answer)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it (maybe invalid)


@dataclass(frozen=True, slots=True)
class ModelTurn:
    content: str
    tool_calls: Sequence[ToolCall] = field(default_factory=tuple)
    finish_reason: str = ""
    # Tokens this call cost (the response's `usage.total_tokens`): the per-conversation
    # daily budget counts them.
    tokens: int = 0

    def as_message(self) -> dict[str, Any]:
        """The assistant message to send back with the tool results."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


def _proxied(url: str) -> bool:
    """Whether the environment sends requests to `url` through a proxy (HTTPS_PROXY,
    ALL_PROXY, minus NO_PROXY): the lean transport speaks no proxy protocol, so such a
    deployment keeps the SDK's own httpx client, which honours them."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def make_client(
    *, api_key: str, base_url: str, timeout_seconds: float, http_client: Any = None
) -> groq.AsyncGroq:
    """The process's one AsyncGroq client (one connection pool), on the lean HTTP/1.1
    transport (shared/lean_http.py, `https://` with verified TLS) unless the caller brings its
    own client: httpx's own pool walks every pooled connection on each request, so its cost
    per call grew with the calls in flight (a fifth of a worker's CPU at 64; docs/benchmarks.md,
    AI agent). Closing the AsyncGroq client closes the transport."""
    timeout = httpx.Timeout(timeout_seconds, connect=min(5.0, timeout_seconds))
    if http_client is None and not _proxied(base_url):
        # As the SDK's own default client, redirects followed.
        http_client = httpx.AsyncClient(
            transport=LeanHTTPTransport(max_idle_per_host=MAX_IDLE_CONNECTIONS),
            timeout=timeout,
            follow_redirects=True,
        )
    return groq.AsyncGroq(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=0,
        http_client=http_client,
    )


def request_seconds(client: groq.AsyncGroq) -> float | None:
    """How long one request to `client` may take as a whole: the client's timeout
    (make_client's `timeout_seconds`, WSM_LLM_TIMEOUT_SECONDS, as httpx's read timeout); None
    when it has none. The one source of it: a copy kept beside the client could differ."""
    timeout = client.timeout
    if isinstance(timeout, httpx.Timeout):
        return timeout.read
    return float(timeout) if isinstance(timeout, int | float) else None


@contextlib.asynccontextmanager
async def whole_request(seconds: float | None) -> AsyncIterator[None]:
    """The block (one request: sent, answered, its body read) ends within `seconds` or fails
    as a `timeout` (LLMUnavailable), however the server spaces its bytes. A deadline around it
    (the agent's turn, the customer's file) still cuts it first, as a cancellation."""
    bound = asyncio.timeout(seconds)
    try:
        async with bound:
            yield
    except TimeoutError:
        if not bound.expired():
            raise
        raise LLMUnavailable("timeout", f"no whole answer within {seconds:g} s") from None


def _record_ratelimits(headers: Mapping[str, str] | None) -> None:
    if not headers:
        return
    for kind in ("requests", "tokens"):
        value = headers.get(f"x-ratelimit-remaining-{kind}")
        if value is None:
            continue
        try:
            RATELIMIT_REMAINING.labels(kind).set(float(value))
        except ValueError:
            continue


def _error_code(exc: groq.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("code") or "")
    return ""


def classify_status(exc: groq.APIStatusError) -> LLMError:
    """An HTTP error answer from Groq as the LLMError the callers switch on."""
    status = exc.status_code
    code = _error_code(exc)
    detail = str(exc)[:300]
    if status == 429:
        return LLMUnavailable(
            "rate_limited", detail, retry_after=retry_after_of(exc.response.headers)
        )
    if status == 413 or (status == 400 and code == "context_length_exceeded"):
        # Groq answers 413 `rate_limit_exceeded` "Request too large ... (TPM)" when one
        # request alone is over the tier's tokens per minute: a property of this request
        # (this conversation), not of the model or the key.
        return LLMRejected("request_too_large", detail)
    if status >= 500 or status == 408:
        return LLMUnavailable("server_error", detail)
    if status == 404:
        # Groq answers an unknown or retired model with 404 code `model_not_found`; any
        # other 404 is a wrong GROQ_BASE_URL.
        reason = "model_not_found" if code in ("model_not_found", "") else "not_found"
        return LLMRejected(reason, detail)
    if status in (401, 403):
        return LLMRejected("auth_error", detail)
    if status == 400 and code == "tool_use_failed":
        return LLMRejected("tool_use_failed", detail)
    return LLMRejected("bad_request", detail)


def llm_error(exc: groq.APIError) -> LLMError:
    """Any failure of the `groq` client (chat or transcription) as an LLMError; its `reason`
    is also the `result` label of the request metrics."""
    if isinstance(exc, groq.APITimeoutError):  # before APIConnectionError: a subclass of it
        return LLMUnavailable("timeout")
    if isinstance(exc, groq.APIConnectionError):
        return LLMUnavailable("connection_error", str(exc))
    if isinstance(exc, groq.APIStatusError):
        return classify_status(exc)
    # A 2xx whose body is not what was asked for.
    return LLMRejected("bad_response", str(exc))


# Rejections that say the configuration is wrong (every request would fail the same way): the
# breaker counts them. Anything else rejected is about one request (its answer, its size).
CONFIG_REJECTIONS = frozenset({"model_not_found", "not_found", "auth_error", "bad_request"})


def count_failure(
    breaker: CircuitBreaker, error: LLMError, *, request_faults: frozenset[str] = frozenset()
) -> None:
    """Tell the breaker about a failed request (chat or transcription): unavailability and a
    wrong configuration count (a 429 opens it for its retry-after at once); a fault of this
    one request (`request_faults`, a malformed answer, a request too large) says nothing
    about the model."""
    if error.reason in request_faults:
        breaker.release()
    elif isinstance(error, LLMUnavailable):
        hold = error.retry_after if error.reason == "rate_limited" else None
        breaker.failure(hold_seconds=hold)
    elif isinstance(error, LLMRejected) and error.reason in CONFIG_REJECTIONS:
        breaker.failure()
    else:
        breaker.release()


def retryable(exc: LLMError) -> bool:
    """What a repeat can fix: timeouts, network errors, 5xx, a broken tool call, and a 429
    whose retry-after is short."""
    return exc.reason in {
        "timeout", "connection_error", "server_error", "tool_use_failed",
    } or (
        exc.reason == "rate_limited"
        and exc.retry_after is not None
        and exc.retry_after <= RETRY_AFTER_MAX_SECONDS
    )  # fmt: skip


async def with_retries(call: Callable[[], Awaitable[T]], max_retries: int) -> T:
    """`call()`, repeated at most `max_retries` times for what a repeat can fix (one policy
    for every request to Groq: chat completions and transcriptions)."""
    attempt = 0
    while True:
        try:
            return await call()
        except LLMError as exc:
            if not retryable(exc) or attempt >= max_retries:
                if exc.reason == "tool_use_failed":
                    raise LLMRejected("bad_response", str(exc)) from exc
                raise
            attempt += 1
            # The one backoff formula, short (a customer is waiting); a 429's retry-after
            # (at most RETRY_AFTER_MAX_SECONDS here) is a floor.
            await asyncio.sleep(
                backoff_seconds(
                    attempt,
                    RETRY_PAUSE_SECONDS,
                    RETRY_AFTER_MAX_SECONDS,
                    retry_after=exc.retry_after,
                )
            )


@dataclass(eq=False)
class ChatModel:
    client: groq.AsyncGroq
    _: KW_ONLY
    model: str
    max_retries: int
    max_completion_tokens: int

    async def complete(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn:
        return await with_retries(lambda: self._once(messages, tools), self.max_retries)

    async def _once(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
    ) -> ModelTurn:
        started = time.monotonic()
        result = "ok"
        try:
            # What `chat.completions.with_raw_response.create` sends, without its `transform`
            # of the messages and tools against their TypedDicts (1-3 ms of CPU per call, a
            # fifth of a worker's CPU per conversation: docs/benchmarks.md, AI agent): they
            # are plain JSON already, and the transform changes nothing in them. The SDK's
            # client still builds the request (headers, timeout, JSON encoding), maps failures
            # to its errors and parses the answer. Fields in create()'s order, so the body is
            # the same bytes (tests/engine/agent/test_llm_request_body.py).
            body = {
                "messages": list(messages),
                "model": self.model,
                "max_completion_tokens": self.max_completion_tokens,
                "temperature": 0.2,
                "tool_choice": "auto",
                "tools": list(tools),
            }
            async with whole_request(request_seconds(self.client)):
                raw = cast(
                    "groq.AsyncAPIResponse[ChatCompletion]",
                    await self.client.post(
                        COMPLETIONS_PATH,
                        cast_to=ChatCompletion,
                        body=body,
                        options={"headers": {RAW_RESPONSE_HEADER: "raw"}},
                    ),
                )
                _record_ratelimits(raw.headers)
                completion = await raw.parse()
            return self._turn(completion)
        except LLMError as exc:
            result = exc.reason
            raise
        except groq.APIError as exc:
            if isinstance(exc, groq.APIStatusError):
                _record_ratelimits(exc.response.headers)
            error = llm_error(exc)
            result = error.reason
            raise error from exc
        finally:
            LLM_REQUESTS.labels(result).inc()
            LLM_DURATION.observe(time.monotonic() - started)

    @staticmethod
    def _turn(completion: Any) -> ModelTurn:
        usage = getattr(completion, "usage", None)
        tokens = 0
        if usage is not None:
            prompt = usage.prompt_tokens or 0
            completed = usage.completion_tokens or 0
            LLM_TOKENS.labels("prompt").inc(prompt)
            LLM_TOKENS.labels("completion").inc(completed)
            tokens = usage.total_tokens or (prompt + completed)
        choices = getattr(completion, "choices", None)
        if not choices:
            raise LLMRejected("bad_response", "no choices")
        message = choices[0].message
        calls = [
            ToolCall(
                id=call.id or f"call_{n}",
                name=call.function.name,
                arguments=call.function.arguments or "",
            )
            for n, call in enumerate(message.tool_calls or ())
        ]
        return ModelTurn(
            content=(message.content or "").strip(),
            tool_calls=tuple(calls),
            finish_reason=str(choices[0].finish_reason or ""),
            tokens=int(tokens),
        )
