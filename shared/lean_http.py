"""A lean HTTP/1.1 transport under httpx's API: the engine's calls to WAHA, and the WAHA
simulator's webhooks and the load test's customers.

Why: httpx's default transport (httpcore's pool over anyio streams and h11) cost about 1.5 ms
of CPU per WAHA call at 16 calls in flight on the reference machine, about 0.26 ms with this
one (docs/benchmarks.md, end to end): the calls to WAHA were a third of a worker's CPU; and
the simulator must post a few thousand webhooks/s in a load test. This transport keeps the
httpx API (client, requests, responses, timeouts, exceptions) and replaces only the wire:
asyncio protocols, httptools' C response parser, a keep-alive pool per host. It lives in
shared/ so that a worker does not import the simulator to use it.

Scope: `http://` (WAHA beside the workers) and `https://` (Groq's API for the AI agent and
the voice notes' transcriptions: its client on httpx's own pool spent about a fifth of a
worker's CPU at 64 calls in flight, because httpcore's per-request bookkeeping walks every
pooled connection; docs/benchmarks.md, AI agent). Any other scheme goes through httpx's own
transport. TLS is asyncio's own (`create_connection(ssl=..., server_hostname=host)`): the
certificate is always verified, against the same trust store httpx uses by default
(`httpx.create_ssl_context()`: certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR), unless the
caller hands in its own context; SNI is the URL's host; ALPN offers only HTTP/1.1. There is no
switch to turn verification off. The TLS handshake counts against the connect timeout.

Connections are pooled per (scheme, host, port). A request sent on a pooled connection that
the server had already closed (its keep-alive timeout) is sent again once on a new connection,
as httpcore does: only when the connection ended before any byte of an answer came back.

Below httpx's API, `Origin` and `LeanHTTPTransport.send` take a request already written out as
bytes, for a caller whose requests are all alike (the engine's calls to WAHA): building httpx's
request and response objects around each call was about a tenth of a worker's busy CPU
(docs/benchmarks.md, seventeenth session). Same pool, same retry of a stale connection, same
httpx exceptions; no redirects, cookies or content decoding (the request asks for no encoding).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools
import httpx

from shared.deadlines import deadline

_CRLF = b"\r\n"


class _Closed(Exception):
    """The connection ended before a response began."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.started = False  # response bytes have arrived
        self.keep_alive = False
        self._waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.started:
            self._fail(_Closed())
        else:
            self._fail(httpx.RemoteProtocolError("connection closed mid-response"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        # Read here: once feed_data returns, the parser has reset and says "no".
        self.keep_alive = self.parser.should_keep_alive()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def exchange(self, raw: bytes) -> RawAnswer:
        assert self.transport is not None
        self.started = False
        self.keep_alive = False
        self._headers, self._body = [], []
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        await self._waiter
        return self.parser.get_status_code(), self._headers, b"".join(self._body)

    def reusable(self) -> bool:
        return not self.closed and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


_DEFAULT_PORTS = {"http": 80, "https": 443}

_PoolKey = tuple[str, str, int]  # (scheme, host, port)

# What `LeanHTTPTransport.send` answers: the status, the header fields as sent, the body.
RawAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]


@dataclass(frozen=True, slots=True)
class Origin:
    """A base URL whose requests are written out by hand: the pool's key, and the bytes every
    request to it carries (its Host field and the caller's fixed header fields)."""

    key: _PoolKey
    path_prefix: bytes
    fixed_fields: bytes

    @classmethod
    def of(cls, base_url: str, headers: dict[str, str]) -> Origin | None:
        """None for a scheme the lean transport does not speak."""
        url = httpx.URL(base_url)
        if url.scheme not in _DEFAULT_PORTS:
            return None
        port = url.port or _DEFAULT_PORTS[url.scheme]
        # As httpx writes it: the port only when it is not the scheme's own; IPv6 in brackets.
        host = f"[{url.host}]" if ":" in url.host else url.host
        host = host if url.port is None else f"{host}:{url.port}"
        fields = [f"Host: {host}", *(f"{name}: {value}" for name, value in headers.items())]
        return cls(
            key=(url.scheme, url.host, port),
            path_prefix=url.raw_path.rstrip(b"/"),
            fixed_fields=("\r\n".join(fields) + "\r\n").encode("latin-1"),
        )

    def request(self, method: str, path: str, body: bytes | None, content_type: str = "") -> bytes:
        """`method` on `path` (already quoted, below the base URL's path), with `body`."""
        head = b"%s %s%s HTTP/1.1\r\n" % (method.encode(), self.path_prefix, path.encode())
        if body is None:
            return head + self.fixed_fields + _CRLF
        extra = b"Content-Type: %s\r\n" % content_type.encode() if content_type else b""
        length = b"Content-Length: %d\r\n\r\n" % len(body)
        return head + self.fixed_fields + extra + length + body


class LeanHTTPTransport(httpx.AsyncBaseTransport):
    def __init__(
        self, max_idle_per_host: int = 64, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """`ssl_context`: whom to trust for `https://` (tests trust their own certificate);
        by default httpx's own trust store, made on the first `https://` request."""
        self._idle: dict[_PoolKey, deque[_Connection]] = {}
        self._max_idle = max_idle_per_host
        self._ssl_context = ssl_context
        self._fallback = httpx.AsyncHTTPTransport(trust_env=False)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # Verification and hostname checks on (create_default_context's defaults).
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        if scheme not in _DEFAULT_PORTS:
            return await self._fallback.handle_async_request(request)
        key = (scheme, request.url.host, request.url.port or _DEFAULT_PORTS[scheme])
        body = await request.aread()
        head = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
        fields = request.headers.raw
        if request.headers.get("transfer-encoding"):
            # A streamed body (httpx says chunked): read whole above, so sent with its length.
            fields = [(n, v) for n, v in fields if n.lower() != b"transfer-encoding"]
            fields.append((b"Content-Length", b"%d" % len(body)))
        head += [name + b": " + value for name, value in fields]
        raw = _CRLF.join(head) + _CRLF + _CRLF + body
        status, headers, content = await self._round_trip(
            key, raw, request.extensions.get("timeout", {}), request
        )
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def send(
        self, origin: Origin, raw: bytes, timeouts: dict[str, float | None]
    ) -> RawAnswer:
        """A request written out by `origin.request`, through the pool; `timeouts` as httpx's
        (`Timeout.as_dict()`). Raises httpx's exceptions, as `handle_async_request` does."""
        return await self._round_trip(origin.key, raw, timeouts, None)

    async def _round_trip(
        self,
        key: _PoolKey,
        raw: bytes,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> RawAnswer:
        _, host, port = key
        tls = self._tls() if key[0] == "https" else None
        connection = self._take_idle(key)
        reused = connection is not None
        try:
            if connection is None:
                connection = await self._connect(request, host, port, tls, timeouts.get("connect"))
            try:
                status, headers, content = await self._exchange(
                    request, connection, raw, timeouts.get("read")
                )
            except _Closed:
                connection.close()
                if not reused:
                    raise httpx.RemoteProtocolError(
                        "server closed the connection", request=request
                    ) from None
                # A stale pooled connection: the server closed it while idle. Once, on a new
                # connection, whose own end before an answer is the caller's error.
                connection = await self._connect(request, host, port, tls, timeouts.get("connect"))
                try:
                    status, headers, content = await self._exchange(
                        request, connection, raw, timeouts.get("read")
                    )
                except _Closed:
                    raise httpx.RemoteProtocolError(
                        "server closed the connection", request=request
                    ) from None
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        self._give_back(key, connection)
        return status, headers, content

    async def _connect(
        self,
        request: httpx.Request | None,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        seconds: float | None,
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):  # the TLS handshake included
                if tls is None:
                    _, protocol = await loop.create_connection(_Connection, host, port)
                else:
                    _, protocol = await loop.create_connection(
                        _Connection, host, port, ssl=tls, server_hostname=host
                    )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from None
        except OSError as exc:  # refused, unreachable, and TLS failures (ssl.SSLError)
            raise httpx.ConnectError(str(exc), request=request) from None
        return protocol

    async def _exchange(
        self,
        request: httpx.Request | None,
        connection: _Connection,
        raw: bytes,
        seconds: float | None,
    ) -> RawAnswer:
        try:
            if seconds is None:
                return await connection.exchange(raw)
            with deadline(seconds):  # not asyncio.timeout: see shared/deadlines.py
                return await connection.exchange(raw)
        except TimeoutError:
            raise httpx.ReadTimeout("no answer in time", request=request) from None
        except httpx.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from None

    def _take_idle(self, key: _PoolKey) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def _give_back(self, key: _PoolKey, connection: _Connection) -> None:
        if not connection.reusable():
            connection.close()
            return
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= self._max_idle:
            connection.close()
        else:
            idle.append(connection)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        await self._fallback.aclose()
