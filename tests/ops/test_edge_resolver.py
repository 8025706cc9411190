"""nginx finds a gateway that came back at a new address, without a reload.

In compose a restarted or rescaled gateway gets a new container IP. The template resolves the
upstream name per request through `resolver ... valid=5s` (a variable in proxy_pass). Here a
tiny DNS server stands in for Docker's: it first answers the gateway's name with 127.0.0.21,
then, once that "container" is gone, with 127.0.0.22.
"""

from __future__ import annotations

import httpx
import pytest

from tests.ops.nginx_harness import (
    NGINX_PROGRAM,
    NginxPrefix,
    free_port,
    loopback_values,
    running_nginx,
)
from tests.ops.standins import RecordingUpstream, TinyDns
from tests.support.polling import wait_until
from tests.support.tools import require_program

NAME = "gateway.wsm.test"


def test_nginx_follows_the_gateway_to_its_new_address(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    nginx = require_program(NGINX_PROGRAM)
    port, upstream_port = free_port(), free_port()
    with TinyDns(NAME, "127.0.0.21") as dns:
        values = loopback_values(port=port, gateway=f"{NAME}:{upstream_port}", api="127.0.0.1:1")
        values["NGINX_RESOLVER"] = f"127.0.0.1:{dns.port}"
        prefix = NginxPrefix(tmp_path_factory.mktemp("nginx-dns"), values)
        with running_nginx(nginx, prefix, port):
            url = f"http://127.0.0.1:{port}/webhook"
            with RecordingUpstream("127.0.0.21", upstream_port, "first") as first:
                response = httpx.post(url, content=b"{}", timeout=5)
                assert response.json() == {"upstream": "first"}
                assert first.requests
            # The first "container" is gone; DNS now names its replacement.
            dns.address = "127.0.0.22"
            with RecordingUpstream("127.0.0.22", upstream_port, "second"):

                def reaches_second() -> bool:
                    answer = httpx.post(url, content=b"{}", timeout=5)
                    return answer.status_code == 200 and answer.json() == {"upstream": "second"}

                # valid=5s: the old answer may be used for up to 5 s more (+ the DNS TTL).
                wait_until(reaches_second, timeout=15, interval=0.25, what="nginx to re-resolve")
        assert dns.queries >= 2
