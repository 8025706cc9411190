"""The queue's housekeeping: what no lease holder will do for itself.

One pass over a shard (any live worker may run it; a short lock keeps it to one pass per shard
per interval, and every step is safe if two passes overlap anyway):

- an expired lease: fence bumped, the head message's attempt counted, the conversation put at
  the front of the line (`reap_expired_lease.lua`);
- a delayed conversation whose backoff is over: to the front of the line (`promote_delayed.lua`);
- a token left in `claimed` by a worker that died between BLMOVE and its claim, seen there by
  two consecutive passes: back to the front of the line (`reclaim_stale_claims.lua`).

Each pass reads what is due with one read-only script, so an idle shard costs three calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.keys import ShardKeys
from shared.lua import LuaScript

DUE_CONVERSATIONS = LuaScript.named("due_conversations")
REAP_EXPIRED_LEASE = LuaScript.named("reap_expired_lease")
PROMOTE_DELAYED = LuaScript.named("promote_delayed")
RECLAIM_STALE_CLAIMS = LuaScript.named("reclaim_stale_claims")

# Conversations handled per kind per pass; the rest wait for the next pass (keeps one pass short
# even after a mass expiry, e.g. when every worker was paused at once).
PASS_LIMIT = 500


@dataclass(frozen=True, slots=True)
class ReapReport:
    reaped: int = 0
    dead: int = 0
    promoted: int = 0
    reclaimed: int = 0

    def __bool__(self) -> bool:
        return bool(self.reaped or self.promoted or self.reclaimed)


class QueueReaper:
    def __init__(self, client: Any, *, max_attempts: int, lock_ms: int) -> None:
        self.client = client
        self.max_attempts = max_attempts
        self.lock_ms = lock_ms

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
                ],
                [token, self.max_attempts],
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
        return ReapReport(reaped, dead, promoted, reclaimed)
