"""What the background passes that send proactive messages share: the reminders
(engine/agent/reminders.py) and the freed-slots offers (engine/agent/freed_slots.py).

- **One pass at a time.** Every worker process runs each pass every second; a lock in Redis
  (SET NX PX, PASS_LOCK_MS) lets one of them through, the others skip that round.
- **One pace per session.** Proactive messages are the kind an unofficial WhatsApp number (WAHA
  drives WhatsApp Web) is banned for when many go out at once. So on top of the sender's
  per-session limit, reminders and offers together take from one token bucket per session
  (WSM_REMINDER_PACE per minute, send_rate_take.lua, burst of one); what does not fit waits for
  the next pass.
- **Reading past a session out of pace.** What a session out of pace cannot send stays in the
  pass's sorted set, at its head. So a pass reads on past it (`read_on`: pages of PAGE, at most
  SCAN_LIMIT entries a pass): one session's backlog does not hold back another session's
  messages. A backlog longer than SCAN_LIMIT is read in turns (this process's next pass starts
  where this one stopped).
- **The words of the booking's business**, in its time zone, loaded once per business.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from datetime import datetime
from typing import Any

from engine.agent.bookings import Booking
from engine.agent.texts import AgentTexts, load_agent_texts
from engine.businesses import Business, Businesses
from engine.commands import CommandQueue
from shared.clock import now_ms
from shared.keys import CalendarKeys, WahaSessionKeys
from shared.lua import LuaScript
from shared.redis_client import RedisClient
from shared.settings import Settings
from shared.text import as_text

# One pass over all processes at a time (they all run it every second).
PASS_LOCK_MS = 900
# Entries of its sorted set one pass reads, at most, and how many at a time (one round trip for
# a page's bookings). Bounded because the entries of a session out of pace are read and passed
# over again by every pass until their turn comes.
SCAN_LIMIT = 1000
PAGE = 200

# One entry of a pass's sorted set: (booking id, score, the booking's hash) -> whether it is
# gone from the set (sent or dropped), or left in it (its session is out of pace).
Handle = Callable[[str, int, dict[Any, Any]], Awaitable[bool]]

RATE_TAKE = LuaScript.named("send_rate_take")


@dataclass(eq=False)
class ProactivePass:
    """The parts of a pass that queues proactive messages as commands of their conversation."""

    redis: RedisClient
    queue: CommandQueue
    businesses: InitVar[Businesses]
    _: KW_ONLY
    prefix: str
    language: str
    pace_per_minute: float
    # Where this process's next pass starts reading its sorted set (an offset past the entries
    # left in it, i.e. out of pace); 0: from the head.
    _resume: int = field(default=0, init=False)

    def __post_init__(self, businesses: Businesses) -> None:
        self.keys = CalendarKeys(self.prefix)
        self._businesses = {b.id: b for b in businesses.all()}
        self._default = businesses.default
        self._texts: dict[str, AgentTexts] = {}

    @staticmethod
    def options(settings: Settings) -> dict[str, Any]:
        """The keyword arguments every pass takes from the settings."""
        return {
            "prefix": settings.key_prefix,
            "language": settings.language,
            "pace_per_minute": settings.reminder_pace,
        }

    @property
    def lock(self) -> str:
        """The pass's lock key."""
        raise NotImplementedError

    async def run_pass(self, now: int) -> dict[str, int]:
        """One pass at `now` -> what it did."""
        raise NotImplementedError

    async def run_once(self, *, now: int | None = None, force: bool = False) -> dict[str, int]:
        """One pass -> what it did. Skipped while another process runs one (unless `force`,
        for tests and tools): {}."""
        if not force and not await self.redis.set(
            self.lock, uuid.uuid4().hex, nx=True, px=PASS_LOCK_MS
        ):
            return {}
        return await self.run_pass(now_ms() if now is None else now)

    async def paced(self, session: str) -> bool:
        """Whether the session may send one more proactive message now (takes it)."""
        if self.pace_per_minute <= 0:
            return True
        wait = await RATE_TAKE(
            self.redis,
            [WahaSessionKeys(session, self.prefix).reminder_rate],
            [self.pace_per_minute / 60, 1],
        )
        return int(wait) == 0

    async def read_on(self, key: str, until: int | str, limit: int, handle: Handle) -> None:
        """Hand the entries of the sorted set `key` (booking id -> score, up to `until`) to
        `handle`, lowest score first, page by page with their bookings, reading on past the
        ones it leaves in the set, until `limit` are gone from it or SCAN_LIMIT are read."""
        offset = self._resume  # entries before it stay (out of pace), so reading goes on past
        read = handled = 0
        self._resume = 0
        while read < SCAN_LIMIT and handled < limit:
            want = min(PAGE, SCAN_LIMIT - read)
            # (member, score) pairs; redis-py's stubs do not type WITHSCORES replies.
            page: list[tuple[bytes, float]] = await self.redis.zrangebyscore(
                key, "-inf", until, start=offset, num=want, withscores=True
            )  # type: ignore[assignment]
            if not page and offset and not read:
                offset = 0  # the backlog shrank below where the last pass stopped
                continue
            if not page:
                return
            pipe = self.redis.pipeline(transaction=False)
            for raw, _ in page:
                pipe.hgetall(self.keys.booking(as_text(raw)))
            found = await pipe.execute()
            for (raw, score), values in zip(page, found, strict=True):
                read += 1
                if await handle(as_text(raw), int(score), values):
                    handled += 1  # gone from the set
                else:
                    offset += 1
                if handled >= limit:
                    return
            if len(page) < want:
                return  # read to the end
        # Stopped at SCAN_LIMIT with more to read: this process's next pass reads on from here,
        # so a backlog longer than one pass reads is read in turns, not only its head.
        self._resume = offset

    def render(self, name: str, business: Business, booking: Booking) -> str:
        """The text `name` about the booking, in its business's words and time zone."""
        calendar = business.calendar
        texts = self._texts.get(business.id)
        if texts is None:
            texts = self._texts[business.id] = load_agent_texts(self.language, calendar.texts)
        start = datetime.fromtimestamp(booking.start_ms / 1000, calendar.tz)
        return texts.render(
            name,
            business=calendar.business_name,
            service=booking.service_name,
            when=calendar.label(start, self.language),
        )


__all__ = ["PAGE", "PASS_LOCK_MS", "SCAN_LIMIT", "Handle", "ProactivePass"]
