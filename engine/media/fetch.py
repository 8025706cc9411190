"""Fetching a media file's bytes from WAHA, in the worker during the customer's turn (never in
the webhook's fast path).

WAHA downloads a customer's media before it sends the event and serves it under
`/api/files/...`, behind its API key (`X-Api-Key`). The URL in the event is built from WAHA's
own idea of its address (WAHA_BASE_URL, often `http://localhost:3000`), which the workers may
not reach: the path is fetched from WAHA_URL, the address wsm already uses for WAHA. A URL
outside WAHA's files is not fetched at all ("foreign_url"): the worker never sends WAHA's key,
nor any request, to a host named by a message.

Bounded: WSM_MEDIA_FETCH_TIMEOUT_SECONDS per try, for the whole try (a server that trickles
bytes cannot hold the turn past it: httpx's own timeouts bound each wait, not the download),
WSM_MEDIA_FETCH_ATTEMPTS tries for what a
repeat can fix (network errors, timeouts, 5xx, 429; shared/backoff.py between them), and the
body is streamed and dropped at WSM_MEDIA_MAX_BYTES. Given a deadline (the customer's turn's,
engine/media/ingest.py), no try and no wait between tries runs past it: a try is cut at it, and
a file not had by then is `timeout`. Every failure is an answer with a reason (`http_404`,
`timeout`, `too_big`, ...), never an exception: the conversation goes on without the file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from shared.backoff import backoff_seconds
from shared.retry_after import retry_after_of

log = logging.getLogger(__name__)

# Where WAHA serves downloaded media.
FILES_PATH = "/api/files/"
# Reasons a file is unavailable (recorded in the history as `media_reason`).
TOO_BIG = "too_big"
TIMEOUT = "timeout"
NETWORK = "network_error"
FOREIGN_URL = "foreign_url"


@dataclass(frozen=True, slots=True)
class Fetched:
    """The bytes and their content type, or why there are none."""

    data: bytes | None
    mimetype: str = ""
    reason: str | None = None


class MediaFetcher:
    def __init__(
        self,
        waha_url: str,
        *,
        api_key: str | None = None,
        timeout_seconds: float = 30.0,
        max_bytes: int = 16 * 1024 * 1024,
        attempts: int = 3,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base = urlsplit(waha_url.rstrip("/"))
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self.attempts = max(1, attempts)
        self.backoff_base = backoff_base_seconds
        self.backoff_max = backoff_max_seconds
        headers = {"X-Api-Key": api_key} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            transport=transport,
            follow_redirects=False,  # a redirect would carry the key elsewhere
        )

    def resolve(self, url: str) -> str | None:
        """The URL to fetch: the file's path on WAHA_URL; None for a URL outside WAHA's
        files."""
        parts = urlsplit(url)
        same_host = (parts.scheme, parts.netloc) == (self.base.scheme, self.base.netloc)
        base_path = self.base.path.rstrip("/")
        path = parts.path
        if same_host and base_path and path.startswith(base_path + "/"):
            path = path[len(base_path) :]
        if not path.startswith(FILES_PATH) or ".." in path.split("/"):
            return None
        return urlunsplit((self.base.scheme, self.base.netloc, base_path + path, parts.query, ""))

    async def fetch(self, url: str, *, deadline: float | None = None) -> Fetched:
        """The file, tried up to `attempts` times; with `deadline` (time.monotonic()) nothing
        runs past it."""
        target = self.resolve(url)
        if target is None:
            return Fetched(None, reason=FOREIGN_URL)
        reason = NETWORK
        for attempt in range(1, self.attempts + 1):
            budget = self._budget(deadline)
            if budget <= 0:
                reason = TIMEOUT
                break
            retry_after: float | None = None
            try:
                async with (
                    asyncio.timeout(budget),
                    self._client.stream("GET", target) as response,
                ):
                    status = response.status_code
                    if status == 200:
                        return await self._body(response)
                    reason = f"http_{status}"
                    if status != 429 and status < 500:
                        return Fetched(None, reason=reason)  # a repeat cannot fix a 4xx
                    # Honoured up to our own cap: a customer's turn must not wait for long.
                    asked = retry_after_of(response.headers)
                    retry_after = None if asked is None else min(asked, self.backoff_max)
            except (httpx.TimeoutException, TimeoutError):
                reason = TIMEOUT
            except httpx.HTTPError as exc:
                reason = NETWORK
                log.info("media fetch failed", extra={"error": type(exc).__name__})
            if attempt < self.attempts:
                delay = backoff_seconds(
                    attempt, self.backoff_base, self.backoff_max, retry_after=retry_after
                )
                if deadline is not None and time.monotonic() + delay >= deadline:
                    break  # no time left for another try: this one's reason stands
                await asyncio.sleep(delay)
        return Fetched(None, reason=reason)

    def _budget(self, deadline: float | None) -> float:
        """How long the next try may take: the timeout, or less when the deadline is nearer."""
        if deadline is None:
            return self.timeout_seconds
        return min(self.timeout_seconds, deadline - time.monotonic())

    async def _body(self, response: httpx.Response) -> Fetched:
        mimetype = response.headers.get("content-type", "")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return Fetched(None, mimetype, TOO_BIG)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:  # stop reading: the rest never reaches memory
                return Fetched(None, mimetype, TOO_BIG)
            chunks.append(chunk)
        return Fetched(b"".join(chunks), mimetype)

    async def aclose(self) -> None:
        await self._client.aclose()
