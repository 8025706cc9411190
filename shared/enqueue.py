"""The enqueue side of the per-conversation queue (the gateway's half of the protocol).

`EnqueueRequest.for_event` computes every key and argument of `enqueue_event.lua` up front,
so a batch of requests can be sent as one pipelined round trip.

A receipt (`shared.events.Receipt`: a delivery ack, or the echo of the business's own message)
for a message already in the history is settled by that same script, at the door, instead of
being queued: an ack's status moves forward (a status only moves forward, so when it is applied
does not change where it ends), an echo changes nothing. Each message the business sends brings
an echo and two or three acks, each a worker turn otherwise (issue 19). A receipt for a message
not recorded yet is queued like any event, so it is handled after the events before it (the
business phone's own message, whose record it needs) and can settle a send (the echo).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.envelope import encode_record
from shared.events import RoutedEvent
from shared.keys import (
    DEFAULT_PREFIX,
    EngineConversationKeys,
    ShardKeys,
    conversation_token,
    shard_of,
)
from shared.lua import KeyArg, LuaScript, is_noscript
from shared.redis_client import RedisClient

ENQUEUE_EVENT = LuaScript.named("enqueue_event")

# enqueue_event.lua's answers: a repeat, not queued again; queued; a receipt settled on its
# message (durable like a queued event, and nothing for a worker to do).
DUPLICATE, QUEUED, SETTLED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    keys: list[KeyArg]
    args: list[str | bytes | int]

    @classmethod
    def for_event(
        cls,
        routed: RoutedEvent,
        body: bytes,
        *,
        received_at_ms: int,
        shards: int,
        dedupe_ttl_seconds: int,
        prefix: str = DEFAULT_PREFIX,
    ) -> EnqueueRequest:
        token = conversation_token(routed.session, routed.chat_id)
        shard = ShardKeys(shard_of(token, shards), prefix)
        conversation = shard.conversation(token)
        seen_event = shard.seen_event(routed.session, routed.event_id)
        seen_message = (
            shard.seen_message(routed.session, routed.message_key)
            if routed.message_key
            else seen_event
        )
        keys: list[KeyArg] = [
            seen_event,
            seen_message,
            conversation.messages,
            conversation.bodies,
            conversation.meta,
            shard.ready,
            shard.stats,
        ]
        args: list[str | bytes | int] = [
            routed.event_id,
            token,
            encode_record(routed, body, received_at_ms),
            dedupe_ttl_seconds,
            1 if routed.message_key else 0,
        ]
        receipt = routed.receipt
        if receipt is not None:
            # Settled at the door when its message is in the history already (the script
            # decides, atomically); queued for the conversation's turn otherwise.
            keys.append(EngineConversationKeys(conversation).history_meta)
            args += [receipt.message, receipt.status]
        return cls(keys=keys, args=args)


async def enqueue(client: RedisClient, request: EnqueueRequest) -> bool:
    """Queue one event. True: queued (or, for a receipt, settled on its message); False: a
    duplicate, not queued again."""
    return bool(await ENQUEUE_EVENT(client, request.keys, request.args))


async def enqueue_many(client: RedisClient, requests: list[EnqueueRequest]) -> list[int]:
    """Queue several events in one pipelined round trip (no MULTI: each script is atomic);
    each one's answer is DUPLICATE, QUEUED or SETTLED.

    Retrying after NOSCRIPT is safe: an event that did get queued answers "duplicate" the
    second time, and the caller learns it is durable either way.
    """
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for request in requests:
            ENQUEUE_EVENT.queue_in(pipe, request.keys, request.args)
        try:
            results = await pipe.execute()
        except Exception as exc:
            if attempt == 1 and is_noscript(exc):
                await ENQUEUE_EVENT.load(client)
                continue
            raise
        return [int(result) for result in results]
    raise AssertionError("unreachable")
