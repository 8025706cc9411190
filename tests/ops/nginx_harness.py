"""Running the real nginx on the project's rendered template, as an unprivileged user.

The rendered template is included inside a main config that repeats the http-level directives
of the official image's /etc/nginx/nginx.conf (default_type, log_format main, access_log,
sendfile, keepalive_timeout): a template that sets one of them again at http level fails here
as it would in the image. Everything nginx writes (pid, logs, temp files) goes to a temporary
prefix, so it needs no root paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.embedded_redis import free_port
from tests.ops.render import NGINX_TEMPLATE, render_nginx_template
from tests.support.polling import wait_until

NGINX_PROGRAM = "nginx"

MAIN_CONFIG = """\
{user}
worker_processes 1;
worker_rlimit_nofile 4096;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    # As in the official image's nginx.conf.
    default_type application/octet-stream;
    log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" '
                    '"$http_user_agent" "$http_x_forwarded_for"';
    access_log {prefix}/access-main.log main;
    sendfile on;
    keepalive_timeout 65;

    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    include {prefix}/conf.d/*.conf;
}}
"""


def loopback_values(
    *,
    port: int,
    gateway: str,
    api: str,
    webhook_rate: str = "1000r/s",
    webhook_burst: int = 1000,
    api_rate: str = "1000r/s",
    api_burst: int = 1000,
) -> dict[str, str]:
    """The template's variables for a stack on 127.0.0.1 (upstreams are IP literals, which nginx
    never sends to the resolver; the resolver setting is still required by the template)."""
    return {
        "NGINX_LISTEN": f"127.0.0.1:{port}",
        "NGINX_RESOLVER": "127.0.0.1",
        "NGINX_GATEWAY_UPSTREAM": gateway,
        "NGINX_API_UPSTREAM": api,
        "NGINX_CLIENT_MAX_BODY_SIZE": "1m",
        "NGINX_WEBHOOK_RATE": webhook_rate,
        "NGINX_WEBHOOK_BURST": str(webhook_burst),
        "NGINX_API_RATE": api_rate,
        "NGINX_API_BURST": str(api_burst),
        # Loopback may post /webhook, and the tests' bursts are not cut by the connection cap.
        "NGINX_WEBHOOK_ALLOW": "allow 127.0.0.0/8; allow ::1;",
        "NGINX_CONN_PER_CLIENT": "1000",
    }


@dataclass
class NginxPrefix:
    """A rendered config tree under `root`: main config, conf.d/default.conf, temp dirs."""

    root: Path
    values: Mapping[str, str]
    template: str = field(default_factory=lambda: NGINX_TEMPLATE.read_text("utf-8"))

    def __post_init__(self) -> None:
        (self.root / "conf.d").mkdir(parents=True, exist_ok=True)
        self.site.write_text(render_nginx_template(self.template, self.values), "utf-8")
        # Run as root (CI), nginx's workers would switch to "nobody", who cannot enter pytest's
        # private temporary directories; they stay root here, in a throwaway test instance.
        user = "user root;" if os.geteuid() == 0 else ""
        self.main.write_text(MAIN_CONFIG.format(prefix=self.root, user=user), "utf-8")

    @property
    def main(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def site(self) -> Path:
        return self.root / "conf.d" / "default.conf"

    @property
    def access_log(self) -> Path:
        # The template logs to /dev/stdout, which the harness points at this file.
        return self.root / "access.log"

    def command(self, nginx: str, *extra: str) -> list[str]:
        return [
            nginx,
            "-p",
            str(self.root),
            "-c",
            str(self.main),
            "-e",
            str(self.root / "error.log"),
            *extra,
        ]

    def check(self, nginx: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(nginx, "-t"), capture_output=True, text=True, timeout=30)

    def access_entries(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        return [
            json.loads(line) for line in self.access_log.read_text("utf-8").splitlines() if line
        ]


@contextlib.contextmanager
def running_nginx(nginx: str, prefix: NginxPrefix, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground (`daemon off`), stopped with SIGQUIT (graceful) at the end."""
    checked = prefix.check(nginx)
    assert checked.returncode == 0, checked.stderr
    with prefix.access_log.open("ab") as log:
        process = subprocess.Popen(
            prefix.command(nginx, "-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: _accepts(port) or process.poll() is not None, timeout=10, what="nginx to listen"
        )
        assert process.poll() is None, (prefix.root / "error.log").read_text(errors="replace")
        yield process
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


__all__ = ["NGINX_PROGRAM", "NginxPrefix", "free_port", "loopback_values", "running_nginx"]
