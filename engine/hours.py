"""The business's opening hours as the waiting line sees them: open now or not, when it opens
next (in words: "amanhã às 08:00"), when it last closed, and how much open time passed between
two moments (the line's timeout counts only that).

The hours, the closed days and the holidays (explicit and from the `holidays` package) are the
calendar's (engine/agent/calendar.py, the business file); this only reads them. Times are epoch
milliseconds in and out, like the rest of the engine, so tests drive them with the engine's clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from engine.agent.calendar import LONG_DAY_NAMES, Calendar

# How far the searches for the next opening / the last closing look (a business closed for
# longer than this is treated as never opening again: no "opens on" to tell).
SEARCH_DAYS = 370
# How many intervals back to back (one to 24:00 and the next day's from 00:00; 12:00 and
# 12:00) `closes_at` follows to the real closing: a business open around the clock for longer
# than that is not closing soon.
BACK_TO_BACK = 16

_TODAY = {"pt-BR": "hoje às {time}", "en": "today at {time}"}
_TOMORROW = {"pt-BR": "amanhã às {time}", "en": "tomorrow at {time}"}
_THIS_WEEK = {"pt-BR": "{weekday} às {time}", "en": "{weekday} at {time}"}
_LATER = {"pt-BR": "{weekday}, {date} às {time}", "en": "{weekday} {date} at {time}"}


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def wall_clock_ms(naive: datetime, tz: ZoneInfo) -> int:
    """The moment (ms) a business's clock shows `naive`. A time the clock skips (02:30 on the
    night it jumps from 02:00 to 03:00) is when the clock reaches it: the jump's end (03:00), not
    PEP 495's reading with the offset before the jump (03:30), which would open or close a
    business half an hour after its own clock passed its hours. A time shown twice (the night
    it falls back) is its first time."""
    moment = naive.replace(tzinfo=tz)
    at = _ms(moment)
    if datetime.fromtimestamp(at / 1000, tz).replace(tzinfo=None) == naive:
        return at
    # Skipped: the jump lies between the two readings (the later offset's, the earlier's);
    # found to the second (zones change on whole seconds).
    low, high = int(naive.replace(tzinfo=tz, fold=1).timestamp()), at // 1000
    before = moment.utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high * 1000


class BusinessHours:
    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar
        self.tz = calendar.tz

    # --- intervals -------------------------------------------------------------------------
    def _day(self, at_ms: int) -> date:
        return datetime.fromtimestamp(at_ms / 1000, self.tz).date()

    def intervals(self, day: date) -> list[tuple[int, int]]:
        """The day's open intervals as epoch ms (none on a closed day or a holiday)."""
        if not self.calendar.is_open_day(day):
            return []
        midnight = datetime.combine(day, time())
        spans = (
            (
                wall_clock_ms(midnight + timedelta(minutes=begin), self.tz),
                wall_clock_ms(midnight + timedelta(minutes=end), self.tz),
            )
            for begin, end in self.calendar.hours.get(day.weekday(), ())
        )
        # An interval inside the hour a clock skips (02:00-02:45 that night) is not there.
        return [(begin, end) for begin, end in spans if end > begin]

    def _days(self, start: date, step: int) -> Iterator[date]:
        for n in range(SEARCH_DAYS):
            yield start + timedelta(days=n * step)

    # --- questions -------------------------------------------------------------------------
    def is_open(self, at_ms: int) -> bool:
        return any(begin <= at_ms < end for begin, end in self.intervals(self._day(at_ms)))

    def opened_at(self, at_ms: int) -> int:
        """When the interval open at `at_ms` began (ms); 0 when closed."""
        for begin, end in self.intervals(self._day(at_ms)):
            if begin <= at_ms < end:
                return begin
        return 0

    def closes_at(self, at_ms: int) -> int:
        """When the business closes after `at_ms` (ms); 0 when closed. An interval that ends
        where the next begins (fri 18:00-24:00, sat 00:00-02:00) is no closing: it closes at
        the end of the last of them (up to BACK_TO_BACK of them)."""
        end = 0
        for _ in range(BACK_TO_BACK):
            following = next((e for b, e in self.intervals(self._day(at_ms)) if b <= at_ms < e), 0)
            if not following:
                break
            end = at_ms = following
        return end

    def next_opening(self, at_ms: int) -> int | None:
        """The first opening after `at_ms` (ms), None when none is within SEARCH_DAYS."""
        for day in self._days(self._day(at_ms), 1):
            for begin, _ in self.intervals(day):
                if begin > at_ms:
                    return begin
        return None

    def last_closing(self, at_ms: int) -> int:
        """When the business last closed at or before `at_ms` (ms); 0 when never."""
        for day in self._days(self._day(at_ms), -1):
            ends = [end for _, end in self.intervals(day) if end <= at_ms]
            if ends:
                return max(ends)
        return 0

    def open_ms_between(self, start_ms: int, end_ms: int) -> int:
        """Open time between two moments (ms)."""
        if end_ms <= start_ms:
            return 0
        total = 0
        day, last = self._day(start_ms), self._day(end_ms)
        while day <= last:
            for begin, end in self.intervals(day):
                total += max(0, min(end, end_ms) - max(begin, start_ms))
            day += timedelta(days=1)
        return total

    def deadline(self, start_ms: int, open_ms: int) -> int | None:
        """The moment `open_ms` of open time have passed since `start_ms`; None when the
        business does not open enough within SEARCH_DAYS."""
        left = open_ms
        for day in self._days(self._day(start_ms), 1):
            for begin, end in self.intervals(day):
                begin = max(begin, start_ms)
                if end <= begin:
                    continue
                if end - begin >= left:
                    return begin + left
                left -= end - begin
        return None

    # --- words -----------------------------------------------------------------------------
    def clock_label(self, at_ms: int) -> str:
        """The local time of day at `at_ms`, as the texts show it: "12:00"."""
        return datetime.fromtimestamp(at_ms / 1000, self.tz).strftime("%H:%M")

    def opening_label(self, at_ms: int, opening_ms: int, language: str) -> str:
        """When it opens, as people say it: "amanhã às 08:00", "segunda às 08:00"."""
        lang = language if language in _TODAY else "pt-BR"
        opening = datetime.fromtimestamp(opening_ms / 1000, self.tz)
        days = (opening.date() - self._day(at_ms)).days
        clock = opening.strftime("%H:%M")
        weekday = LONG_DAY_NAMES[lang][opening.weekday()]
        if days <= 0:
            return _TODAY[lang].format(time=clock)
        if days == 1:
            return _TOMORROW[lang].format(time=clock)
        if days < 7:
            return _THIS_WEEK[lang].format(weekday=weekday, time=clock)
        shown = opening.strftime("%m/%d" if lang == "en" else "%d/%m")
        return _LATER[lang].format(weekday=weekday, date=shown, time=clock)
