"""The queue's housekeeping: what no lease holder will do for itself.

One pass over a shard (any live worker may run it; a short lock keeps it to one pass per shard
per interval, and every step is safe if two passes overlap anyway):

- an expired lease: fence bumped, the head message's attempt counted (unless its holder acked a
  message under that lease: it was between messages, and that ack is kept for its retry), the
  conversation put at the front of the line (`reap_expired_lease.lua`);
- a delayed conversation whose backoff is over: to the front of the line (`promote_delayed.lua`);
- a token left in `claimed` by a worker that died between BLMOVE and its claim, seen there by
  two consecutive passes: back to the front of the line (`reclaim_stale_claims.lua`).

- dead letters past WSM_DEAD_LETTER_DAYS, in the queue's and the outbox's lists, at most once a
  minute per shard: the scripts that add a dead letter age the list too, but a shard that gets
  none for weeks would otherwise keep its old ones (and the customer data in them).

Each pass reads what is due with one read-only script, so an idle shard costs three calls (two
more once a minute).
"""

from __future__ import annotations

import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import orjson

from shared.clock import now_ms
from shared.dead_letters import DEFAULT_DEAD_LETTER_LIMITS, DeadLetterLimits
from shared.keys import ShardKeys, outbox_dlq_key
from shared.lua import LuaScript

DUE_CONVERSATIONS = LuaScript.named("due_conversations")
REAP_EXPIRED_LEASE = LuaScript.named("reap_expired_lease")
PROMOTE_DELAYED = LuaScript.named("promote_delayed")
RECLAIM_STALE_CLAIMS = LuaScript.named("reclaim_stale_claims")

# Conversations handled per kind per pass; the rest wait for the next pass (keeps one pass short
# even after a mass expiry, e.g. when every worker was paused at once).
PASS_LIMIT = 500

# How long a reaped lease's last ack is kept for its holder's retry (`ConversationKeys.reaped_ack`).
# The holder retries only until its own estimate of the deadline, which runs ahead of Redis's,
# so a retry reaches Redis after a reaping only when it was held up on the way (a stalled
# connection, a paused process): seconds. Ten minutes is far past that, for one small key per
# reaped lease.
REAPED_ACK_MS = 600_000

# How often a reaper looks at a shard's oldest dead letters, and how many it drops at most then.
AGE_CHECK_SECONDS = 60.0
AGE_LIMIT = 100


def _dead_letter_at_ms(entry: bytes) -> int | None:
    """When a dead letter was written: the `at` of a queue entry's header line, or of an
    outbox entry (one JSON document)."""
    try:
        document = orjson.loads(entry.partition(b"\n")[0])
    except orjson.JSONDecodeError:
        return None
    at = document.get("at") if isinstance(document, dict) else None
    return at if isinstance(at, int) else None


@dataclass(frozen=True, slots=True)
class ReapReport:
    reaped: int
    dead: int
    promoted: int
    reclaimed: int

    def __bool__(self) -> bool:
        return bool(self.reaped or self.promoted or self.reclaimed)


@dataclass(eq=False)
class QueueReaper:
    # Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
    client: Any
    _: KW_ONLY
    max_attempts: int
    lock_ms: int
    dead_letters: DeadLetterLimits = DEFAULT_DEAD_LETTER_LIMITS
    _aged_at: dict[ShardKeys, float] = field(default_factory=dict, init=False, repr=False)

    async def try_lock(self, shard: ShardKeys, holder: str) -> bool:
        """Take the shard's pass lock for `lock_ms`. The lock is never released early: it is
        what spaces passes at least an interval apart, which the stale-claim rule relies on."""
        return bool(await self.client.set(shard.reaper_lock, holder, nx=True, px=self.lock_ms))

    async def run_pass(self, shard: ShardKeys) -> ReapReport:
        expired, due = await DUE_CONVERSATIONS(
            self.client, [shard.leases, shard.delayed], [PASS_LIMIT]
        )
        reaped = dead = promoted = 0
        for raw in expired:
            token = raw.decode()
            conversation = shard.conversation(token)
            reply = await REAP_EXPIRED_LEASE(
                self.client,
                [
                    shard.leases,
                    conversation.meta,
                    conversation.messages,
                    conversation.bodies,
                    conversation.attempts,
                    shard.stats,
                    shard.ready,
                    shard.dlq,
                    shard.fence,
                    conversation.reaped_ack,
                ],
                [
                    token,
                    self.max_attempts,
                    self.dead_letters.max_entries,
                    self.dead_letters.max_age_ms,
                    REAPED_ACK_MS,
                ],
            )
            if int(reply[0]) == 1:
                reaped += 1
                dead += int(reply[1])
        for raw in due:
            token = raw.decode()
            conversation = shard.conversation(token)
            promoted += int(
                await PROMOTE_DELAYED(
                    self.client,
                    [shard.delayed, conversation.meta, conversation.messages, shard.ready],
                    [token],
                )
            )
        reclaimed = int(
            await RECLAIM_STALE_CLAIMS(
                self.client, [shard.claimed, shard.ready, shard.claimed_seen], []
            )
        )
        await self.age_dead_letters(shard)
        return ReapReport(reaped, dead, promoted, reclaimed)

    async def age_dead_letters(self, shard: ShardKeys, *, force: bool = False) -> int:
        """Drop (and count) dead letters older than the limit from the shard's two lists; how
        many went. At most once per AGE_CHECK_SECONDS unless `force`."""
        now = time.monotonic()
        if not force and now - self._aged_at.get(shard, -AGE_CHECK_SECONDS) < AGE_CHECK_SECONDS:
            return 0
        self._aged_at[shard] = now
        cutoff_ms = now_ms() - self.dead_letters.max_age_ms
        total = 0
        # (list, index of its oldest entry, LREM count that scans from that end, stats field)
        for key, oldest_end, counter in (
            (shard.dlq, -1, "dead_dropped"),
            (outbox_dlq_key(shard), 0, "outbox_dead_dropped"),
        ):
            dropped = 0
            for _ in range(AGE_LIMIT):
                oldest = await self.client.lindex(key, oldest_end)
                at = None if oldest is None else _dead_letter_at_ms(oldest)
                if at is None or at >= cutoff_ms:
                    break
                # By value, not by position: a replay or drop may have changed the list since.
                dropped += int(await self.client.lrem(key, -1 if oldest_end == -1 else 1, oldest))
            if dropped:
                await self.client.hincrby(shard.stats, counter, dropped)
                total += dropped
        return total
