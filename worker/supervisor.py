"""The fleet's supervisor: runs N worker processes, restarts any that dies, serves /metrics.

Each worker process is `python -m worker --child I ...`, reading its settings from the same
environment. A process that exits without being asked is restarted after a backoff that doubles
with each quick exit in a row (0.5 s up to 30 s) and resets once a process has lived 30 s.

SIGTERM (or SIGINT): SIGTERM to every process, which finishes in-flight work within
WSM_SHUTDOWN_GRACE_SECONDS and exits; any still running 10 s after that is killed (its leases
run out and the reaper hands its conversations to the others). Exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from shared.backoff import backoff_step
from shared.clock import now_ms
from shared.keys import FleetKeys
from shared.metrics_setup import mark_process_dead
from shared.periodic import sleep_unless
from shared.queue_stats import QueueSnapshot, read_queue_snapshot
from shared.redis_client import connect
from shared.redis_errors import REDIS_UNAVAILABLE
from shared.settings import Settings
from worker.heartbeat import beat_forever, write_beat
from worker.stopping import wait_stopped

log = logging.getLogger("wsm.worker.supervisor")

RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
# A process that ran this long before exiting was not crash-looping.
STABLE_SECONDS = 30.0
# After the grace period, how long processes get to hand back and exit before SIGKILL.
STOP_MARGIN_SECONDS = 10.0
# A scrape waits this long for Redis, then shows the last figures it read.
SNAPSHOT_TIMEOUT_SECONDS = 2.0


@dataclass
class Child:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    quick_exits: int = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


@dataclass(frozen=True, slots=True)
class FleetOptions:
    processes: int
    concurrency: int
    handler: str
    fleet_id: str
    metrics_host: str
    metrics_port: int


class Supervisor:
    def __init__(self, settings: Settings, options: FleetOptions) -> None:
        self.settings = settings
        self.options = options
        self.children = [Child(i) for i in range(options.processes)]
        self.fleet = FleetKeys(options.fleet_id, settings.key_prefix)
        self.stopping = asyncio.Event()
        self.client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_snapshot = QueueSnapshot()

    # --- running ----------------------------------------------------------------------------

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self.stopping.set)
        server = None
        if self.options.metrics_port:
            from worker.fleet_metrics import start_metrics_server

            try:
                server = start_metrics_server(
                    self.options.metrics_host, self.options.metrics_port, self.snapshot, self.alive
                )
            except OSError as exc:
                log.error(
                    "cannot serve /metrics",
                    extra={"port": self.options.metrics_port, "error": str(exc)},
                )
                return 2
        self.client = connect(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        keepers = [asyncio.create_task(self._keep_alive(child)) for child in self.children]
        stop_beat = asyncio.Event()
        beat = asyncio.create_task(
            beat_forever(
                self.client,
                self.fleet.supervisor,
                self.settings.heartbeat_interval_seconds,
                self.document,
                stop_beat,
            ),
            name="heartbeat",
        )
        log.info(
            "fleet started",
            extra={
                "processes": self.options.processes,
                "concurrency": self.options.concurrency,
                "handler": self.options.handler,
                "fleet_id": self.options.fleet_id,
                "metrics_port": self.options.metrics_port,
            },
        )

        await self.stopping.wait()
        log.info("fleet stopping")
        self._signal_all(signal.SIGTERM)
        _, pending = await asyncio.wait(
            keepers, timeout=self.settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        )
        if pending:
            log.warning("worker processes did not stop in time; killing them")
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*pending, return_exceptions=True)
        stop_beat.set()
        await wait_stopped([beat], timeout=6)
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await self.client.delete(self.fleet.supervisor)
        if server is not None:
            server.shutdown()
        await self.client.aclose()
        log.info("fleet stopped")
        return 0

    def _command(self, index: int) -> list[str]:
        return [
            sys.executable, "-m", "worker",
            "--child", str(index),
            "--supervisor-pid", str(os.getpid()),
            "--concurrency", str(self.options.concurrency),
            "--handler", self.options.handler,
            "--fleet-id", self.options.fleet_id,
        ]  # fmt: skip

    async def _keep_alive(self, child: Child) -> None:
        while not self.stopping.is_set():
            child.process = await asyncio.create_subprocess_exec(
                *self._command(child.index), stdin=subprocess.DEVNULL
            )
            child.started = time.monotonic()
            pid = child.process.pid
            if self.stopping.is_set():  # SIGTERM arrived while it was starting
                child.process.send_signal(signal.SIGTERM)
            await self._beat_now()
            code = await child.process.wait()
            child.process = None
            mark_process_dead(pid)
            if self.stopping.is_set():
                return
            lived = time.monotonic() - child.started
            child.quick_exits = child.quick_exits + 1 if lived < STABLE_SECONDS else 0
            child.restarts += 1
            # No jitter: the supervisor alone restarts its child, and the log names the delay.
            delay = backoff_step(child.quick_exits, RESTART_FIRST_SECONDS, RESTART_MAX_SECONDS)
            log.warning(
                "worker process exited; restarting",
                extra={
                    "index": child.index,
                    "pid": pid,
                    "code": code,
                    "lived": round(lived, 1),
                    "restart_in": delay,
                },
            )
            await self._beat_now()
            await sleep_unless(self.stopping, delay)

    def _signal_all(self, signum: signal.Signals) -> None:
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signum)

    # --- what the fleet tells the outside ---------------------------------------------------

    def alive(self) -> int:
        return sum(1 for c in self.children if c.process and c.process.returncode is None)

    def document(self) -> dict[str, Any]:
        """The supervisor's heartbeat (read by `wsm worker --check`)."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "processes": self.options.processes,
            "alive": self.alive(),
            "at": now_ms(),
            "children": [
                {
                    "index": c.index,
                    "pid": c.pid,
                    "restarts": c.restarts,
                    "quick_exits": c.quick_exits,
                }
                for c in self.children
            ],
        }

    async def _beat_now(self) -> None:
        """Publish a change (a process started or died) without waiting for the next beat."""
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await write_beat(
                self.client,
                self.fleet.supervisor,
                self.settings.heartbeat_interval_seconds,
                self.document(),
            )

    def snapshot(self) -> QueueSnapshot:
        """The queue's figures, read from Redis for a scrape (called on the server's thread)."""
        if self._loop is None:
            return self._last_snapshot
        future = asyncio.run_coroutine_threadsafe(
            read_queue_snapshot(self.client, self.settings.queue_shards, self.settings.key_prefix),
            self._loop,
        )
        try:
            self._last_snapshot = future.result(SNAPSHOT_TIMEOUT_SECONDS)
        except Exception as exc:
            future.cancel()
            log.warning("queue metrics not read; showing the last ones", extra={"error": str(exc)})
        return self._last_snapshot
