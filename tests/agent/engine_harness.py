"""The agent inside the real engine on the real queue protocol: customer messages are queued
as the gateway queues them, claimed and acked with the fenced commit (shared.queue_consumer),
handled by the engine with the agent as its brain, and replies delivered by the engine's
sender to a WAHA stand-in (respx) answering with WAHA's shapes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from engine.agent.service import AgentService, build_agent
from engine.waha_client import WahaClient
from shared.enqueue import EnqueueRequest, enqueue
from shared.envelope import decode_record
from shared.events import route_event
from shared.keys import all_shards
from shared.queue_consumer import QueueConsumer
from shared.settings import Settings
from tests.engine.harness import WAHA, Ctx
from tests.support.waha import compact, text_message


class AgentHarness:
    def __init__(self, redis: Any, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.redis = redis
        self.settings = settings
        self.parts = build_agent(redis, settings, clock=clock)
        self.service = AgentService(redis, settings, outbound=WahaClient(WAHA), parts=self.parts)
        self.consumer = QueueConsumer(
            redis, lease_ms=30_000, batch=10, max_attempts=5, backoff_ms=1, backoff_max_ms=2
        )

    async def say(self, chat: str, text: str) -> None:
        """The customer writes; the engine handles it and the reply reaches WAHA."""
        assert await self.queue(chat, text)
        await self.drain()

    async def queue(self, chat: str, text: str, *, message_id: str | None = None) -> bool:
        """The customer's message is queued as the gateway queues it (not handled yet);
        False when the queue's dedupe refused it."""
        document = text_message(chat, text, message_id=message_id)
        body = compact(document)
        routed = route_event(orjson.loads(body), body)
        assert routed is not None
        request = EnqueueRequest.for_event(
            routed, body, received_at_ms=1, shards=self.settings.queue_shards,
            dedupe_ttl_seconds=600, prefix=self.settings.key_prefix,
        )  # fmt: skip
        return await enqueue(self.redis, request)

    async def drain(self) -> None:
        engine = self.service.engine
        for shard in all_shards(self.settings.queue_shards, self.settings.key_prefix):
            while (token := await self.consumer.pop_ready(shard)) is not None:
                lease = await self.consumer.claim(shard, token, uuid.uuid4().hex)
                if lease is None:
                    continue
                for message in lease.messages:
                    assert message.record is not None
                    ctx = Ctx(self.consumer, lease, message.id)
                    await engine.engine(decode_record(message.record), ctx)
                    if not ctx.committed:
                        await ctx.commit([])
                await self.consumer.release(lease)
        await engine.sender.sweep_once()
        await engine.sender.drain()

    async def aclose(self) -> None:
        await self.service.aclose()
