"""The agent inside the real engine on the real queue protocol: customer messages are queued
as the gateway queues them, claimed and acked with the fenced commit (shared.queue_consumer),
handled by the engine with the agent as its brain, and replies delivered by the engine's
sender to a WAHA stand-in (respx) answering with WAHA's shapes."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import httpx
import orjson
import respx

from engine.agent.service import AgentService, build_agent
from engine.waha_client import WahaClient
from shared.enqueue import EnqueueRequest, enqueue
from shared.envelope import decode_record
from shared.events import route_event
from shared.keys import all_shards
from shared.queue_consumer import QueueConsumer
from shared.settings import Settings
from tests.support.waha import compact, text_message

WAHA = "http://waha.test"


class WahaStandIn:
    """WAHA's send side: sendText answers 201 with the new message's id."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.sent: list[tuple[str, str]] = []
        self._n = itertools.count()
        router.post(f"{WAHA}/api/sendText").mock(side_effect=self._send)
        for path in ("sendSeen", "startTyping", "stopTyping"):
            router.post(f"{WAHA}/api/{path}").mock(return_value=httpx.Response(201, json={}))

    def _send(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        wa_id = f"true_{body['chatId']}_3EB0{next(self._n):016X}"
        self.sent.append((body["chatId"], body["text"]))
        return httpx.Response(201, json={"id": wa_id, "body": body["text"], "fromMe": True})

    def to(self, chat: str) -> list[str]:
        return [text for c, text in self.sent if c == chat]


class _Ctx:
    def __init__(self, consumer: QueueConsumer, lease: Any, message_id: str) -> None:
        self.consumer, self.lease, self.message_id = consumer, lease, message_id
        self.committed = False

    async def commit(self, writes: Iterable[Sequence[Any]] = ()) -> None:
        await self.consumer.ack(self.lease, self.message_id, list(writes))  # type: ignore[arg-type]
        self.committed = True


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
        document = text_message(chat, text)
        body = compact(document)
        routed = route_event(orjson.loads(body), body)
        assert routed is not None
        request = EnqueueRequest.for_event(
            routed, body, received_at_ms=1, shards=self.settings.queue_shards,
            dedupe_ttl_seconds=600, prefix=self.settings.key_prefix,
        )  # fmt: skip
        assert await enqueue(self.redis, request)
        await self.drain()

    async def drain(self) -> None:
        engine = self.service.engine
        for shard in all_shards(self.settings.queue_shards, self.settings.key_prefix):
            while (token := await self.consumer.pop_ready(shard)) is not None:
                lease = await self.consumer.claim(shard, token, uuid.uuid4().hex)
                if lease is None:
                    continue
                for message in lease.messages:
                    assert message.record is not None
                    ctx = _Ctx(self.consumer, lease, message.id)
                    await engine.engine(decode_record(message.record), ctx)
                    if not ctx.committed:
                        await ctx.commit([])
                await self.consumer.release(lease)
        await engine.sender.sweep_once()
        await engine.sender.drain()

    async def aclose(self) -> None:
        await self.service.aclose()
