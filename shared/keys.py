"""Every Redis key name wsm uses is built here, and only here.

Layout (see docs/architecture.md for a message's life through these keys). `P` is the key
prefix (WSM_KEY_PREFIX, default `wsm`), `n` the shard, `<conv>` the conversation token:

    P:{qn}:ready               LIST   conversations with work, waiting to be claimed
                                      (FIFO: LPUSH at the back, BLMOVE RIGHT from the front)
    P:{qn}:claimed             LIST   popped by a worker but not yet leased; the reaper hands
                                      back entries that stay here
    P:{qn}:leases              ZSET   conversation -> lease deadline (ms, Redis clock)
    P:{qn}:delayed             ZSET   conversation -> time it may be retried (backoff)
    P:{qn}:stats               HASH   counters: waiting messages, redeliveries, ...
    P:{qn}:dlq                 LIST   dead letters (JSON: record, error, attempts)
    P:{qn}:c:<conv>:msgs       LIST   the conversation's message ids, oldest at the RIGHT
    P:{qn}:c:<conv>:bodies     HASH   message id -> queued record
    P:{qn}:c:<conv>:meta       HASH   state (idle|ready|leased|delayed), fence, owner, ...
    P:{qn}:c:<conv>:attempts   HASH   message id -> attempts so far
    P:{qn}:seen:<session>:e:<id>  STRING  dedupe marker for an envelope id  (TTL: window)
    P:{qn}:seen:<session>:m:<k>   STRING  dedupe marker for a message id    (TTL: window)

Why shards: Redis Cluster runs a script only when every key it declares hashes to one slot.
Enqueueing touches the conversation's keys *and* the ready list, so the ready list must share
the conversation's hash tag. A conversation therefore belongs to one of `WSM_QUEUE_SHARDS`
shards (crc32 of its identity), and every key of a shard carries the tag `{wsm:q<n>}`. On a
single Redis one shard is enough; on a cluster, several per master spread the load.

`<conv>` is the conversation token `<session>|<chat id>` (see `conversation_token`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

DEFAULT_PREFIX = "wsm"


def conversation_token(session: str, chat_id: str) -> str:
    """The identity of a conversation inside key names and the ready list.

    WAHA session names are `[a-zA-Z0-9_-]`; chat ids never contain `|`, so the token splits back.
    """
    return f"{session}|{chat_id}"


def split_conversation_token(token: str) -> tuple[str, str]:
    session, _, chat_id = token.partition("|")
    return session, chat_id


def shard_of(token: str, shards: int) -> int:
    """The shard a conversation lives on. Stable: it must never change while work is queued."""
    if shards <= 1:
        return 0
    return zlib.crc32(token.encode()) % shards


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """Keys of one queue shard (all in one Redis Cluster slot).

    `prefix` (WSM_KEY_PREFIX) lets several deployments, or test runs, share one Redis.
    """

    shard: int
    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{q{self.shard}}}"

    @property
    def ready(self) -> str:
        return f"{self.tag}:ready"

    @property
    def claimed(self) -> str:
        return f"{self.tag}:claimed"

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def delayed(self) -> str:
        return f"{self.tag}:delayed"

    @property
    def stats(self) -> str:
        return f"{self.tag}:stats"

    @property
    def dlq(self) -> str:
        return f"{self.tag}:dlq"

    def conversation(self, token: str) -> ConversationKeys:
        return ConversationKeys(self, token)

    def seen_event(self, session: str, event_id: str) -> str:
        # Scoped by session: two WAHA sessions never share an id space we can rely on.
        return f"{self.tag}:seen:{session}:e:{event_id}"

    def seen_message(self, session: str, message_key: str) -> str:
        return f"{self.tag}:seen:{session}:m:{message_key}"


@dataclass(frozen=True, slots=True)
class ConversationKeys:
    """Keys of one conversation's queue; they share the shard's hash tag."""

    shard_keys: ShardKeys
    token: str

    @property
    def _base(self) -> str:
        return f"{self.shard_keys.tag}:c:{self.token}"

    @property
    def messages(self) -> str:
        return f"{self._base}:msgs"

    @property
    def bodies(self) -> str:
        return f"{self._base}:bodies"

    @property
    def meta(self) -> str:
        return f"{self._base}:meta"

    @property
    def attempts(self) -> str:
        return f"{self._base}:attempts"


def keys_for_conversation(
    session: str, chat_id: str, shards: int, prefix: str = DEFAULT_PREFIX
) -> ConversationKeys:
    token = conversation_token(session, chat_id)
    return ShardKeys(shard_of(token, shards), prefix).conversation(token)


def all_shards(shards: int, prefix: str = DEFAULT_PREFIX) -> list[ShardKeys]:
    return [ShardKeys(n, prefix) for n in range(max(1, shards))]
