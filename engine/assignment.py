"""Cross-conversation steps of the waiting line: giving free agents the longest-waiting
customers, telling people in line that their place improved, re-sending assignments that a
crash left unconfirmed, and reconciling agents' sets with the conversations' own states (a
crash between a handler's commit and its `line.release` / `line.attach`). Every step is
idempotent (safe to repeat, safe to run in several processes at once): takes are atomic
scripts, and what a conversation is told goes through its own queue as a command with a
deterministic event id, so a repeat is dropped as a duplicate.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import KW_ONLY, dataclass

from engine import commands
from engine.commands import CommandQueue
from engine.state import State
from engine.waiting_line import AgentUnavailable, Taken, WaitingLine
from shared.clock import now_ms
from shared.keys import EngineIndexKeys, engine_keys_for, split_conversation_token
from shared.redis_client import RedisClient
from shared.text import as_text

log = logging.getLogger("wsm.engine.assignment")

# An assignment not confirmed by its conversation after this long is sent again.
STALE_TAKE_MS = 30_000
# One reconcile pass per this long over all processes (a lock), from `maintain`.
RECONCILE_INTERVAL_MS = 10_000
# The reconcile looks at conversations changed since its previous pass minus this: a turn
# indexes the conversation (`convs`, its start time) before its commit, which lands at most a
# handler timeout (WSM_HANDLER_TIMEOUT_SECONDS, 120 s by default) later.
RECONCILE_LOOKBACK_MS = 300_000
# The first pass (no watermark yet) looks this far back.
RECONCILE_FIRST_MS = 3_600_000


@dataclass(eq=False)
class LineCoordinator:
    redis: RedisClient
    line: WaitingLine
    queue: CommandQueue
    _: KW_ONLY
    shards: int
    notice_interval_seconds: float
    auto_assign: bool

    @property
    def notice_interval_ms(self) -> int:
        return int(self.notice_interval_seconds * 1000)

    async def tell_assigned(self, taken: Taken) -> None:
        session, chat_id = split_conversation_token(taken.token)
        await self.queue.send(
            session,
            chat_id,
            commands.ASSIGNED,
            {
                "agent_id": taken.agent_id,
                "agent_name": taken.agent_name,
                "taken_at": taken.taken_at,
                "entered_at": taken.entered_at,
            },
            event_id=f"assign:{taken.token}:{taken.taken_at}",
        )

    async def take_next(self, agent_id: str, session: str | None = None) -> Taken | None:
        """An agent asks for the next customer (operator API). Raises AgentUnavailable."""
        sessions = [session] if session else await self.line.sessions()
        taken = await self.line.take(agent_id, sessions, now_ms())
        if taken is not None:
            await self.tell_assigned(taken)
            await self.notify_positions(split_conversation_token(taken.token)[0])
        return taken

    async def assign_free_agents(self) -> int:
        """While an agent has room and someone waits, give the longest-waiting to the least
        loaded free agent."""
        if not self.auto_assign:
            return 0
        assigned = 0
        touched: set[str] = set()
        # Only the lines of businesses open now: outside its hours a business's customers were
        # told it is closed and that they keep their place for the opening, where they are
        # told their place again (announce_opening) and taken in order. An agent left online
        # overnight would otherwise take them at once. An attendant may still take one by hand
        # (take_next).
        now = now_ms()
        sessions = [s for s in await self.line.sessions() if self.line.for_session(s).is_open(now)]
        if not sessions:
            return 0  # no line open: nothing to take, and no agent to ask
        for _ in range(1000):  # bounded: each round assigns one or stops
            free = await self.line.free_agents()
            taken = None
            for agent in free:
                try:
                    taken = await self.line.take(agent.id, sessions, now_ms())
                except AgentUnavailable:
                    continue  # went offline or full between the read and the take
                if taken is not None:
                    break
                # Nobody waits in this agent's teams' lines: the next agent may have some.
            if taken is None:
                break
            await self.tell_assigned(taken)
            touched.add(split_conversation_token(taken.token)[0])
            assigned += 1
        for session in touched:
            await self.notify_positions(session)
        return assigned

    async def notify_positions(self, session: str) -> int:
        """Queue a "your place improved" check for each customer in line who may be told now.

        The conversation's handler decides for good (it holds the state); this only avoids
        queueing checks that would certainly be refused.
        """
        members = await self.line.members(session)
        if not members or not self.line.for_session(session).is_open(now_ms()):
            return 0  # closed: places are told again at the opening (announce_opening)
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            _, chat_id = split_conversation_token(member.token)
            keys = engine_keys_for(session, chat_id, self.shards, self.line.keys.prefix)
            pipe.hmget(keys.state, "state", "line_position", "line_notice_at")
        rows = await pipe.execute()
        now = now_ms()
        queued = 0
        for member, (state, told, told_at) in zip(members, rows, strict=True):
            if state is None or state.decode() != State.WAITING.value:
                continue
            told_position = int(told or 0)
            if not told_position or member.position >= told_position:
                continue
            due = member.position == 1 or now - int(told_at or 0) >= self.notice_interval_ms
            if not due:
                continue
            _, chat_id = split_conversation_token(member.token)
            if await self.queue.send(
                session,
                chat_id,
                commands.LINE,
                {"position": member.position},
                event_id=f"line:{member.token}:{member.entered_at}:{member.position}",
            ):
                queued += 1
        return queued

    async def announce_opening(self) -> int:
        """At the opening, tell everyone in line their place again (with their estimate).

        The line records whether it last saw the business open or closed; the first pass
        that sees it open after closed queues one `wsm.line` command (`opening`) per waiting
        customer, with an event id per opening, so passes of several processes (or a repeat
        after a crash before the record) tell each customer once. A session with a business of
        its own (engine/businesses.py) opens at its own hours, with its own record."""
        queued = await self._announce_opening(self.line, "")
        for session in self.line.sessions_own:
            queued += await self._announce_opening(self.line.for_session(session), session)
        return queued

    async def _announce_opening(self, line: WaitingLine, own: str) -> int:
        """`own`: the session of a business of its own; "" for the default business's."""
        hours = line.hours
        if hours is None:
            return 0
        now = now_ms()
        is_open = hours.is_open(now)
        seen = await line.hours_seen(own)
        if seen == ("open" if is_open else "closed"):
            return 0  # no change (and no write)
        if not is_open or seen is None:
            await line.mark_hours(is_open, own)
            return 0
        opened_at = hours.opened_at(now)
        queued = 0
        sessions = [own] if own else await line.sessions()
        for session in sessions:
            if not own and session in line.sessions_own:
                continue  # its business's hours, its own pass
            for member in await line.members(session):
                _, chat_id = split_conversation_token(member.token)
                if await self.queue.send(
                    session,
                    chat_id,
                    commands.LINE,
                    {"position": member.position, "opening": True},
                    event_id=f"open:{member.token}:{member.entered_at}:{opened_at}",
                ):
                    queued += 1
        await line.mark_hours(True, own)
        return queued

    async def resend_stale_takes(self) -> int:
        count = 0
        for taken in await self.line.pending_takes():
            if now_ms() - taken.taken_at < STALE_TAKE_MS:
                continue
            session, chat_id = split_conversation_token(taken.token)
            keys = engine_keys_for(session, chat_id, self.shards, self.line.keys.prefix)
            state, agent_id = await self.redis.hmget(keys.state, "state", "agent_id")
            if state == State.AGENT.value.encode() and agent_id == taken.agent_id.encode():
                # Handled; only the confirmation step was lost.
                await self.line.confirm_taken(taken.token)
                continue
            await self.tell_assigned(taken)
            count += 1
        return count

    async def reconcile(self) -> tuple[int, int]:
        """Make every agent's set say what the conversations' own states say. -> (removed,
        added).

        The state hash is the truth: a handler commits `agent_id` cleared (close, handback,
        another agent) or set (an agent wrote) atomically with its message, and changes the
        agent's set only after the commit; a process killed in between leaves the set wrong
        for good. So:

        - a conversation in an agent's set whose state is not `agent` with that agent leaves
          the set (`line_unassign.lua`), unless an assignment of it is in flight (`taken`: its
          state catches up when the handler confirms) or it joined the set after the counter
          was read here (its state, read after the counter, predates the join);
        - a conversation changed since the previous pass whose state is `agent` with an agent
          that does not have it joins that agent's set. If it is closed and released between
          the read and the join, the next pass takes it out again.
        """
        line = self.line
        index = EngineIndexKeys(line.keys.prefix)
        started = now_ms()
        read_at = await line.counter()  # before every state read below
        agent_ids = [a.id for a in await line.agents()]
        held = await line.assignments(agent_ids)
        raw_since = await self.redis.get(line.keys.reconciled_until)
        since = int(raw_since) if raw_since else started - RECONCILE_FIRST_MS
        changed = await self.redis.zrangebyscore(
            index.conversations, since - RECONCILE_LOOKBACK_MS, "+inf"
        )
        tokens = sorted(
            {t for members in held.values() for t in members} | {as_text(c) for c in changed}
        )
        owner: dict[str, str | None] = {}
        pipe = self.redis.pipeline(transaction=False)
        for token in tokens:
            session, chat_id = split_conversation_token(token)
            keys = engine_keys_for(session, chat_id, self.shards, line.keys.prefix)
            pipe.hmget(keys.state, "state", "agent_id")
        for token, (state, agent_id) in zip(tokens, await pipe.execute(), strict=True):
            with_agent = state is not None and state.decode() == State.AGENT.value
            owner[token] = agent_id.decode() if with_agent and agent_id else None
        removed = added = 0
        for agent_id, members in held.items():
            for token in sorted(members):
                if owner[token] == agent_id:
                    continue
                if await line.unassign(agent_id, token, read_at):
                    removed += 1
        for token, agent_id in owner.items():
            if agent_id is None or token in held.get(agent_id, ()):
                continue
            session, _ = split_conversation_token(token)
            if await line.attach(agent_id, session, token):
                added += 1
        if removed or added:
            # Counts only: tokens name customers' phone numbers, which stay out of logs.
            log.warning(
                "agents' sets reconciled with the conversations' states",
                extra={"freed": removed, "attached": added},
            )
        await line.prune_joined(agent_ids)
        await self.redis.set(line.keys.reconciled_until, started)
        return removed, added

    async def maintain(self) -> None:
        """One pass of everything above, for the background loop."""
        lock = await self.redis.set(
            self.line.keys.reconcile_lock, uuid.uuid4().hex, nx=True, px=RECONCILE_INTERVAL_MS
        )
        if lock:
            await self.reconcile()
        # A team gone from a business file: its line's customers join the plain line, before
        # the opening's notices and the takes below.
        await self.line.rehome_stray_lines()
        await self.announce_opening()
        await self.assign_free_agents()
        for session in await self.line.sessions():
            await self.notify_positions(session)
        await self.resend_stale_takes()
