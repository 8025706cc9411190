"""Helpers of the worker tests: queue messages the way the gateway does, run real fleets, read
what the handlers recorded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shared.embedded_redis import free_port
from shared.enqueue import EnqueueRequest, enqueue_many
from shared.events import route_event
from shared.keys import ConversationKeys, FleetKeys, ShardKeys, conversation_token, shard_of
from tests.support.polling import async_wait_until
from tests.support.waha import compact, text_message

REPO = Path(__file__).resolve().parents[3]
SESSION = "default"
# The handler the tests script through the message text (tests/worker/support/handlers.py).
SCRIPTED = "tests.worker.support.handlers:scripted"

# Short clocks so crash tests finish in seconds; see docs/architecture.md for the defaults.
FAST_SETTINGS = {
    "WSM_LEASE_SECONDS": "2",
    "WSM_REAPER_INTERVAL": "0.25",
    "WSM_HEARTBEAT_INTERVAL": "0.3",
    "WSM_RETRY_BACKOFF_SECONDS": "0.05",
    "WSM_RETRY_BACKOFF_MAX_SECONDS": "0.2",
    "WSM_MAX_ATTEMPTS": "3",
    "WSM_SHUTDOWN_GRACE_SECONDS": "15",
    "WSM_LOG_LEVEL": "WARNING",
}


def chat_id(n: int) -> str:
    return f"55119{n:08d}@c.us"


def conversation(chat: str, prefix: str, shards: int = 1) -> ConversationKeys:
    token = conversation_token(SESSION, chat)
    return ShardKeys(shard_of(token, shards), prefix).conversation(token)


def text_request(
    chat: str, text: str, prefix: str, *, shards: int = 1, received_at_ms: int = 0
) -> tuple[str, EnqueueRequest]:
    """A WAHA text message from `chat`, routed and made ready to queue as the gateway's webhook
    does; with its event id. The benchmarks queue theirs with this too."""
    body = compact(text_message(chat, text, session=SESSION))
    routed = route_event(orjson.loads(body), body)
    assert routed is not None
    request = EnqueueRequest.for_event(
        routed,
        body,
        received_at_ms=received_at_ms,
        shards=shards,
        dedupe_ttl_seconds=3600,
        prefix=prefix,
    )
    return routed.event_id, request


async def enqueue_texts(
    client: Any, prefix: str, texts: Mapping[str, list[str]], shards: int = 1
) -> dict[str, list[str]]:
    """Queue each chat's texts through the gateway's enqueue path, chats interleaved as they
    would arrive; returns each chat's event ids in the order sent."""
    sent: dict[str, list[str]] = {chat: [] for chat in texts}
    requests: list[EnqueueRequest] = []
    for n in range(max((len(t) for t in texts.values()), default=0)):
        for chat, chat_texts in texts.items():
            if n < len(chat_texts):
                event_id, request = text_request(chat, chat_texts[n], prefix, shards=shards)
                sent[chat].append(event_id)
                requests.append(request)
    for i in range(0, len(requests), 500):
        assert all(await enqueue_many(client, requests[i : i + 500]))
    return sent


async def handled_ids(client: Any, chat: str, prefix: str, shards: int = 1) -> list[str]:
    """Ids the recording handler committed for `chat`, in commit order."""
    entries = await client.lrange(conversation(chat, prefix, shards).handled, 0, -1)
    return [orjson.loads(entry)["id"] for entry in entries]


async def read_test_log(client: Any, prefix: str, name: str) -> list[dict[str, Any]]:
    return [orjson.loads(e) for e in await client.lrange(f"{prefix}:test:{name}", 0, -1)]


async def wait_all_handled(
    client: Any, sent: Mapping[str, list[str]], prefix: str, shards: int = 1, timeout: float = 60
) -> dict[str, list[str]]:
    """Each chat's committed ids once every chat has at least as many as were sent.

    Polls the lists' lengths only (one pipeline), then reads them once.
    """
    chats = list(sent)
    keys = [conversation(chat, prefix, shards).handled for chat in chats]

    async def complete() -> bool:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        lengths = await pipe.execute()
        return all(n >= len(sent[chat]) for chat, n in zip(chats, lengths, strict=True))

    await async_wait_until(complete, timeout=timeout, interval=0.05, what="all handled")
    return {chat: await handled_ids(client, chat, prefix, shards) for chat in chats}


@dataclass
class Fleet:
    """A real `python -m worker` supervisor and its processes."""

    process: subprocess.Popen[bytes]
    prefix: str
    fleet_id: str
    metrics_port: int
    env: dict[str, str]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> FleetKeys:
        return FleetKeys(self.fleet_id, self.prefix)

    async def supervisor(self, client: Any) -> dict[str, Any] | None:
        raw = await client.get(self.keys.supervisor)
        return None if raw is None else orjson.loads(raw)

    async def child_pids(self, client: Any) -> dict[int, int]:
        """index -> pid of every process whose heartbeat is written by its current process."""
        document = await self.supervisor(client)
        if document is None:
            return {}
        pids: dict[int, int] = {}
        for child in document["children"]:
            beat = await client.get(self.keys.process(child["index"]))
            if child["pid"] and beat and orjson.loads(beat)["pid"] == child["pid"]:
                pids[child["index"]] = child["pid"]
        return pids

    async def wait_running(
        self, client: Any, processes: int, timeout: float = 30
    ) -> dict[int, int]:
        async def up() -> dict[int, int] | None:
            assert self.process.poll() is None, self.tail()
            pids = await self.child_pids(client)
            return pids if len(pids) == processes else None

        return await async_wait_until(up, timeout=timeout, what="fleet running")

    def terminate(self, timeout: float = 40) -> int:
        """SIGTERM and the exit status; fails if a worker process had to be killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        assert "worker processes did not stop in time" not in self.tail(20_000), self.tail()
        return code

    def tail(self, size: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


def fleet_environment(redis_url: str, prefix: str, extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WSM_") and k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env |= FAST_SETTINGS | {"REDIS_URL": redis_url, "WSM_KEY_PREFIX": prefix}
    env |= dict(extra)
    return env


@contextlib.contextmanager
def running_fleet(
    redis_url: str,
    prefix: str,
    workdir: Path,
    *,
    processes: int,
    concurrency: int,
    # Explicit, not the product's default (the conversation engine): these tests are about
    # the queue, and the recording handler shows exactly what was handled.
    handler: str | None = "worker.handlers.recording:record",
    settings: Mapping[str, str] | None = None,
) -> Iterator[Fleet]:
    """A fleet in `workdir` (no developer .env is read there); SIGKILLed if a test leaves it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    fleet_id = f"{prefix}-fleet"
    env = fleet_environment(
        redis_url,
        prefix,
        {"WSM_WORKER_METRICS_DIR": str(workdir / "metrics")} | dict(settings or {}),
    )
    argv = [
        sys.executable, "-m", "worker",
        "--processes", str(processes),
        "--concurrency", str(concurrency),
        "--metrics-port", str(port),
        "--fleet-id", fleet_id,
    ]  # fmt: skip
    if handler:
        argv += ["--handler", handler]
    log = workdir / "fleet.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=out)
    fleet = Fleet(process, prefix, fleet_id, port, env, log)
    try:
        yield fleet
    finally:
        if process.poll() is None:
            # Kill the whole group of processes the test may have left behind.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def scripted_fleet(
    redis_url: str, prefix: str, workdir: Path, *, processes: int, concurrency: int, **settings: str
) -> contextlib.AbstractContextManager[Fleet]:
    """running_fleet with the handler the tests script through each message's text (SCRIPTED),
    `settings` (WSM_* variables) over the fast ones."""
    return running_fleet(
        redis_url,
        prefix,
        workdir,
        processes=processes,
        concurrency=concurrency,
        handler=SCRIPTED,
        settings=settings,
    )


def run_wsm(args: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m wsm <args>` (the `wsm` command) with a fleet's environment."""
    return subprocess.run(
        [sys.executable, "-m", "wsm", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
