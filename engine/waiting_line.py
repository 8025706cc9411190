"""The waiting line: customers who need a person wait first-in first-out per WAHA session.

Capacity is agents online x conversations per agent (WSM_CONVERSATIONS_PER_AGENT). A free agent
always gets the longest-waiting conversation (line_take.lua picks the smallest score over the
lines it is given). Positions are ranks in a sorted set, so when someone leaves everyone behind
moves up without any rewrite; estimates come from the session's recent handling times.

Every change is one atomic script (shared/scripts/line_*.lua) under the line's own hash tag;
the conversation's own state is changed only by its handler, told through a queued command.
Joining an agent's set stamps the conversation with the line's counter (`joined`), which lets
the reconcile (engine/assignment.py) correct the sets after a crash without racing a take.

Teams (the business file's `teams`): each team has its own line per session (`team_waiting`)
next to the session's plain line (customers of a business with at most one team). An agent
takes from the plain lines and from their own teams' lines (`agent_teams`), never from another
team's. The business's hours (`hours`, engine/hours.py) are the line's too: its notices and its
timeout read them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine.agent.calendar import Team
from engine.hours import BusinessHours
from shared.clock import now_ms as now_ms
from shared.keys import LineKeys
from shared.lua import LuaScript

# Re-exported for api/app.py, api/console/* and engine/service.py until they import it from
# shared.clock (not this engineer's files in issue 13).
from shared.text import as_text

LINE_ENTER = LuaScript.named("line_enter")
LINE_LEAVE = LuaScript.named("line_leave")
LINE_TAKE = LuaScript.named("line_take")
LINE_RELEASE = LuaScript.named("line_release")
LINE_ATTACH = LuaScript.named("line_attach")
LINE_UNASSIGN = LuaScript.named("line_unassign")
LINE_JOINED_PRUNE = LuaScript.named("line_joined_prune")
LINE_REHOME = LuaScript.named("line_rehome")

# Handling times kept per session for the estimate.
HANDLING_SAMPLES = 20


class AgentUnavailable(Exception):
    """The agent cannot take a conversation now (terminal for that request)."""


class AgentOffline(AgentUnavailable):
    pass


class AgentAtCapacity(AgentUnavailable):
    pass


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    online: bool
    since: int
    conversations: int = 0
    teams: tuple[str, ...] = ()
    # Takes customers by hand ("Atender próximo" in the console): never given one by the
    # line's automatic assignment (WSM_AUTO_ASSIGN), which is for agents put online by the API.
    by_hand: bool = False

    def serves(self, team: str) -> bool:
        """Takes from this team's lines ("" = the plain line: everybody's)."""
        return not team or team in self.teams


@dataclass(frozen=True, slots=True)
class Taken:
    token: str
    agent_id: str
    agent_name: str
    entered_at: int
    taken_at: int

    @property
    def waited_seconds(self) -> float:
        return max(0.0, (self.taken_at - self.entered_at) / 1000)


@dataclass(frozen=True, slots=True)
class Waiting:
    token: str
    position: int
    entered_at: int
    team: str = ""


class WaitingLine:
    def __init__(
        self,
        # Any: redis-py's stubs type replies as bytes | str (and some arguments too narrowly).
        redis: Any,
        *,
        prefix: str,
        per_agent: int,
        default_handling_seconds: int,
        hours: BusinessHours | None = None,
        teams: Sequence[Team] = (),
        sessions: Mapping[str, tuple[BusinessHours, Sequence[Team]]] | None = None,
    ) -> None:
        self._redis = redis
        self.keys = LineKeys(prefix)
        self.per_agent = per_agent
        self.default_handling_seconds = default_handling_seconds
        # None: no business file, the line is always open.
        self.hours = hours
        self.teams = tuple(teams)
        # Sessions with a business of their own (engine/businesses.py): its hours and teams.
        self.sessions_own = {k: (h, tuple(t)) for k, (h, t) in (sessions or {}).items()}

    def for_session(self, session: str) -> WaitingLine:
        """The line as the session's business sees it (its hours and teams; the same Redis
        and keys): itself for a session of the default business."""
        own = self.sessions_own.get(session)
        if own is None:
            return self
        view = copy.copy(self)
        view.hours, view.teams = own
        return view

    def line_key(self, session: str, team: str = "") -> str:
        return self.keys.team_waiting(session, team) if team else self.keys.waiting(session)

    def team_ids(self, session: str | None = None) -> list[str]:
        """The session's lines: the plain one ("") and each team's."""
        teams = self.for_session(session).teams if session is not None else self.teams
        return ["", *(t.id for t in teams)]

    def teams_in_use(self, session: str) -> set[str]:
        """The teams whose lines the session's customers enter: its business's teams when it
        has more than one (with one or none, everybody waits in the plain line)."""
        teams = self.for_session(session).teams
        return {t.id for t in teams} if len(teams) > 1 else set()

    def is_open(self, at_ms: int) -> bool:
        return self.hours is None or self.hours.is_open(at_ms)

    def declared_teams(self) -> list[str]:
        """Every team id a business file declares (the default business's and each of its
        own), sorted."""
        own = (team for _, teams in self.sessions_own.values() for team in teams)
        return sorted({team.id for team in (*self.teams, *own)})

    def unknown_teams(self, teams: Sequence[str]) -> str:
        """Why `teams` cannot be an agent's, for the one who named them (a typo would leave the
        agent taking from a line nobody ever joins); empty when every one is declared."""
        declared = self.declared_teams()
        unknown = sorted(set(teams) - set(declared))
        if not unknown:
            return ""
        which = ", ".join(declared) if declared else "no teams"
        return f"unknown team {', '.join(unknown)}: the business files declare {which}"

    # --- customers -------------------------------------------------------------------------
    async def enter(self, session: str, token: str, at_ms: int, team: str = "") -> tuple[int, int]:
        """Join the back of the line, or of `team`'s (a repeat keeps the place).
        -> (position, entered_at)."""
        keys = [self.line_key(session, team), self.keys.sessions, self.keys.sequence]
        if team:
            keys.append(self.keys.team_lines)
        position, entered_at = await LINE_ENTER(self._redis, keys, [token, at_ms, session])
        return int(position), int(entered_at)

    async def rehome_stray_lines(self) -> int:
        """Move the customers of every team line its session's business no longer uses (a
        team gone from the business file; one team left) to the session's plain line, each
        keeping their entry time: nobody waits where no line's code looks and no agent may
        take. -> how many moved."""
        moved = 0
        for raw in await self._redis.smembers(self.keys.team_lines):
            key = as_text(raw)
            found = self.keys.split_team_waiting(key)
            if found is None or found[1] in self.teams_in_use(found[0]):
                continue
            keys = [key, self.line_key(found[0]), self.keys.team_lines]
            moved += int(await LINE_REHOME(self._redis, keys, []))
        return moved

    async def leave(self, session: str, token: str) -> int:
        """Leave the line (whichever of the session's it is in); the position it had, 0 when
        it was in none."""
        for team in self.team_ids(session):
            gone = int(await LINE_LEAVE(self._redis, [self.line_key(session, team)], [token]))
            if gone:
                return gone
        return 0

    async def locate(self, session: str, token: str) -> tuple[str, int] | None:
        """(team, position) of a customer in the session's lines; None when in none."""
        teams = self.team_ids(session)
        pipe = self._redis.pipeline(transaction=False)
        for team in teams:
            pipe.zrank(self.line_key(session, team), token)
        for team, rank in zip(teams, await pipe.execute(), strict=True):
            if rank is not None:
                return team, int(rank) + 1
        return None

    async def position(self, session: str, token: str) -> int | None:
        found = await self.locate(session, token)
        return None if found is None else found[1]

    async def members(self, session: str, team: str | None = None) -> list[Waiting]:
        """Who waits, front first, each line's positions its own: one team's line ("" = the
        plain one), or every line of the session (None)."""
        out: list[Waiting] = []
        for line_team in self.team_ids(session) if team is None else [team]:
            raw = await self._redis.zrange(
                self.line_key(session, line_team), 0, -1, withscores=True
            )
            out += [
                Waiting(as_text(member), n + 1, int(score) // 1000, line_team)
                for n, (member, score) in enumerate(raw)
            ]
        return out

    async def length(self, session: str) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for team in self.team_ids(session):
            pipe.zcard(self.line_key(session, team))
        return sum(int(n) for n in await pipe.execute())

    async def sessions(self) -> list[str]:
        return sorted(as_text(s) for s in await self._redis.smembers(self.keys.sessions))

    # --- agents ----------------------------------------------------------------------------
    async def set_online(
        self,
        agent_id: str,
        name: str | None,
        at_ms: int,
        teams: Sequence[str] | None = None,
        *,
        by_hand: bool = False,
    ) -> Agent:
        """Online; `teams` (when given) replaces the agent's teams, None keeps them. `by_hand`:
        the agent takes customers themself (Agent.by_hand)."""
        if teams is not None:
            await self.set_teams(agent_id, teams)
        raw = await self._redis.hget(self.keys.agents, agent_id)
        previous = orjson.loads(raw) if raw else {}
        agent_name = str(name or previous.get("name") or agent_id)
        record = {"name": agent_name, "online": True, "since": at_ms, "by_hand": by_hand}
        await self._redis.hset(self.keys.agents, agent_id, orjson.dumps(record))
        return Agent(
            agent_id, agent_name, True, at_ms, teams=await self.teams_of(agent_id), by_hand=by_hand
        )

    async def set_teams(self, agent_id: str, teams: Sequence[str]) -> None:
        unique = sorted(set(teams))
        if unique:
            await self._redis.hset(self.keys.agent_teams, agent_id, orjson.dumps(unique))
        else:
            await self._redis.hdel(self.keys.agent_teams, agent_id)

    async def teams_of(self, agent_id: str) -> tuple[str, ...]:
        raw = await self._redis.hget(self.keys.agent_teams, agent_id)
        return tuple(orjson.loads(raw)) if raw else ()

    async def set_offline(self, agent_id: str, at_ms: int) -> Agent:
        raw = await self._redis.hget(self.keys.agents, agent_id)
        previous = orjson.loads(raw) if raw else {}
        agent_name = str(previous.get("name") or agent_id)
        record = {"name": agent_name, "online": False, "since": at_ms}
        await self._redis.hset(self.keys.agents, agent_id, orjson.dumps(record))
        return Agent(agent_id, agent_name, False, at_ms)

    async def agents(self) -> list[Agent]:
        raw = {
            as_text(k): orjson.loads(v)
            for k, v in (await self._redis.hgetall(self.keys.agents)).items()
        }
        teams = {
            as_text(k): tuple(orjson.loads(v))
            for k, v in (await self._redis.hgetall(self.keys.agent_teams)).items()
        }
        ids = sorted(raw)
        loads: list[int] = []
        if ids:
            pipe = self._redis.pipeline(transaction=False)
            for agent_id in ids:
                pipe.scard(self.keys.agent_conversations(agent_id))
            loads = await pipe.execute()
        return [
            Agent(
                id=agent_id,
                name=str(raw[agent_id].get("name") or agent_id),
                online=bool(raw[agent_id].get("online")),
                since=int(raw[agent_id].get("since", 0)),
                conversations=int(load),
                teams=teams.get(agent_id, ()),
                by_hand=bool(raw[agent_id].get("by_hand")),
            )
            for agent_id, load in zip(ids, loads, strict=True)
        ]

    async def free_agents(self) -> list[Agent]:
        """Online agents below capacity who are given customers (not `by_hand`), least loaded
        first (then longest online)."""
        free = [
            a
            for a in await self.agents()
            if a.online and not a.by_hand and a.conversations < self.per_agent
        ]
        return sorted(free, key=lambda a: (a.conversations, a.since, a.id))

    async def online_count(self, team: str = "") -> int:
        """Agents online who take from `team`'s lines ("" = the plain line: all of them)."""
        return sum(1 for a in await self.agents() if a.online and a.serves(team))

    async def take(
        self,
        agent_id: str,
        sessions: Sequence[str],
        at_ms: int,
        token: str | None = None,
    ) -> Taken | None:
        """The longest-waiting conversation over `sessions` (or `token`) for this agent, in the
        plain lines and the agent's teams' lines only; None when nobody waits there. Raises
        AgentOffline / AgentAtCapacity, also when nobody waits or no session has a line (the
        script checks the agent first, with no line to look at): an offline agent asking for
        the next customer is told so, not "nobody waits"."""
        teams = ["", *await self.teams_of(agent_id)]
        lines = [self.line_key(s, team) for s in sessions for team in teams]
        result = await LINE_TAKE(
            self._redis,
            [
                self.keys.agents,
                self.keys.taken,
                self.keys.agent_conversations(agent_id),
                self.keys.joined,
                self.keys.sequence,
                *lines,
            ],
            [agent_id, at_ms, self.per_agent, token or ""],
        )
        first = as_text(result[0])
        if first == "!offline":
            raise AgentOffline(agent_id)
        if first == "!full":
            raise AgentAtCapacity(agent_id)
        if first == "!empty":
            return None
        raw = await self._redis.hget(self.keys.taken, first)
        record = orjson.loads(raw) if raw else {}
        return Taken(
            token=first,
            agent_id=agent_id,
            agent_name=str(record.get("name") or agent_id),
            entered_at=int(result[1]),
            taken_at=at_ms,
        )

    async def pending_takes(self) -> list[Taken]:
        """Assignments whose conversation has not confirmed them yet."""
        raw = await self._redis.hgetall(self.keys.taken)
        takes = []
        for token, value in raw.items():
            record = orjson.loads(value)
            takes.append(
                Taken(as_text(token), str(record["agent"]), str(record.get("name") or ""),
                      int(record.get("entered_at", 0)), int(record.get("at", 0)))
            )  # fmt: skip
        return sorted(takes, key=lambda t: t.taken_at)

    async def confirm_taken(self, token: str) -> None:
        await self._redis.hdel(self.keys.taken, token)

    async def release(
        self, agent_id: str, session: str, token: str, handled_seconds: float | None
    ) -> bool:
        removed = await LINE_RELEASE(
            self._redis,
            [
                self.keys.agent_conversations(agent_id),
                self.keys.taken,
                self.keys.handling_times(session),
            ],
            [token, -1 if handled_seconds is None else round(handled_seconds, 3), HANDLING_SAMPLES],
        )
        return bool(removed)

    async def attach(self, agent_id: str, session: str, token: str) -> bool:
        """An agent writes to a conversation directly: it counts against their capacity.
        True when it was not in the agent's set yet."""
        added = await LINE_ATTACH(
            self._redis,
            [
                self.keys.agent_conversations(agent_id),
                self.keys.joined,
                self.keys.sequence,
                self.keys.sessions,
            ],
            [token, session],
        )
        return bool(added)

    # --- hours ------------------------------------------------------------------------------
    async def mark_hours(self, is_open: bool, own: str = "") -> None:
        """Record whether the business is open now (`own`: the session of a business of its
        own). The switch from closed to open is when the line tells everyone their place
        again (LineCoordinator.announce_opening)."""
        await self._redis.set(self._hours_key(own), "open" if is_open else "closed")

    async def hours_seen(self, own: str = "") -> str | None:
        """What `mark_hours` recorded last ("open", "closed"; None: never)."""
        raw = await self._redis.get(self._hours_key(own))
        return None if raw is None else as_text(raw)

    def hours_owner(self, session: str) -> str:
        """`mark_hours`'s `own` for a session: itself when its business is its own, "" when
        it is the default business's (whose record every other session shares)."""
        return session if session in self.sessions_own else ""

    def _hours_key(self, own: str) -> str:
        return f"{self.keys.hours_state}:{own}" if own else self.keys.hours_state

    # --- reconcile (engine/assignment.py) --------------------------------------------------
    async def counter(self) -> int:
        """The line's event counter: read before conversations' states, it tells which agent
        sets' members joined after those reads (`line_unassign.lua`)."""
        return int(await self._redis.get(self.keys.sequence) or 0)

    async def assignments(self, agent_ids: Sequence[str]) -> dict[str, set[str]]:
        """Each agent's set of conversations."""
        if not agent_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.smembers(self.keys.agent_conversations(agent_id))
        sets = await pipe.execute()
        return {
            agent_id: {as_text(t) for t in members}
            for agent_id, members in zip(agent_ids, sets, strict=True)
        }

    async def unassign(self, agent_id: str, token: str, read_at: int) -> bool:
        """Take `token` out of the agent's set unless it is being assigned or joined after
        `read_at` (the counter read before its state was). No handling time is recorded."""
        removed = await LINE_UNASSIGN(
            self._redis,
            [self.keys.agent_conversations(agent_id), self.keys.taken, self.keys.joined],
            [token, read_at],
        )
        return bool(removed)

    async def prune_joined(self, agent_ids: Sequence[str]) -> int:
        """Forget join stamps of conversations no agent has (they grow with every release)."""
        return int(
            await LINE_JOINED_PRUNE(
                self._redis,
                [self.keys.joined, *[self.keys.agent_conversations(a) for a in agent_ids]],
                [],
            )
        )

    # --- estimates -------------------------------------------------------------------------
    async def average_handling_seconds(self, session: str) -> float:
        samples = await self._redis.lrange(self.keys.handling_times(session), 0, -1)
        values = [float(as_text(s)) for s in samples]
        if not values:
            return float(self.default_handling_seconds)
        return max(1.0, sum(values) / len(values))

    async def estimate_minutes(self, session: str, position: int, team: str = "") -> int:
        """Minutes until a person answers someone at `position` of `team`'s line: each of the
        capacity's slots frees up once per average handling time. Never less than 1 ("cerca
        de 1 min"). With nobody online this counts one agent: callers tell the customer that
        nobody is online instead (`online_count`)."""
        capacity = max(1, await self.online_count(team) * self.per_agent)
        average = await self.average_handling_seconds(session)
        return max(1, math.ceil(position * average / capacity / 60))
