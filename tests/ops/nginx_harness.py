"""Running the real nginx on the config the product writes (wsm/edge.py), as an unprivileged
user.

`wsm.edge.write_config` renders the project's template the way the official image does and
includes it in a main config that repeats the http-level directives of the image's
/etc/nginx/nginx.conf: a template that sets one of them again at http level fails here as it
would in the image. Everything nginx writes (pid, logs, temp files) goes to a temporary prefix,
so it needs no root paths. Tests check that config, never a copy of it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.embedded_redis import free_port
from tests.support.polling import wait_until
from wsm.edge import loopback_values, nginx_argv, write_config
from wsm.stack import port_accepts

NGINX_PROGRAM = "nginx"


@dataclass
class NginxPrefix:
    """A rendered config tree under `root`: main config, conf.d/default.conf, temp dirs."""

    root: Path
    values: Mapping[str, str]
    # None: the project's template, as the product renders it.
    template: str | None = None
    # Keep-alive upstream blocks, name -> address (wsm/edge.py, keepalive_upstream).
    upstreams: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        write_config(self.root, self.values, template=self.template, upstreams=self.upstreams)

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
        return nginx_argv(nginx, self.root, *extra)

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
            lambda: port_accepts(port) or process.poll() is not None,
            timeout=10,
            what="nginx to listen",
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


__all__ = ["NGINX_PROGRAM", "NginxPrefix", "free_port", "loopback_values", "running_nginx"]
