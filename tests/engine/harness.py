"""Driving the engine through the real queue protocol, without the fleet: events are queued as
the gateway queues them, claimed and acked with shared.queue_consumer (the fenced commit), and
WAHA is a respx stand-in answering with WAHA's status codes and shapes.

`Harness` runs the engine with its plain menu brain; `AgentHarness` the product's handler, the
engine with the AI agent as its brain (engine.agent.service.build_service). `apply_writes`
applies commit writes outside a handler, for tests that set up a conversation's keys."""

from __future__ import annotations

import itertools
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from engine.agent.service import build_agent, build_service
from engine.service import EngineService
from engine.waha_client import WahaClient
from shared.enqueue import EnqueueRequest, enqueue
from shared.envelope import decode_record
from shared.events import route_event
from shared.keys import all_shards, engine_keys_for
from shared.queue_consumer import Prelude, QueueConsumer
from shared.queue_errors import LeaseLost
from shared.redis_client import RedisClient
from shared.settings import Settings
from tests.support.waha import compact, text_message

WAHA = "http://waha.test"


def settings_for(prefix: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "waha_url": WAHA,
        "typing_delay_max_ms": 0,
        "sends_per_second_per_session": 0,
        "send_retry_base_ms": 1,
        "send_retry_max_ms": 2,
        "position_notice_interval_seconds": 0,
        "conversations_per_agent": 1,
        # Never the default var/media of the folder the tests run in.
        "media_dir": Path(tempfile.gettempdir()) / f"wsm-test-media-{prefix}",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def mock_courtesy(router: Any = respx) -> None:
    """WAHA's courtesy calls around a send (seen, typing on and off) answered 201, on `router`
    or on respx's global router (tests under `@respx.mock`)."""
    for path in ("sendSeen", "startTyping", "stopTyping"):
        router.post(f"{WAHA}/api/{path}").mock(return_value=httpx.Response(201, json={}))


def texts_sent(route: respx.Route) -> list[str]:
    """The texts a respx route was asked to send, in order."""
    return [orjson.loads(c.request.content)["text"] for c in route.calls]


class FakeWaha:
    """WAHA's send side: 201 with a message id for sendText; failures on demand."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.sent: list[tuple[str, str]] = []  # (chat, text)
        self.ids: list[str] = []
        self.failures: list[httpx.Response] = []
        self._n = itertools.count()
        router.post(f"{WAHA}/api/sendText").mock(side_effect=self._send)
        mock_courtesy(router)
        router.get(url__regex=rf"{WAHA}/api/.+/lids/.+").mock(
            return_value=httpx.Response(200, json={"lid": "x@lid", "pn": None})
        )

    def _send(self, request: httpx.Request) -> httpx.Response:
        if self.failures:
            return self.failures.pop(0)
        body = orjson.loads(request.content)
        wa_id = f"true_{body['chatId']}_3EB0{next(self._n):016X}"
        self.sent.append((body["chatId"], body["text"]))
        self.ids.append(wa_id)
        return httpx.Response(201, json={"id": wa_id, "body": body["text"], "fromMe": True})

    def to(self, chat: str) -> list[str]:
        return [text for c, text in self.sent if c == chat]


class Ctx:
    def __init__(self, consumer: QueueConsumer, lease: Any, message_id: str) -> None:
        self.consumer, self.lease, self.message_id = consumer, lease, message_id
        self.committed = False

    async def commit(
        self, writes: Iterable[Sequence[Any]] = (), *, prelude: Prelude | None = None
    ) -> None:
        await self._ack(writes, prelude)

    async def commit_later(
        self,
        writes: Iterable[Sequence[Any]] = (),
        *,
        prelude: Prelude | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """At once here: the harness has no turn to ride with (the worker's is tested in
        tests/worker/test_ack_later.py)."""
        await self._ack(writes, prelude)
        if then is not None:
            then()

    async def _ack(self, writes: Iterable[Sequence[Any]], prelude: Prelude | None) -> None:
        await self.consumer.ack(self.lease, self.message_id, list(writes), prelude=prelude)  # type: ignore[arg-type]
        self.committed = True


class _FencedOutCtx(Ctx):
    """A handler context whose commits the queue refuses, as it refuses a fenced-out worker's."""

    async def _ack(self, writes: Iterable[Sequence[Any]], prelude: Prelude | None) -> None:
        raise LeaseLost("taken over")


async def apply_writes(redis: RedisClient, writes: Sequence[Sequence[Any]]) -> None:
    """Apply commit writes `(COMMAND, key, *args)` in one MULTI/EXEC: for setting keys up
    outside a handler. The engine never does this: its writes go through the fenced commit."""
    if not writes:
        return
    pipe = redis.pipeline(transaction=True)
    for item in writes:
        pipe.execute_command(*item)
    await pipe.execute()


class Harness:
    def __init__(
        self, redis: Any, settings: Settings, service: EngineService | None = None
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.service = service or EngineService(redis, settings, outbound=WahaClient(WAHA))
        self.consumer = QueueConsumer(
            redis, lease_ms=30_000, batch=10, max_attempts=5, backoff_ms=1, backoff_max_ms=2
        )

    def request(
        self, body: bytes, *, received_at_ms: int = 1, dedupe_ttl_seconds: int = 600
    ) -> EnqueueRequest:
        """The gateway's enqueue request for a WAHA webhook body."""
        routed = route_event(orjson.loads(body), body)
        assert routed is not None
        return EnqueueRequest.for_event(
            routed, body, received_at_ms=received_at_ms, shards=self.settings.queue_shards,
            dedupe_ttl_seconds=dedupe_ttl_seconds, prefix=self.settings.key_prefix,
        )  # fmt: skip

    async def webhook(self, document: dict[str, Any]) -> bool:
        """Queue a WAHA webhook body as the gateway does; False when it was a duplicate."""
        return await enqueue(self.redis, self.request(compact(document)))

    async def say(self, chat: str, text: str) -> None:
        """The customer writes; the engine handles it and the reply reaches WAHA."""
        assert await self.queue(chat, text)
        await self.drain()

    async def queue(self, chat: str, text: str, *, message_id: str | None = None) -> bool:
        """The customer's message is queued as the gateway queues it (not handled yet);
        False when the queue's dedupe refused it."""
        return await self.webhook(text_message(chat, text, message_id=message_id))

    async def handle_queued(self) -> tuple[int, int]:
        """One pass over the shards: claim, handle and commit (fenced) what is ready, as a
        worker does; (leases taken, messages handled). Deliveries are left to the sender."""
        leases = handled = 0
        for shard in all_shards(self.settings.queue_shards, self.settings.key_prefix):
            while (token := await self.consumer.pop_ready(shard)) is not None:
                lease = await self.consumer.claim(shard, token, uuid.uuid4().hex)
                if lease is None:
                    continue
                for message in lease.messages:
                    assert message.record is not None
                    ctx = Ctx(self.consumer, lease, message.id)
                    await self.service.engine(decode_record(message.record), ctx)
                    if not ctx.committed:
                        await ctx.commit([])
                    handled += 1
                await self.consumer.release(lease)
                leases += 1
        return leases, handled

    async def handle_fenced_out(self, session: str, chat: str) -> None:
        """The conversation's next queued message handled by a worker whose fenced commit is
        refused (fenced out, or killed before committing): the handler meets LeaseLost and
        the lease is released with nothing committed, so the message is delivered again."""
        keys = engine_keys_for(session, chat, self.settings.queue_shards, self.settings.key_prefix)
        shard = keys.conversation.shard_keys
        token = await self.consumer.pop_ready(shard)
        assert token is not None
        lease = await self.consumer.claim(shard, token, "first")
        assert lease is not None
        message = lease.messages[0]
        assert message.record is not None
        with pytest.raises(LeaseLost):
            ctx = _FencedOutCtx(self.consumer, lease, message.id)
            await self.service.engine(decode_record(message.record), ctx)
        await self.consumer.release(lease)

    async def drain(self, *, deliver: bool = True) -> int:
        """Handle everything queued (commands included), then deliver the outboxes."""
        handled = 0
        for _ in range(100):
            progressed, messages = await self.handle_queued()
            handled += messages
            if deliver:
                await self.service.sender.sweep_once()
                await self.service.sender.drain()
            if not progressed:
                return handled
        raise AssertionError("queue did not drain")

    async def aclose(self) -> None:
        await self.service.aclose()


class AgentHarness(Harness):
    """The product's handler: the engine with the AI agent (its parts in `parts`)."""

    def __init__(self, redis: Any, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.parts = build_agent(redis, settings, clock=clock)
        outbound = WahaClient(WAHA)
        super().__init__(
            redis, settings, build_service(redis, settings, outbound=outbound, agent=self.parts)
        )


def session_status(session: str, status: str) -> dict[str, Any]:
    """A `session.status` event shaped like session-status.json."""
    return {
        "id": "evt_" + uuid.uuid4().hex[:26],
        "event": "session.status",
        "session": session,
        "me": {"id": "5511930000002@c.us", "pushName": "Clínica"},
        "payload": {"status": status, "statuses": [{"status": status, "timestamp": 1}]},
        "engine": "GOWS",
        "environment": {"version": "2025.11.2", "engine": "GOWS", "tier": "PLUS"},
    }
