"""Tests written to kill mutants that survived the mutation run (docs/testing.md lists each one
and the mutant it kills). Each asserts a behaviour of the engine, not a line of code."""

from __future__ import annotations

import httpx
import pytest
import respx

from engine.erase import erase_customer
from engine.outbox import OutboxEntry
from engine.sender import InflightSend
from engine.state import (
    ConversationState,
    InvalidTransition,
    State,
    Trigger,
    next_state,
    prune_index,
)
from engine.waha_client import SentMessage
from shared.keys import EngineIndexKeys, WahaSessionKeys, engine_keys_for, keys_for_conversation
from shared.lua import LuaScript
from shared.queue_errors import ConversationBusy
from shared.redis_client import connect
from tests.engine.erase_support import snapshot
from tests.engine.harness import WAHA, mock_courtesy, texts_sent
from tests.engine.support import CHAT, commit_replies, make_sender, sent_answer
from tests.support.waha import text_message

# --- engine/state.py ------------------------------------------------------------------------


def test_a_state_hash_missing_some_fields_keeps_every_field_it_has() -> None:
    """A hash written with fewer fields (an older version of the code, or a field added since)
    still yields every field it does have, wherever the missing ones sit in the order.
    Kills: `continue` -> `break` in from_hash (every field after the first missing one lost)."""
    raw = {b"state": b"agent", b"agent_id": b"a7", b"taken_at": b"1700", b"version": b"9"}
    state = ConversationState.from_hash(raw)
    assert state == ConversationState(state=State.AGENT, agent_id="a7", taken_at=1700, version=9)


def test_empty_values_in_a_state_hash_read_as_the_defaults() -> None:
    """An empty `collected` is no collected data (not a JSON error) and an empty number is 0.
    Kills: `orjson.loads(value) if value` -> always loads, and `int(value or 0)` -> `or 1`."""
    raw = {b"state": b"bot", b"collected": b"", b"line_position": b"", b"version": b""}
    state = ConversationState.from_hash(raw)
    assert state == ConversationState(state=State.BOT)
    assert state.collected == {}
    assert (state.line_position, state.version) == (0, 0)


def test_a_refused_transition_says_from_where_and_on_what() -> None:
    """A caller catching InvalidTransition (a stale agent command) can tell what was refused.
    Kills: the message and the `state`/`trigger` attributes replaced by None."""
    with pytest.raises(InvalidTransition) as refused:
        next_state(State.CLOSED, Trigger.AGENT_TOOK)
    assert (refused.value.state, refused.value.trigger) == (State.CLOSED, Trigger.AGENT_TOOK)
    assert "'closed'" in str(refused.value)
    assert "'agent_took'" in str(refused.value)


# --- shared/scripts/erase_markers.lua -----------------------------------------------------

ERASE_MARKERS = LuaScript.named("erase_markers")


@pytest.mark.parametrize(
    ("meta_fence", "meta_state"), [("8", "leased"), ("7", "ready")], ids=["reaped", "released"]
)
async def test_the_erase_deletes_no_marker_once_its_lease_is_gone(
    aredis, key_prefix, meta_fence, meta_state
) -> None:
    """The erase (fence 7) deletes a conversation's dedupe markers only while it still holds
    the lease it took: once that lease was reaped (a new fence) or let go, a message may be
    queued and handled meanwhile, and its marker is what keeps WAHA's repeat of it from being
    queued twice. Nothing is deleted then, and the erase must be repeated (-1).
    Kills: the `return -1` of erase_markers.lua's lease guard dropped."""
    tag = "{q0}"
    meta = f"{key_prefix}:{tag}:c:erase-test:meta"
    markers = [f"{key_prefix}:{tag}:seen:m{n}" for n in range(3)]
    await aredis.hset(meta, mapping={"fence": meta_fence, "state": meta_state})
    for key in markers:
        await aredis.set(key, "1", ex=60)

    assert await ERASE_MARKERS(aredis, [meta, *markers], ["7"]) == -1
    assert await aredis.exists(*markers) == len(markers)

    # While the lease is the erase's own, they go.
    await aredis.hset(meta, mapping={"fence": "7", "state": "leased"})
    assert await ERASE_MARKERS(aredis, [meta, *markers], ["7"]) == len(markers)
    assert await aredis.exists(*markers) == 0


# --- shared/scripts/erase_conversation.lua (engine/erase.py) -------------------------------


async def test_a_leased_conversation_with_nothing_left_queued_is_still_busy(
    make_harness, waha, sync_redis, key_prefix
) -> None:
    """A worker that acked the conversation's last message still holds the lease until it
    releases it (its turn is not over: replies, the outbox). The erase must refuse then too,
    with nothing deleted; erasing under it would take the lease from a live holder.
    Kills: the `return {'busy', state}` of erase_conversation.lua's state guard dropped
    (the "messages queued" guard behind it does not see this case)."""
    chat = "5511999990201@c.us"
    harness = make_harness(queue_shards=3)
    await harness.webhook(text_message(chat, "oi"))
    await harness.drain()
    assert await harness.webhook(text_message(chat, "Ana"))
    shard = keys_for_conversation("default", chat, 3, key_prefix).shard_keys
    token = await harness.consumer.pop_ready(shard)
    lease = await harness.consumer.claim(shard, token or "", "holder")
    assert lease is not None
    for message in lease.messages:
        await harness.consumer.ack(lease, message.id)
    meta = keys_for_conversation("default", chat, 3, key_prefix).meta
    assert sync_redis.hget(meta, "state") == b"leased"
    before = snapshot(sync_redis, key_prefix)

    with pytest.raises(ConversationBusy):
        await erase_customer(
            harness.redis, prefix=key_prefix, shards=3, session="default", chat_id=chat
        )

    assert snapshot(sync_redis, key_prefix) == before
    assert await harness.consumer.release(lease)  # the holder's turn ends as it would have


# --- engine/state.py: prune_index pages through `convs` ------------------------------------

NOW_MS = 10_000_000_000_000
RETENTION_S = 100


async def _indexed(aredis, prefix: str, n: int, *, age_s: int, state: bool, shards: int = 1) -> str:
    """Conversation n in the engine's indexes, last changed `age_s` ago, its state hash kept
    or expired."""
    chat = f"55119{n:08d}@c.us"
    token = f"default|{chat}"
    index = EngineIndexKeys(prefix)
    await aredis.zadd(index.conversations, {token: NOW_MS - age_s * 1000 - n})
    await aredis.sadd(index.in_state(State.BOT.value), token)
    await aredis.zadd(index.timers, {token: 1})
    if state:
        await aredis.hset(engine_keys_for("default", chat, shards, prefix).state, "state", "bot")
    return token


async def test_prune_pages_through_expired_conversations_and_keeps_the_live_ones(
    aredis, key_prefix
) -> None:
    """Expired conversations (state gone, last change older than the retention) interleaved
    with live ones, two to a page: every expired one is forgotten in every index, every live
    one kept, a recent one without its state yet kept, and the count is exact; with nothing
    left, the count is 0. Kills, in prune_index: the cutoff's sign and unit, the counters'
    `+=` made `=`/`-=`, the page offset's arithmetic, `break` -> `return`."""
    index = EngineIndexKeys(key_prefix)
    gone, kept = [], []
    for n in range(8):  # old: expired and live alternate in score order
        token = await _indexed(aredis, key_prefix, n, age_s=2 * RETENTION_S, state=n % 2 == 1)
        (kept if n % 2 else gone).append(token)
    kept.append(await _indexed(aredis, key_prefix, 50, age_s=RETENTION_S // 2, state=False))

    forgotten = await prune_index(
        aredis, index, shards=1, retention_seconds=RETENTION_S, now_ms=NOW_MS, page=2
    )

    assert forgotten == len(gone)
    left = {t.decode() for t in await aredis.zrange(index.conversations, 0, -1)}
    assert left == set(kept)
    for token in gone:
        assert not await aredis.sismember(index.in_state(State.BOT.value), token)
        assert await aredis.zscore(index.timers, token) is None
    assert (
        await prune_index(
            aredis, index, shards=1, retention_seconds=RETENTION_S, now_ms=NOW_MS, page=2
        )
        == 0
    )


@pytest.mark.parametrize(("most", "forgotten"), [(2, 2), (3, 4)])
async def test_prune_looks_at_no_more_pages_than_asked(aredis, key_prefix, most, forgotten) -> None:
    """`most` bounds one call's work (the maintenance runs it again later): pages of two are
    read while fewer than `most` candidates were looked at.
    Kills: `looked < most` -> `<=`, and `looked += len(rows)` -> `=`."""
    index = EngineIndexKeys(key_prefix)
    for n in range(6):
        await _indexed(aredis, key_prefix, n, age_s=2 * RETENTION_S, state=False)
    done = await prune_index(
        aredis, index, shards=1, retention_seconds=RETENTION_S, now_ms=NOW_MS, page=2, most=most
    )
    assert done == forgotten
    assert await aredis.zcard(index.conversations) == 6 - forgotten


async def test_prune_runs_on_a_redis_cluster(redis_cluster_url, key_prefix) -> None:
    """On a Redis Cluster with several queue shards the conversations' state hashes live in
    different slots: the prune asks about them in one pipeline that is not a transaction (a
    MULTI cannot span slots). Kills, in prune_index: `pipeline(transaction=True)` (the
    cluster refuses it)."""
    client = connect(redis_cluster_url)
    try:
        index = EngineIndexKeys(key_prefix)
        gone = [
            await _indexed(client, key_prefix, n, age_s=2 * RETENTION_S, state=False, shards=3)
            for n in range(6)
        ]
        kept = await _indexed(client, key_prefix, 9, age_s=2 * RETENTION_S, state=True, shards=3)
        forgotten = await prune_index(
            client, index, shards=3, retention_seconds=RETENTION_S, now_ms=NOW_MS, page=10
        )
        assert forgotten == len(gone)
        assert [t.decode() for t in await client.zrange(index.conversations, 0, -1)] == [kept]
    finally:
        await client.aclose()


CHAT_TOKEN = f"default|{CHAT}"


async def test_the_sender_delivers_on_a_redis_cluster(redis_cluster_url, key_prefix) -> None:
    """The sender's pipelines span the conversation's hash tag and the session's (the outbox's
    head with the session's park; the sent mark with our ids): on a Redis Cluster they must
    not be transactions (a MULTI cannot span slots). Replies committed on a three-master
    cluster go out in order, are recorded as sent, and leave no lock. Kills, in
    Sender._deliver and Sender._mark_sent: `pipeline(transaction=True)`."""
    client = connect(redis_cluster_url)
    # Learn the cluster's slots first: redis-py 8.1's cluster pipeline in a MULTI (the test's
    # commit_replies) fails on a client that has not run a command yet.
    await client.initialize()
    await commit_replies(client, key_prefix, "um", "dois")
    sender, waha = make_sender(client, key_prefix)
    try:
        with respx.mock:
            mock_courtesy()
            send = respx.post(f"{WAHA}/api/sendText").mock(
                side_effect=[sent_answer(n) for n in range(2)]
            )
            await sender.deliver(CHAT_TOKEN)
        assert texts_sent(send) == ["um", "dois"]
        keys = engine_keys_for("default", CHAT, 1, key_prefix)
        assert await client.llen(keys.outbox) == 0
        assert await client.exists(keys.sending) == 0
        ours = WahaSessionKeys("default", key_prefix).ours(f"3EB0{1:016X}")
        assert await client.exists(ours) == 1
    finally:
        await waha.aclose()
        await client.aclose()


async def test_the_sender_marks_its_send_in_flight_on_a_redis_cluster(
    redis_cluster_url, key_prefix
) -> None:
    """On one Redis the in-flight marker rides behind send_begin.lua (send_mark.lua names keys
    of two hash tags); a cluster refuses such a script, so there the marker follows in a round
    trip of its own. A send that fails leaves its marker: it names the reply. Kills, in
    Sender._begin: the cluster's `set` dropped, or send_mark.lua sent on a cluster."""
    client = connect(redis_cluster_url)
    await client.initialize()
    await commit_replies(client, key_prefix, "Olá!")
    sender, waha = make_sender(client, key_prefix)
    error = httpx.Response(500, json={"statusCode": 500, "message": "Internal server error"})
    try:
        with respx.mock:
            mock_courtesy()
            respx.post(f"{WAHA}/api/sendText").mock(side_effect=[error])
            await sender.deliver(CHAT_TOKEN)
        keys = engine_keys_for("default", CHAT, 1, key_prefix)
        [reply] = [OutboxEntry.decode(raw) for raw in await client.lrange(keys.outbox, 0, -1)]
        marker = InflightSend.decode(
            await client.get(WahaSessionKeys("default", key_prefix).inflight(CHAT))
        )
        assert (marker.mid, marker.text) == (reply.mid, "Olá!")
    finally:
        await waha.aclose()
        await client.aclose()


# --- engine/sender.py: settle_echo records only the reply the echo is of ------------------


@respx.mock
@pytest.mark.parametrize("differs", ["text", "reply"])
async def test_an_echo_that_is_not_of_the_reply_in_flight_settles_nothing(
    aredis, key_prefix, differs
) -> None:
    """A reply's send fails and its in-flight marker stays. An echo arrives whose text is not
    the marker's (or whose marker names another reply): it is not this send's echo, so the
    reply is not recorded as sent (it would then never go out), and it is sent later.
    Kills, in Sender.settle_echo: the id/text check's `or` -> `and`, and its `return False`
    -> `True`."""
    mock_courtesy()
    error = httpx.Response(500, json={"statusCode": 500, "message": "Internal server error"})
    send = respx.post(f"{WAHA}/api/sendText").mock(side_effect=[error, sent_answer(2)])
    sender, client = make_sender(aredis, key_prefix)
    keys = engine_keys_for("default", CHAT, 1, key_prefix)
    await commit_replies(aredis, key_prefix, "Olá!")
    await sender.deliver(CHAT_TOKEN)  # the send fails; its marker stays
    [reply] = [OutboxEntry.decode(raw) for raw in await aredis.lrange(keys.outbox, 0, -1)]
    marker = InflightSend.decode(
        await aredis.get(WahaSessionKeys("default", key_prefix).inflight(CHAT))
    )
    assert (marker.mid, marker.text) == (reply.mid, "Olá!")
    if differs == "text":
        other = InflightSend(marker.mid, "Outra coisa", marker.at_ms)
    else:
        other = InflightSend("another-reply", marker.text, marker.at_ms)
    echo = SentMessage(f"true_{CHAT}_3EB0{9:016X}")

    assert not await sender.settle_echo(CHAT_TOKEN, other, echo, marker.at_ms)

    assert [OutboxEntry.decode(r).mid for r in await aredis.lrange(keys.outbox, 0, -1)] == [
        reply.mid
    ]
    assert await aredis.hget(keys.history_meta, f"{reply.mid}:waha_id") is None
    await aredis.zadd(keys.outbox_pending, {CHAT_TOKEN: 0})  # its backoff is over
    await sender.deliver(CHAT_TOKEN)
    assert texts_sent(send) == ["Olá!", "Olá!"]
    assert await aredis.llen(keys.outbox) == 0
    await client.aclose()
