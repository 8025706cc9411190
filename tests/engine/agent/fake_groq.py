"""Groq stood in for with respx, answering exactly as Groq's chat completions API does:
`choices[0].message.tool_calls[i] = {id, type: "function", function: {name, arguments}}` with
the arguments as a JSON string, `usage`, `x_groq`, the `x-ratelimit-*` headers on every
answer, and errors as `{"error": {"message", "type", "code"}}` with Groq's status codes (429
with `retry-after`, 404 `model_not_found`, 400 `tool_use_failed`, 500, 503). `trickled` sends
an answer a few bytes at a time, as a server holding a request open without ever letting a
read time out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import respx

GROQ = "https://groq.test"
COMPLETIONS = f"{GROQ}/openai/v1/chat/completions"
MODEL = "openai/gpt-oss-20b"

Answer = dict[str, Any] | httpx.Response | Exception
Policy = Callable[[dict[str, Any]], Answer | Awaitable[Answer]]


def ratelimit_headers(requests: int = 999, tokens: int = 199_000) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "1000",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-requests": str(requests),
        "x-ratelimit-remaining-tokens": str(tokens),
        "x-ratelimit-reset-requests": "1m26.4s",
        "x-ratelimit-reset-tokens": "300ms",
        "x-request-id": "req_" + uuid.uuid4().hex[:26],
    }


def tool_call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    return {
        "id": "fc_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {
            "name": name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def completion(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    *,
    prompt_tokens: int = 812,
    completion_tokens: int = 57,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        # gpt-oss on Groq returns its reasoning beside the answer; the agent ignores it.
        "reasoning": "The customer wants an appointment; use the tools.",
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "queue_time": 0.021,
            "prompt_tokens": prompt_tokens,
            "prompt_time": 0.034,
            "completion_tokens": completion_tokens,
            "completion_time": 0.061,
            "total_tokens": prompt_tokens + completion_tokens,
            "total_time": 0.095,
        },
        "usage_breakdown": None,
        "system_fingerprint": "fp_" + uuid.uuid4().hex[:10],
        "x_groq": {"id": "req_" + uuid.uuid4().hex[:26]},
        "service_tier": "on_demand",
    }


def error(
    status: int, message: str, type_: str, code: str | None = None, **headers: str
) -> httpx.Response:
    body: dict[str, Any] = {"message": message, "type": type_}
    if code is not None:
        body["code"] = code
    return httpx.Response(status, json={"error": body}, headers=headers)


def rate_limited(retry_after: int = 7) -> httpx.Response:
    return error(
        429,
        f"Rate limit reached for model `{MODEL}` in organization `org_01hx` service tier "
        "`on_demand` on tokens per minute (TPM): Limit 8000, Used 7800, Requested 950. "
        f"Please try again in {retry_after}s. Need more tokens? Upgrade to Dev Tier today at "
        "https://console.groq.com/settings/billing",
        "tokens",
        "rate_limit_exceeded",
        **{"retry-after": str(retry_after)},
        **ratelimit_headers(requests=998, tokens=0),
    )


def model_not_found(model: str = "openai/gpt-oss-999b") -> httpx.Response:
    return error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )


def server_error() -> httpx.Response:
    return error(500, "Internal Server Error", "internal_server_error")


def tool_use_failed() -> httpx.Response:
    response = error(
        400,
        "Failed to call a function. Please adjust your prompt. See 'failed_generation' for "
        "more details.",
        "invalid_request_error",
        "tool_use_failed",
    )
    return response


class _Trickle(httpx.AsyncByteStream):
    def __init__(self, body: bytes, *, seconds: float, chunks: int) -> None:
        self.body, self.gap = body, seconds / chunks
        self.size = -(-len(body) // chunks)
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            await asyncio.sleep(self.gap)
            self.sent += 1
            yield self.body[start : start + self.size]


def trickled(
    answer: dict[str, Any], *, seconds: float, chunks: int = 40, **headers: str
) -> httpx.Response:
    """A 200 with `answer` as its JSON body, sent in `chunks` pieces over `seconds`: each wait
    for bytes is short, the whole answer is long."""
    body = json.dumps(answer).encode()
    head = {"content-type": "application/json", "content-length": str(len(body)), **headers}
    return httpx.Response(200, headers=head, stream=_Trickle(body, seconds=seconds, chunks=chunks))


class FakeGroq:
    """Answers queued with `then(...)` first, in order; after that, `policy(request)`."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self.queue: list[Answer] = []
        self.policy: Policy | None = None
        router.post(COMPLETIONS).mock(side_effect=self._handle)

    def then(self, *answers: Answer) -> FakeGroq:
        self.queue.extend(answers)
        return self

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        self.headers.append(request.headers)
        if self.queue:
            answer: Any = self.queue.pop(0)
        elif self.policy is not None:
            answer = self.policy(body)
            if isinstance(answer, Awaitable):
                answer = await answer
        else:
            raise AssertionError(f"unexpected LLM request: {body['messages'][-1]}")
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer, headers=ratelimit_headers())

    @property
    def sent_text(self) -> str:
        """Everything sent to the model, to check what never reached a prompt."""
        return json.dumps(self.requests, ensure_ascii=False)


def last_tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool results at the end of a request (what the tools answered last round)."""
    results = []
    for message in reversed(request["messages"]):
        if message["role"] != "tool":
            break
        results.append(json.loads(message["content"]))
    return list(reversed(results))


def last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request["messages"]):
        if message["role"] == "user":
            return str(message["content"])
    return ""
