"""The outbound side: what the engine asks of WhatsApp, and WAHA's implementation of it.

`Outbound` is the interface (another WhatsApp API can be plugged in behind it); `WahaClient`
speaks WAHA's HTTP API through one shared httpx connection pool with `X-Api-Key`.

Failures are typed, because the sender treats them differently:

    WahaError
    ├── WahaRetryable          network error, timeout, 5xx, 429: try again later (backoff)
    ├── WahaSessionNotWorking  422: the WhatsApp session is not WORKING; park until it is
    ├── WahaPlusRequired       422 AvailableInPlusVersion: this WAHA (Core) does not offer the
    │                          call at all (sending files); never retried, never dead-lettered
    └── WahaTerminal           any other 4xx: this request will never succeed (dead letter)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx
import orjson

from shared.events import short_message_id
from shared.lean_http import LeanHTTPTransport, Origin, RawAnswer
from shared.retry_after import retry_after_of


class WahaError(Exception):
    """A WAHA call failed. `status` is None for a network failure; `answer` is WAHA's body."""

    def __init__(self, message: str, *, status: int | None = None, answer: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer


class WahaRetryable(WahaError):
    """Network error, timeout, 5xx or 429: the same request may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        answer: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, answer=answer)
        self.retry_after = retry_after


class WahaSessionNotWorking(WahaError):
    """422: the session is not WORKING (scan the QR, restart it); sends wait for WORKING."""


class WahaTerminal(WahaError):
    """Another 4xx: the request is wrong for WAHA and will never succeed as it is."""


class WahaPlusRequired(WahaError):
    """422 with WAHA's `AvailableInPlusVersion`: a WAHA Plus feature (sendImage, sendFile,
    sendVoice) asked of WAHA Core. Not the session's fault (no park) and not the request's
    (no dead letter): this WAHA will refuse every such call until it is upgraded."""


# WAHA's AvailableInPlusVersion (src/core/exceptions.ts) is a NestJS
# UnprocessableEntityException whose message reads "<feature> is available only in Plus
# version ..."; newer releases also name the class. Either marks the 422 as this one, not the
# session's (whose body is {"error": "Session status is not as expected...", ...}).
_PLUS_MARKERS = ("available only in plus version", "availableinplusversion")


def is_plus_refusal(status: int, answer: str) -> bool:
    lowered = answer.lower()
    return status == 422 and any(marker in lowered for marker in _PLUS_MARKERS)


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What WAHA answered to a send: its message id (serialized when it gives one)."""

    id: str

    @property
    def short_id(self) -> str:
        return short_message_id(self.id)


def message_id_from_answer(answer: Any) -> str | None:
    """The sent message's id in WAHA's answer, whose shape depends on the engine:
    `{"id": "true_..."}` (GOWS, WEBJS recent), `{"id": {"_serialized": ...}}` (WEBJS),
    `{"key": {"id": ...}}` (NOWEB)."""
    if not isinstance(answer, dict):
        return None
    value = answer.get("id")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        for field in ("_serialized", "id"):
            inner = value.get(field)
            if isinstance(inner, str) and inner:
                return inner
    key = answer.get("key")
    if isinstance(key, dict) and isinstance(key.get("id"), str):
        return str(key["id"])
    return None


class Outbound(Protocol):
    """What the engine needs from a WhatsApp API."""

    async def send_seen(self, session: str, chat_id: str) -> None: ...

    async def start_typing(self, session: str, chat_id: str) -> None: ...

    async def stop_typing(self, session: str, chat_id: str) -> None: ...

    async def send_text(self, session: str, chat_id: str, text: str) -> SentMessage: ...

    async def phone_for_lid(self, session: str, lid: str) -> str | None: ...

    async def session_status(self, session: str) -> str | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutboundFile:
    """A file to send: its bytes, type and name (WAHA's `file: {mimetype, filename, data}`)."""

    data: bytes
    mimetype: str
    filename: str


# The sender's calls, made for every reply (their URLs are parsed once per client).
SEND_SEEN = "/api/sendSeen"
START_TYPING = "/api/startTyping"
STOP_TYPING = "/api/stopTyping"
SEND_TEXT = "/api/sendText"
SENDER_ENDPOINTS = (SEND_SEEN, START_TYPING, STOP_TYPING, SEND_TEXT)

# How each kind of outbound media reaches WAHA (all three are WAHA Plus features).
MEDIA_ENDPOINTS = {
    "image": "/api/sendImage",
    "document": "/api/sendFile",
    "voice": "/api/sendVoice",
}


@runtime_checkable
class MediaOutbound(Protocol):
    """A WhatsApp API that can send files too (apart from `Outbound`, so a text-only stand-in
    still is an `Outbound`)."""

    async def send_media(
        self, session: str, chat_id: str, kind: str, file: OutboundFile, caption: str
    ) -> SentMessage: ...


def _api_key(api_key: str | None) -> dict[str, str]:
    """The header field that carries WAHA's API key, when there is one."""
    return {"X-Api-Key": api_key} if api_key else {}


class WahaClient:
    """WAHA's HTTP API. One instance (one connection pool) per process."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_seconds: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"accept": "application/json", **_api_key(api_key)}
        # With a transport given (engine/parts.py: the lean one), each call is one request
        # handed straight to it: httpx's client layer (URL merging, cookies, auth and redirect
        # handling, event hooks) cost about as much CPU per call as the lean transport itself,
        # and WAHA's API needs none of it. On the lean transport the request is written out as
        # bytes (`Origin`): httpx's request and response objects around each call were about a
        # tenth of a worker's busy CPU (docs/benchmarks.md, seventeenth session). The client
        # below stays for the default transport (and respx in the tests).
        self._transport = transport
        self._base_url = base_url.rstrip("/")
        self._headers = headers
        self._body_headers = {**headers, "content-type": "application/json"}
        self._timeouts = httpx.Timeout(timeout_seconds).as_dict()
        self._lean: tuple[LeanHTTPTransport, Origin] | None = None
        if isinstance(transport, LeanHTTPTransport):
            origin = Origin.of(self._base_url, {"Accept": "application/json", **_api_key(api_key)})
            self._lean = (transport, origin) if origin is not None else None
        # Parsed once: parsing the URL was over half of building each request (26 of 43 us).
        self._urls = {
            path: httpx.URL(self._base_url + path)
            for path in (*SENDER_ENDPOINTS, *MEDIA_ENDPOINTS.values())
        }
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            # Sends to one WAHA go through a few kept-alive connections, not one per message.
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._transport is not None:
            await self._transport.aclose()

    async def _request(self, method: str, path: str, content: bytes | None) -> RawAnswer:
        """(status, header fields, body) of one call; httpx's exceptions."""
        if self._lean is not None:
            transport, origin = self._lean
            raw = origin.request(method, path, content, "application/json")
            return await transport.send(origin, raw, self._timeouts)
        response = await self._response(method, path, content)
        return response.status_code, response.headers.raw, response.content

    async def _response(self, method: str, path: str, content: bytes | None) -> httpx.Response:
        if self._transport is None:
            return await self._http.request(
                method,
                path,
                content=content,
                headers={"content-type": "application/json"} if content is not None else None,
            )
        request = httpx.Request(
            method,
            self._urls.get(path) or self._base_url + path,
            headers=self._body_headers if content is not None else self._headers,
            content=content,
            extensions={"timeout": self._timeouts},
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            status, headers, content = await self._request(
                method, path, orjson.dumps(body) if body is not None else None
            )
        except httpx.HTTPError as exc:
            raise WahaRetryable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if status < 300:
            if not content:
                return None
            try:
                return orjson.loads(content)
            except orjson.JSONDecodeError:
                return None
        answer = content.decode("utf-8", "replace")[:2000]
        message = f"{method} {path}: WAHA answered {status}"
        if status == 429 or status >= 500:
            retry_after = retry_after_of(httpx.Headers(headers))
            raise WahaRetryable(message, status=status, answer=answer, retry_after=retry_after)
        if is_plus_refusal(status, answer):
            raise WahaPlusRequired(message, status=status, answer=answer)
        if status == 422:
            raise WahaSessionNotWorking(message, status=status, answer=answer)
        raise WahaTerminal(message, status=status, answer=answer)

    async def send_seen(self, session: str, chat_id: str) -> None:
        await self._call("POST", SEND_SEEN, {"session": session, "chatId": chat_id})

    async def start_typing(self, session: str, chat_id: str) -> None:
        await self._call("POST", START_TYPING, {"session": session, "chatId": chat_id})

    async def stop_typing(self, session: str, chat_id: str) -> None:
        await self._call("POST", STOP_TYPING, {"session": session, "chatId": chat_id})

    async def send_text(self, session: str, chat_id: str, text: str) -> SentMessage:
        answer = await self._call(
            "POST", SEND_TEXT, {"session": session, "chatId": chat_id, "text": text}
        )
        message_id = message_id_from_answer(answer)
        if message_id is None:
            # WAHA said 201: the message is out. Without an id we cannot recognise its echo,
            # which only costs a pause of the bot if the echo is taken for a human's message.
            return SentMessage(id="")
        return SentMessage(id=message_id)

    async def send_media(
        self, session: str, chat_id: str, kind: str, file: OutboundFile, caption: str
    ) -> SentMessage:
        """sendImage / sendFile / sendVoice with the bytes inline (`file.data`, base64): WAHA
        need not reach back into wsm for a URL. WAHA Core answers 422 AvailableInPlusVersion
        (WahaPlusRequired). A voice note goes as it is (`convert: false`): wsm only accepts
        audio/ogg (opus) for it, which is what WhatsApp plays."""
        path = MEDIA_ENDPOINTS.get(kind)
        if path is None:
            raise ValueError(f"no WAHA endpoint sends {kind!r}")
        body: dict[str, Any] = {
            "session": session,
            "chatId": chat_id,
            "file": {
                "mimetype": file.mimetype,
                "filename": file.filename,
                "data": base64.b64encode(file.data).decode(),
            },
        }
        if kind == "voice":
            body["convert"] = False
        elif caption:
            body["caption"] = caption
        answer = await self._call("POST", path, body)
        return SentMessage(id=message_id_from_answer(answer) or "")

    async def phone_for_lid(self, session: str, lid: str) -> str | None:
        answer = await self._call(
            "GET", f"/api/{quote(session, safe='')}/lids/{quote(lid, safe='')}"
        )
        if isinstance(answer, dict) and isinstance(answer.get("pn"), str) and answer["pn"]:
            return str(answer["pn"])
        return None

    async def session_status(self, session: str) -> str | None:
        """The session's status (`GET /api/sessions/{session}`: STOPPED, STARTING,
        SCAN_QR_CODE, WORKING, FAILED), or None when WAHA's answer has none."""
        answer = await self._call("GET", f"/api/sessions/{quote(session, safe='')}")
        if isinstance(answer, dict) and isinstance(answer.get("status"), str):
            return str(answer["status"])
        return None
