"""nginx keeps its connections to a gateway named by an upstream block (wsm-upstreams/, what
`wsm loadtest` and nginx outside Docker use for a gateway at an IP literal), and sends each
webhook over a new one when the gateway is named by host:port (compose: re-resolved per
request). A stand-in gateway that keeps connections as uvicorn does tells them apart by the
source port each webhook came from."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.ops.nginx_harness import (
    NGINX_PROGRAM,
    NginxPrefix,
    free_port,
    loopback_values,
    running_nginx,
)
from tests.ops.standins import RecordingUpstream
from tests.support.tools import require_program
from wsm.edge import GATEWAY_POOL, POOL_CONNECTIONS, POOL_IDLE_SECONDS

WEBHOOKS = 5


def pooled(port: int, gateway_port: int, root: Path) -> NginxPrefix:
    values = loopback_values(port=port, gateway=GATEWAY_POOL, api="127.0.0.1:1")
    return NginxPrefix(root, values, upstreams={GATEWAY_POOL: f"127.0.0.1:{gateway_port}"})


def post_webhooks(port: int) -> list[httpx.Response]:
    # A new client connection to nginx for each: only nginx's side may keep one.
    return [
        httpx.post(f"http://127.0.0.1:{port}/webhook", content=b"{}", timeout=5)
        for _ in range(WEBHOOKS)
    ]


def test_the_written_block_keeps_connections_for_less_than_the_gateways_own_timeout(
    tmp_path: Path,
) -> None:
    prefix = pooled(free_port(), 8080, tmp_path)
    block = (tmp_path / "wsm-upstreams" / f"{GATEWAY_POOL}.conf").read_text("utf-8")
    assert "server 127.0.0.1:8080;" in block
    assert f"keepalive {POOL_CONNECTIONS};" in block
    # uvicorn closes an idle connection after 5 s: nginx must give it up first.
    assert f"keepalive_timeout {POOL_IDLE_SECONDS}s;" in block and POOL_IDLE_SECONDS < 5
    assert prefix.check(require_program(NGINX_PROGRAM)).returncode == 0


def test_webhooks_share_one_connection_to_a_pooled_gateway(tmp_path: Path) -> None:
    nginx = require_program(NGINX_PROGRAM)
    port, gateway_port = free_port(), free_port()
    prefix = pooled(port, gateway_port, tmp_path)
    with (
        RecordingUpstream("127.0.0.1", gateway_port, "gateway", keep_alive=True) as gateway,
        running_nginx(nginx, prefix, port),
    ):
        answers = post_webhooks(port)
    assert [a.json() for a in answers] == [{"upstream": "gateway"}] * WEBHOOKS
    assert len({r.peer_port for r in gateway.requests}) == 1
    # What the gateway is told is unchanged: HTTP/1.1, no Connection header passed on.
    assert all("connection" not in r.headers for r in gateway.requests)


def test_a_gateway_named_by_address_gets_a_new_connection_per_webhook(tmp_path: Path) -> None:
    """The template's other way (compose's): proxy_pass through a variable, no pool."""
    nginx = require_program(NGINX_PROGRAM)
    port, gateway_port = free_port(), free_port()
    values = loopback_values(port=port, gateway=f"127.0.0.1:{gateway_port}", api="127.0.0.1:1")
    prefix = NginxPrefix(tmp_path, values)
    with (
        RecordingUpstream("127.0.0.1", gateway_port, "gateway", keep_alive=True) as gateway,
        running_nginx(nginx, prefix, port),
    ):
        post_webhooks(port)
    assert len({r.peer_port for r in gateway.requests}) == WEBHOOKS


def test_a_restarted_gateway_is_reached_again_without_an_error(tmp_path: Path) -> None:
    """The gateway restarts (its kept connections closed under nginx): the next webhooks reach
    the new process, none answered 502 (a kept connection found closed is dropped, or the
    webhook retried on a new one: proxy_next_upstream)."""
    nginx = require_program(NGINX_PROGRAM)
    port, gateway_port = free_port(), free_port()
    prefix = pooled(port, gateway_port, tmp_path)
    with running_nginx(nginx, prefix, port):
        with RecordingUpstream("127.0.0.1", gateway_port, "first", keep_alive=True) as first:
            assert [a.status_code for a in post_webhooks(port)] == [200] * WEBHOOKS
        assert len({r.peer_port for r in first.requests}) == 1
        with RecordingUpstream("127.0.0.1", gateway_port, "second", keep_alive=True) as second:
            answers = post_webhooks(port)
    assert [a.json() for a in answers] == [{"upstream": "second"}] * WEBHOOKS
    assert len(second.requests) == WEBHOOKS
