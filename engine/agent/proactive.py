"""What the background passes that send proactive messages share: the reminders
(engine/agent/reminders.py) and the freed-slots offers (engine/agent/freed_slots.py).

- **One pass at a time.** Every worker process runs each pass every second; a lock in Redis
  (SET NX PX, PASS_LOCK_MS) lets one of them through, the others skip that round.
- **One pace per session.** Proactive messages are the kind an unofficial WhatsApp number (WAHA
  drives WhatsApp Web) is banned for when many go out at once. So on top of the sender's
  per-session limit, reminders and offers together take from one token bucket per session
  (WSM_REMINDER_PACE per minute, send_rate_take.lua, burst of one); what does not fit waits for
  the next pass.
- **The words of the booking's business**, in its time zone, loaded once per business.
"""

from __future__ import annotations

import uuid
from dataclasses import KW_ONLY, InitVar, dataclass
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

# One pass over all processes at a time (they all run it every second).
PASS_LOCK_MS = 900

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


__all__ = ["PASS_LOCK_MS", "ProactivePass"]
