"""A narrower edge (issue 12, section 3), against the real nginx on the project's template:

- `/webhook` only from the allowed source networks (NGINX_WEBHOOK_ALLOW): anyone else gets
  403 and nothing reaches the gateway; compose's default is loopback and the private ranges;
- a client cannot hold more than NGINX_CONN_PER_CLIENT connections in progress (429 past it),
  while other clients are served;
- with certificate files, the TLS listener serves the API over https and plain http no longer
  carries it (the bearer token never travels in clear text), while WAHA's /webhook still works
  over the internal plain http.

Clients speak from different loopback addresses (127.0.0.x), each its own client to nginx.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from shared.keys import keys_for_conversation
from tests.ops.conftest import HMAC_KEY, Gateway
from tests.ops.nginx_harness import (
    NGINX_PROGRAM,
    NginxPrefix,
    free_port,
    loopback_values,
    running_nginx,
)
from tests.ops.standins import RecordingUpstream
from tests.support.tools import require_program
from tests.support.waha import compact, text_message, webhook_headers
from wsm.edge import DEFAULT_WEBHOOK_NETWORKS, tls_site, webhook_allow_rules

REPO = Path(__file__).resolve().parents[2]


def client_from(address: str, *, verify: bool = True) -> httpx.Client:
    """An HTTP client whose connections come from `address` (any 127.0.0.0/8 address)."""
    transport = httpx.HTTPTransport(local_address=address, verify=verify)
    return httpx.Client(transport=transport, timeout=10.0)


def new_chat() -> str:
    return f"55119{uuid.uuid4().int % 10**8:08d}@c.us"


def signed_message(chat: str) -> tuple[bytes, dict[str, str]]:
    body = compact(text_message(chat, "oi"))
    return body, webhook_headers(body, HMAC_KEY)


def queued(client: redis.Redis, prefix: str, chat: str) -> int:
    return int(client.llen(keys_for_conversation("default", chat, 1, prefix).messages))


# --- the allowed source networks -------------------------------------------------------------


def test_compose_allows_loopback_and_the_private_ranges_by_default() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text("utf-8"))
    value = compose["services"]["nginx"]["environment"]["NGINX_WEBHOOK_ALLOW"]
    assert value == "${NGINX_WEBHOOK_ALLOW:-" + webhook_allow_rules() + "}"
    assert set(DEFAULT_WEBHOOK_NETWORKS) == {
        "127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
    }  # fmt: skip


def test_a_source_network_that_is_not_allowed_gets_403_on_webhook(
    gateway: Gateway, redis_url: str, tmp_path: Path
) -> None:
    nginx = require_program(NGINX_PROGRAM)
    port = free_port()
    values = loopback_values(port=port, gateway=f"127.0.0.1:{gateway.port}", api="127.0.0.1:1")
    # Only 127.0.0.2 (and the private ranges, as in production): 127.0.0.1 and 127.0.0.3 are
    # outside every allowed network.
    values["NGINX_WEBHOOK_ALLOW"] = webhook_allow_rules(
        ["127.0.0.2", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    )
    client = redis.Redis.from_url(redis_url)
    prefix = NginxPrefix(tmp_path, values)
    with running_nginx(nginx, prefix, port):
        for address in ("127.0.0.1", "127.0.0.3"):
            chat = new_chat()
            body, headers = signed_message(chat)
            with client_from(address) as http:
                response = http.post(
                    f"http://127.0.0.1:{port}/webhook", content=body, headers=headers
                )
            assert response.status_code == 403
            assert response.json() == {"error": "forbidden"}
            assert response.headers["x-content-type-options"] == "nosniff"
            assert queued(client, gateway.prefix, chat) == 0
        chat = new_chat()
        body, headers = signed_message(chat)
        with client_from("127.0.0.2") as http:
            response = http.post(f"http://127.0.0.1:{port}/webhook", content=body, headers=headers)
        assert response.json() == {"status": "queued"}
        assert queued(client, gateway.prefix, chat) == 1
    # The refused requests never reached the gateway: nginx logged them without an upstream.
    refused = [e for e in prefix.access_entries() if e["status"] == 403]
    assert len(refused) == 2 and all(e["upstream_addr"] == "" for e in refused)
    client.close()


def test_the_compose_default_lets_loopback_post(gateway: Gateway, tmp_path: Path) -> None:
    nginx = require_program(NGINX_PROGRAM)
    port = free_port()
    values = loopback_values(port=port, gateway=f"127.0.0.1:{gateway.port}", api="127.0.0.1:1")
    values["NGINX_WEBHOOK_ALLOW"] = webhook_allow_rules()
    with running_nginx(nginx, NginxPrefix(tmp_path, values), port):
        body, headers = signed_message(new_chat())
        with client_from("127.0.0.9") as http:
            response = http.post(f"http://127.0.0.1:{port}/webhook", content=body, headers=headers)
        assert response.json() == {"status": "queued"}


# --- connections per client ---------------------------------------------------------------------


class HangingUpstream:
    """Accepts connections and reads, but never answers until released: each request nginx
    passes on stays in progress."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.release = threading.Event()
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.release.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._connections.append(conn)

    def close(self) -> None:
        self.release.set()
        self.thread.join(5)
        for conn in self._connections:
            conn.close()
        self.sock.close()


@pytest.fixture
def hanging() -> Iterator[HangingUpstream]:
    upstream = HangingUpstream(free_port())
    yield upstream
    upstream.close()


def test_the_connection_limit_per_client_holds(hanging: HangingUpstream, tmp_path: Path) -> None:
    nginx = require_program(NGINX_PROGRAM)
    port = free_port()
    api_port = hanging.sock.getsockname()[1]
    values = loopback_values(port=port, gateway="127.0.0.1:1", api=f"127.0.0.1:{api_port}")
    values["NGINX_CONN_PER_CLIENT"] = "2"
    with running_nginx(nginx, NginxPrefix(tmp_path, values), port):
        url = f"http://127.0.0.1:{port}/api/conversations"
        # Two requests from 127.0.0.5 in progress (their upstream never answers) ...
        held = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.5", 0))
            sock.sendall(b"GET /api/conversations HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(sock)
        from tests.support.polling import wait_until

        wait_until(lambda: hanging.accepted == 2, timeout=10, what="both requests upstream")
        # ... so a third from the same address is refused at once, without reaching upstream;
        with client_from("127.0.0.5") as http:
            refused = http.get(url)
        assert refused.status_code == 429
        assert refused.json() == {"error": "too_many_requests"}
        assert hanging.accepted == 2
        # another client is not affected (its request is passed on).
        other = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.6", 0))
        other.sendall(b"GET /api/conversations HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: hanging.accepted == 3, timeout=10, what="the other client upstream")
        for sock in [*held, other]:
            sock.close()


# --- TLS ------------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = require_program("openssl")
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_certificate_files_switch_tls_on_and_the_api_leaves_plain_http(
    gateway: Gateway, tmp_path: Path
) -> None:
    nginx = require_program(NGINX_PROGRAM)
    port, tls_port, api_port = free_port(), free_port(), free_port()
    cert, key = self_signed(tmp_path)
    values = loopback_values(
        port=port, gateway=f"127.0.0.1:{gateway.port}", api=f"127.0.0.1:{api_port}"
    ) | {
        "NGINX_TLS_LISTEN": f"127.0.0.1:{tls_port}",
        "NGINX_TLS_CERT_FILE": str(cert),
        "NGINX_TLS_KEY_FILE": str(key),
        "NGINX_TLS_PUBLIC_PORT": str(tls_port),
    }
    prefix = NginxPrefix(tmp_path / "nginx", values)
    # What nginx/entrypoint/40-wsm-tls.sh writes when the files exist.
    (prefix.root / "wsm-tls").mkdir()
    (prefix.root / "wsm-tls" / "tls.conf").write_text(tls_site(values), "utf-8")
    with RecordingUpstream("127.0.0.1", api_port, "api") as api, running_nginx(nginx, prefix, port):
        with client_from("127.0.0.7", verify=False) as https:
            answer = https.get(f"https://127.0.0.1:{tls_port}/api/conversations")
        assert answer.json() == {"upstream": "api"}
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
        with client_from("127.0.0.7") as http:
            plain = http.get(
                f"http://127.0.0.1:{port}/api/conversations",
                headers={"authorization": "Bearer not-sent-upstream"},
            )
            assert plain.status_code == 403
            # WAHA posts over the internal network's plain http: still served.
            chat = new_chat()
            body, headers = signed_message(chat)
            webhook = http.post(f"http://127.0.0.1:{port}/webhook", content=body, headers=headers)
            assert webhook.json() == {"status": "queued"}
            # The console's pages are sent to the https port browsers reach (HTTPS_PORT in
            # compose), not to a port-less https://<host>/ (found by an audit).
            for path in ("/c/default/5511@c.us?x=1", "/static/console.css", "/"):
                page = http.get(f"http://127.0.0.1:{port}{path}")
                assert page.status_code == 301, path
                assert page.headers["location"] == f"https://127.0.0.1:{tls_port}{path}"
        with client_from("127.0.0.7", verify=False) as https:
            assert https.get(page.headers["location"]).json() == {"upstream": "api"}
        assert [r.path for r in api.requests] == ["/api/conversations", "/"]


def test_without_certificate_files_nginx_serves_plain_http_only(tmp_path: Path) -> None:
    """The include finds nothing: the config is valid, has no TLS listener, and the API is
    served over plain http (for an SSH tunnel or a TLS proxy in front)."""
    nginx = require_program(NGINX_PROGRAM)
    port, api_port = free_port(), free_port()
    values = loopback_values(port=port, gateway="127.0.0.1:1", api=f"127.0.0.1:{api_port}")
    prefix = NginxPrefix(tmp_path, values)
    dump = subprocess.run(prefix.command(nginx, "-T"), capture_output=True, text=True, timeout=30)
    assert dump.returncode == 0, dump.stderr
    assert "ssl_certificate" not in dump.stdout
    with RecordingUpstream("127.0.0.1", api_port, "api"), running_nginx(nginx, prefix, port):
        with client_from("127.0.0.8") as http:
            answer = http.get(f"http://127.0.0.1:{port}/api/conversations")
        assert answer.json() == {"upstream": "api"}
