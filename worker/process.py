"""One worker process of the fleet: C consumer slots, the reaper and a heartbeat, on uvloop.

SIGTERM (or SIGINT): stop claiming; conversations claimed but not started are handed back at
once (front of the line); messages being handled get WSM_SHUTDOWN_GRACE_SECONDS to finish and
commit; whatever still runs then is cancelled and handed back too. Exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

import uvloop

from shared.backoff import Backoff
from shared.clock import now_ms
from shared.dead_letters import DeadLetterLimits
from shared.heap import settle_heap
from shared.keys import FleetKeys, all_shards
from shared.logs import setup_logging
from shared.parent_death import signal_on_parent_death
from shared.periodic import sleep_unless
from shared.queue_consumer import QueueConsumer
from shared.redis_client import RedisClient, connect, ensure_supported_server
from shared.redis_errors import REDIS_UNAVAILABLE, RETRY_CAP_SECONDS
from shared.settings import Settings
from worker.consumer_slot import BLOCK_SECONDS, HAND_BACK_SECONDS, ConsumerSlot
from worker.handler import (
    HandlerLoadError,
    HandlerSetup,
    close_handler,
    load_handler,
    start_handler,
)
from worker.heartbeat import beat_forever
from worker.reaper_task import make_reaper, reap_forever
from worker.stopping import wait_stopped

log = logging.getLogger("wsm.worker.process")

# Scripts answer in microseconds; a reply that takes longer than this means Redis is gone
# (a partition sends no RST), and BLMOVE's own wait must fit inside it.
SOCKET_TIMEOUT_SECONDS = BLOCK_SECONDS + 5
# A handler's aclose() (its own background work, its HTTP clients) gets this long at shutdown.
CLOSE_HANDLER_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ProcessOptions:
    index: int
    concurrency: int
    handler: str
    fleet_id: str
    supervisor_pid: int | None = None


def die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so no orphan keeps a half-fleet running."""
    if parent_pid is None:
        return
    signal_on_parent_death(signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def connect_when_ready(settings: Settings, stopping: asyncio.Event) -> RedisClient | None:
    """A client to a server that answered and is new enough; waits out an absent Redis."""
    backoff = Backoff(first=0.2, cap=RETRY_CAP_SECONDS)
    while not stopping.is_set():
        client = connect(
            settings.redis_url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=5,
        )
        try:
            await ensure_supported_server(client)
            return client
        except REDIS_UNAVAILABLE as exc:
            await client.aclose()
            delay = backoff.next_delay()
            log.warning("redis unreachable at start", extra={"error": str(exc), "retry_in": delay})
            await sleep_unless(stopping, delay)
    return None


async def leave_blocking_claims(
    slots: list[ConsumerSlot], slot_tasks: list[asyncio.Task[None]]
) -> None:
    """Let the idle slots leave their BLMOVE by themselves (within BLOCK_SECONDS) before the
    busy ones are cancelled and hand their conversations back.

    A BLMOVE cancelled here only drops its connection, and Redis may read the hand-back (on
    another connection) before it notices: it would then serve the dropped BLMOVE with the
    handed-back conversation, which would sit in `claimed` until the reaper finds it. A slot
    whose BLMOVE has returned has nothing left blocked on the server. (Only a grace period
    shorter than BLOCK_SECONDS finds idle slots still waiting.)
    """
    idle = [
        task for task, slot in zip(slot_tasks, slots, strict=True)
        if not task.done() and not slot.handling
    ]  # fmt: skip
    if idle:
        await asyncio.wait(idle, timeout=BLOCK_SECONDS + 1)


def start_background(
    client: RedisClient,
    settings: Settings,
    options: ProcessOptions,
    fleet: FleetKeys,
    slots: list[ConsumerSlot],
    owner: str,
    stop: asyncio.Event,
) -> list[asyncio.Task[None]]:
    """The process's heartbeat and its share of the reaper."""
    started_at = now_ms()

    def beat() -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "index": options.index,
            "host": socket.gethostname(),
            "started": started_at,
            "at": now_ms(),
            "inflight": sum(slot.handling for slot in slots),
        }

    interval = settings.reaper_interval_seconds
    reaper = make_reaper(
        client,
        max_attempts=settings.max_attempts,
        interval=interval,
        dead_letters=DeadLetterLimits.from_settings(settings),
    )
    shards = all_shards(settings.queue_shards, settings.key_prefix)
    return [
        asyncio.create_task(
            beat_forever(
                client,
                fleet.process(options.index),
                settings.heartbeat_interval_seconds,
                beat,
                stop,
            ),
            name="heartbeat",
        ),
        asyncio.create_task(reap_forever(reaper, shards, interval, owner, stop), name="reaper"),
    ]


async def serve(settings: Settings, options: ProcessOptions) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    client = await connect_when_ready(settings, stopping)
    if client is None:
        return 0
    # The slots' blocking claims get a pool of their own, one connection each (plus one for a
    # connection being replaced): a slot parked in BLMOVE then never holds a connection the
    # handlers' commits, reads and sends need from `client`'s pool (which waits, not fails,
    # when it is exhausted: shared/redis_client.py).
    claims = connect(
        settings.redis_url,
        max_connections=options.concurrency + 1,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=5,
    )
    setup = HandlerSetup(settings, client, options.index, options.fleet_id)
    handler = await load_handler(options.handler, setup)
    await start_handler(handler)
    consumer = QueueConsumer(
        client,
        lease_ms=int(settings.lease_seconds * 1000),
        batch=settings.claim_batch,
        max_attempts=settings.max_attempts,
        backoff_ms=int(settings.retry_backoff_seconds * 1000),
        backoff_max_ms=int(settings.retry_backoff_max_seconds * 1000),
        dead_letters=DeadLetterLimits.from_settings(settings),
        blocking_client=claims,
    )
    shards = all_shards(settings.queue_shards, settings.key_prefix)
    owner = f"{options.fleet_id}:{options.index}:{os.getpid()}"
    slots = [
        ConsumerSlot(
            consumer=consumer,
            handler=handler,
            shards=shards,
            # Spread the home shards over the whole fleet, not just this process.
            home=options.index * options.concurrency + n,
            owner=f"{owner}:{n}",
            stopping=stopping,
            handler_timeout=settings.handler_timeout_seconds,
        )
        for n in range(options.concurrency)
    ]
    # Everything lasting is built (the handler, its clients, the slots): out of the collector's
    # sight from here on.
    settle_heap()
    slot_tasks = [asyncio.create_task(slot.run(), name=f"slot-{n}") for n, slot in enumerate(slots)]
    fleet = FleetKeys(options.fleet_id, settings.key_prefix)
    stop_background = asyncio.Event()
    background = start_background(client, settings, options, fleet, slots, owner, stop_background)
    log.info(
        "worker process started",
        extra={"index": options.index, "concurrency": options.concurrency, "shards": len(shards)},
    )

    await stopping.wait()
    log.info("stopping: no new claims; letting in-flight messages finish")
    _, unfinished = await asyncio.wait(slot_tasks, timeout=settings.shutdown_grace_seconds)
    if unfinished:
        await leave_blocking_claims(slots, slot_tasks)
        unfinished = {task for task in slot_tasks if not task.done()}
    if unfinished:
        log.warning(
            "grace period over; handing back unfinished work", extra={"unfinished": len(unfinished)}
        )
        for task in unfinished:
            task.cancel()
        # A slot that survives its cancel (see worker/stopping.py) still stops: `stopping` is set.
        await wait_stopped(unfinished, HAND_BACK_SECONDS + 1)
    stop_background.set()
    await wait_stopped(background, SOCKET_TIMEOUT_SECONDS)
    with contextlib.suppress(*REDIS_UNAVAILABLE):
        await client.delete(fleet.process(options.index))
    await wait_stopped(
        [asyncio.create_task(close_handler(handler), name="close-handler")], CLOSE_HANDLER_SECONDS
    )
    await claims.aclose()
    await client.aclose()
    log.info("worker process stopped", extra={"index": options.index})
    return 0


def run_process(settings: Settings, options: ProcessOptions) -> int:
    setup_logging(settings.log_level)
    die_with_parent(options.supervisor_pid)
    try:
        return uvloop.run(serve(settings, options))
    except HandlerLoadError as exc:
        log.error("cannot start: %s", exc)
        return 3
