"""Small loopback servers the edge tests put behind or beside nginx.

- `RecordingUpstream`: an HTTP server that answers 200 and records each request's path,
  headers and the port it came from, to see what nginx passes on (the client's IP, the request
  id) and over how many connections (`keep_alive=True` keeps them open, as uvicorn does).
- `TinyDns`: a UDP DNS server answering A queries for one name with an address the test can
  change, to show that nginx re-resolves its upstream (a restarted container's new IP).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    # The source port of the connection it came on: one port, one connection.
    peer_port: int = 0


class RecordingUpstream:
    """`ThreadingHTTPServer` on (host, port) answering `{"upstream": name}` to everything."""

    def __init__(self, host: str, port: int, name: str, *, keep_alive: bool = False) -> None:
        self.name = name
        self.requests: list[RecordedRequest] = []
        self.connections: list[socket.socket] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps the connection for the next request; 1.0 closes it after each.
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                upstream.connections.append(self.connection)

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                upstream.requests.append(
                    RecordedRequest(self.command, self.path, headers, self.client_address[1])
                )
                body = f'{{"upstream":"{upstream.name}"}}'.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # http.server dispatches on these names

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop as a process would: the listener and every open connection closed."""
        self.server.shutdown()
        self.server.server_close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


@dataclass
class TinyDns:
    """Answers `name` with `address` (TTL 1 s); any other name or type gets no answer record."""

    name: str
    address: str
    host: str = "127.0.0.1"
    queries: int = 0
    _sock: socket.socket = field(init=False)
    _thread: threading.Thread = field(init=False)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    def __enter__(self) -> TinyDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                query, client = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self._answer(query)
            if answer:
                self._sock.sendto(answer, client)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        (query_id,) = struct.unpack("!H", query[:2])
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        offset += 1
        if offset + 4 > len(query):
            return None
        qtype, _qclass = struct.unpack("!HH", query[offset : offset + 4])
        question = query[12 : offset + 4]
        self.queries += 1
        matches = ".".join(labels).lower() == self.name.lower() and qtype == 1
        # Flags: a response, recursion desired and available, no error.
        header = struct.pack("!HHHHHH", query_id, 0x8180, 1, 1 if matches else 0, 0, 0)
        if not matches:
            return header + question
        record = struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(self.address)
        return header + question + record
