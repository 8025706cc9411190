"""The read-cost tests' kit, shared by tests/api/test_reads_cost.py and
tests/api/test_cluster_reads.py: conversations seeded straight into Redis with their pending
replies, and the outbox gauge read from /metrics."""

from __future__ import annotations

from typing import Any

from engine.state import ConversationState, State
from shared.keys import EngineIndexKeys, conversation_token, engine_keys_for

T0 = 1_700_000_000_000


def chat(n: int) -> str:
    return f"55119000{n:05d}@c.us"


def seed(
    sync: Any, prefix: str, session: str, chat_id: str, state: State, at: int, shards: int = 1
) -> None:
    """A conversation as the engine leaves it: its state hash, listed in the index by its last
    change, and in its state's set (engine/state.py writes the same keys)."""
    index = EngineIndexKeys(prefix)
    token = conversation_token(session, chat_id)
    hashed = ConversationState(state=state, last_activity_at=at, opened_at=T0).to_hash()
    sync.hset(engine_keys_for(session, chat_id, shards, prefix).state, mapping=hashed)
    sync.zadd(index.conversations, {token: at})
    sync.sadd(index.in_state(state.value), token)


def pend(sync: Any, prefix: str, chat_id: str, replies: int, due: int, shards: int = 1) -> None:
    keys = engine_keys_for("default", chat_id, shards, prefix)
    sync.rpush(keys.outbox, *[f'{{"mid": "m{n}"}}' for n in range(replies)])
    sync.zadd(keys.outbox_pending, {conversation_token("default", chat_id): due})


def outbox_gauge(metrics: str) -> float:
    [line] = [x for x in metrics.splitlines() if x.startswith("wsm_outbox_pending ")]
    return float(line.split()[1])
