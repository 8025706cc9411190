"""Redis memory per idle conversation, and one long conversation's memory over time.

    python3 bench/memory_bench.py [--conversations 20000] [--soak-messages 10000]
                                  [--history-max 1000]

Starts a private redis-server (no persistence) and drives the real engine path in this process:
each event is queued as the gateway queues it (shared.enqueue), claimed and acked with the
worker's fenced commit (shared.queue_consumer), handled by the conversation engine
(engine.service.EngineService) and its replies delivered by the engine's sender to an in-process
WAHA stand-in (no HTTP: the cheapest way to make many conversations through the real code).

1. Idle conversations: each of `--conversations` customers writes "oi", gets the menu, and goes
   quiet. Reports INFO memory `used_memory` per conversation, and MEMORY USAGE per key family
   (sampled) so the figure can be read: what is per conversation for the retention, what goes
   with its TTL (dedupe markers, ids of our sends).
2. Soak: one customer writes `--soak-messages` messages; the engine's maintenance pass (every
   10 s in a worker, here every 100 messages) applies the history's length cap
   (WSM_HISTORY_MAX_MESSAGES = `--history-max`). Prints used_memory every 1,000 messages.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.identity import Conversation  # noqa: E402
from engine.service import EngineService  # noqa: E402
from engine.waha_client import SentMessage  # noqa: E402
from shared.embedded_redis import EmbeddedRedis  # noqa: E402
from shared.enqueue import enqueue_many  # noqa: E402
from shared.redis_client import connect  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.engine.harness import Harness  # noqa: E402

PREFIX = "wsm"


class InProcessWaha:
    """WAHA's send side answering at once, with WAHA-shaped ids (engine.waha_client.Outbound)."""

    def __init__(self) -> None:
        self._n = itertools.count()
        self.sent = 0

    async def send_seen(self, session: str, chat_id: str) -> None:
        return None

    async def start_typing(self, session: str, chat_id: str) -> None:
        return None

    async def stop_typing(self, session: str, chat_id: str) -> None:
        return None

    async def send_text(self, session: str, chat_id: str, text: str) -> SentMessage:
        self.sent += 1
        return SentMessage(f"true_{chat_id}_3EB0{next(self._n):016X}")

    async def phone_for_lid(self, session: str, lid: str) -> str | None:
        return None

    async def session_status(self, session: str) -> str | None:
        return "WORKING"

    async def aclose(self) -> None:
        return None


def message_body(chat: str, text: str) -> bytes:
    """A `message` event shaped like WAHA 2025.11's (GOWS)."""
    now = time.time()
    return orjson.dumps(
        {
            "id": "evt_" + uuid.uuid4().hex[:26],
            "timestamp": int(now * 1000),
            "event": "message",
            "session": "default",
            "me": {"id": "5511930000002@c.us", "pushName": "Clínica"},
            "payload": {
                "id": f"false_{chat}_{uuid.uuid4().hex[:20].upper()}",
                "timestamp": int(now),
                "from": chat,
                "fromMe": False,
                "source": "app",
                "body": text,
                "hasMedia": False,
                "ack": 2,
                "ackName": "DEVICE",
            },
            "engine": "GOWS",
        }
    )


class Driver(Harness):
    """The tests' engine harness (tests/engine/harness.py) with the in-process WAHA: events
    queued as the gateway queues them, handled through the fenced commit, replies delivered."""

    def __init__(self, redis: Any, settings: Settings) -> None:
        self.waha = InProcessWaha()
        super().__init__(redis, settings, EngineService(redis, settings, outbound=self.waha))

    async def queue_many(self, messages: list[tuple[str, str]]) -> None:
        requests = [
            self.request(
                message_body(chat, text),
                received_at_ms=int(time.time() * 1000),
                dedupe_ttl_seconds=self.settings.dedupe_ttl_seconds,
            )
            for chat, text in messages
        ]
        await enqueue_many(self.redis, requests)

    async def handle_and_deliver(self) -> int:
        """Handle everything queued through the fenced commit, then deliver the outboxes."""
        _, handled = await self.handle_queued()
        while await self.service.sender.sweep_once(limit=1000):
            await self.service.sender.drain()
        await self.service.sender.drain()
        return handled


async def used_memory(redis: Any) -> int:
    return int((await redis.info("memory"))["used_memory"])


def family(key: str) -> str:
    """A key's family: its name with the conversation, session and ids taken out."""
    parts = key.split(":")
    if ":c:" in key:  # per conversation: P:{qn}:c:<session>|<chat>:<kind>
        return "conversation " + parts[-1]
    if ":seen:" in key:
        return "dedupe marker (TTL)"
    if ":ours:" in key:
        return "id of our send (TTL)"
    return ":".join(p for p in parts[1:3] if p)


async def families(redis: Any, sample: int = 200) -> list[tuple[str, int, int]]:
    """(family, keys, bytes estimated from MEMORY USAGE of up to `sample` keys each)."""
    keys: dict[str, list[str]] = collections.defaultdict(list)
    async for raw in redis.scan_iter(match=f"{PREFIX}:*", count=5000):
        key = raw.decode()
        keys[family(key)].append(key)
    rows = []
    for name, members in keys.items():
        measured = [int(await redis.memory_usage(k) or 0) for k in members[:sample]]
        rows.append((name, len(members), sum(measured) * len(members) // max(1, len(measured))))
    return sorted(rows, key=lambda r: -r[2])


async def idle_conversations(redis: Any, settings: Settings, count: int, batch: int) -> None:
    driver = Driver(redis, settings)
    before = await used_memory(redis)
    started = time.monotonic()
    for first in range(0, count, batch):
        chats = [f"55119{n:08d}@c.us" for n in range(first, min(count, first + batch))]
        await driver.queue_many([(chat, "oi") for chat in chats])
        await driver.handle_and_deliver()
    elapsed = time.monotonic() - started
    after = await used_memory(redis)
    print(
        f"{count} idle conversations in {elapsed:.0f} s ({driver.waha.sent} replies sent); "
        f"used_memory {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB: "
        f"{(after - before) / count:.0f} bytes per conversation"
    )
    print(f"{'key family':<34} {'keys':>8} {'MiB':>8} {'bytes/conv':>10}")
    for name, keys, size in await families(redis):
        print(f"{name:<34} {keys:>8} {size / 2**20:>8.1f} {size / count:>10.0f}")
    await driver.service.aclose()


async def soak(redis: Any, settings: Settings, messages: int) -> None:
    driver = Driver(redis, settings)
    chat = "5511999990000@c.us"
    print(
        f"soak: one chat, {messages} messages, WSM_HISTORY_MAX_MESSAGES="
        f"{settings.history_max_messages}, maintenance every 100 messages"
    )
    print(
        f"{'messages':>8} {'used_memory MiB':>16} {'chat keys KiB':>14} "
        f"{'hist entries':>13} "
        f"{'meta fields':>12} {'TTL keys':>9}"
    )
    conv_keys = driver.service.engine.keys(Conversation("default", chat))
    own = [conv_keys.state, conv_keys.history, conv_keys.history_meta, conv_keys.outbox]
    started = time.monotonic()
    for n in range(1, messages + 1):
        await driver.queue_many([(chat, f"mensagem {n}")])
        await driver.handle_and_deliver()
        if n % 100 == 0:
            await driver.service.maintenance_once(force=True)
        if n % 1000 == 0:
            chat_bytes = sum([int(await redis.memory_usage(k) or 0) for k in own])
            ttl_keys = int((await redis.info("keyspace")).get("db0", {}).get("expires", 0))
            print(
                f"{n:>8} {await used_memory(redis) / 2**20:>16.2f} "
                f"{chat_bytes / 1024:>14.1f} "
                f"{await redis.xlen(conv_keys.history):>13} "
                f"{await redis.hlen(conv_keys.history_meta):>12} {ttl_keys:>9}"
            )
    dropped = await redis.hget(f"{PREFIX}:{{eng}}:dropped", "history_entries")
    print(
        f"{messages} messages in {time.monotonic() - started:.0f} s; history entries dropped by "
        f"the length cap (counted in {{eng}}:dropped): {int(dropped or 0)}"
    )
    await driver.service.aclose()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp), appendonly=False, extra_args=args.redis_arg)
        server.start()
        try:
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None,
                redis_url=server.url,
                key_prefix=PREFIX,
                waha_url="http://waha.invalid",
                typing_delay_max_ms=0,
                sends_per_second_per_session=0,
                history_max_messages=args.history_max,
            )
            redis = connect(server.url)
            version = (await redis.info("server"))["redis_version"]
            print(f"Redis {version}, {settings.queue_shards} shard(s), args {args.redis_arg}")
            if args.conversations:
                await idle_conversations(redis, settings, args.conversations, args.batch)
            if args.soak_messages:
                await redis.flushall()
                await soak(redis, settings, args.soak_messages)
            await redis.aclose()
        finally:
            server.stop()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the per-pass "dropped" warnings: counted below
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--soak-messages", type=int, default=10_000)
    parser.add_argument("--history-max", type=int, default=1000)
    parser.add_argument(
        "--redis-arg",
        action="append",
        default=[],
        help="extra redis-server argument, e.g. --redis-arg=--stream-node-max-bytes=1024",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
