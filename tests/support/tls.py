"""A local HTTPS server for the lean transport's TLS tests (shared/lean_http.py): a self-signed
certificate made at test time (the `cryptography` package), and a small HTTP/1.1 server behind
asyncio's TLS whose behaviour per request a test chooses (answer, close without answering,
never answer). It records the connections, the SNI name each handshake carried, and the
requests as they arrived."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.embedded_redis import free_port


@dataclass(frozen=True)
class Certificate:
    cert_pem: Path
    key_pem: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_pem, self.key_pem)
        return context

    def trusting_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate only (verification and hostname
        checks on, as ssl.create_default_context makes them)."""
        return ssl.create_default_context(cafile=str(self.cert_pem))


def self_signed(directory: Path, name: str = "localhost") -> Certificate:
    """A self-signed certificate for `name` (DNS) and 127.0.0.1 (IP) valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_pem = directory / f"{name}-{cert.serial_number:x}.crt"
    key_pem = directory / f"{name}-{cert.serial_number:x}.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_pem, key_pem)


@dataclass
class Seen:
    connection: int  # which accepted connection (0, 1, ...)
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# What the server does with a request: bytes to answer with, "close" (close the connection
# without answering) or "hang" (never answer).
Behaviour = Callable[[Seen], "bytes | str"]


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class TLSServer:
    certificate: Certificate
    behaviour: Behaviour
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    connections: int = 0
    server_names: list[str | None] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    async def start(self) -> None:
        context = self.certificate.server_context()

        def note_name(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self.server_names.append(name)

        context.sni_callback = note_name
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=context)

    async def stop(self) -> None:
        self._stopped.set()  # "hang" handlers return
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return  # the client closed its connection
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:] if x)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(number, method, path, headers, body)
                self.requests.append(seen)
                what = self.behaviour(seen)
                if what == "close":
                    return
                if what == "hang":
                    await self._stopped.wait()
                    return
                assert isinstance(what, bytes)
                writer.write(what)
                await writer.drain()
        finally:
            self._handlers.discard(task)
            writer.close()
