"""A three-master Redis Cluster on loopback, started by the tests (`redis-server
--cluster-enabled yes` three times, joined with `redis-cli --cluster create`)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from shared.embedded_redis import EmbeddedRedis, free_port

# Redis Cluster's bus listens on the client port + 10000.
BUS_OFFSET = 10000


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    while True:
        port = free_port()
        if port + BUS_OFFSET < 65536 and _bindable(port + BUS_OFFSET):
            return port


class LoopbackCluster:
    def __init__(self, base_dir: Path, redis_cli: str, masters: int = 3) -> None:
        self.redis_cli = redis_cli
        self.nodes = [
            EmbeddedRedis(
                base_dir / f"node{n}",
                port=cluster_port(),
                appendonly=False,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(base_dir / f"node{n}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            for n in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.redis_cli, "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not all(self._state_ok(node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the loopback Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def _state_ok(self, port: int) -> bool:
        info = subprocess.run(
            [self.redis_cli, "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return "cluster_state:ok" in info

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
