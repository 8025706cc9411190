"""The business's calendar: services, opening hours, slot length, how far ahead customers may
book, holidays, time zone, and the business's description for the agent's prompt.

It comes from a YAML or TOML file (WSM_CALENDAR_FILE; documented example:
config/calendar.example.yaml). Without a file, a default calendar is built from the menu's
settings (WSM_BUSINESS_NAME, WSM_MENU_SERVICES), open Monday to Friday, 8h to 18h.

Slots are computed, never stored: a slot is a start time inside an opening interval, on the
slot grid (interval start + k x slot length), with room for the whole service before the
interval ends, at least `min_notice_minutes` from now and within `days_ahead`. A slot's id is
its local start, `YYYY-MM-DDTHH:MM` in the business's time zone: the model and the menu pass
that string, and code checks it against these rules (InvalidSlot) before anything is booked.
The grid is the business's wall clock, so each local time is offered once, also the hour the
clocks repeat on the night they fall back (its first time). A slot the clocks skip on the
night they spring forward (02:30 in New York, 01:30 in Lisbon), or a longer service running
across the jump, is not a time anyone can come at: never offered, refused if asked for (found
by an audit). Brazil has no daylight saving time now, but the time zone is the business's.
Which slots are taken lives in Redis (engine/agent/bookings.py).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.clock import DAY_MS
from shared.text import fold

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {
    "pt-BR": ("seg", "ter", "qua", "qui", "sex", "sáb", "dom"),
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
}
LONG_DAY_NAMES = {
    "pt-BR": ("segunda", "terça", "quarta", "quinta", "sexta", "sábado", "domingo"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}


class CalendarFileError(ValueError):
    """The calendar file cannot be used (terminal: fix the file; wsm refuses to start)."""


class InvalidSlot(ValueError):
    """A start time that is not a bookable slot of this calendar (the caller's mistake)."""


# --- the file ---------------------------------------------------------------------------------


class _Business(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=120)
    description: str = Field("", max_length=4000)
    # Off: this business's customers get the scheduling menu only (no model calls).
    agent: bool = True


class _Service(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    name: str = Field(min_length=1, max_length=80)
    description: str = Field("", max_length=500)
    duration_minutes: int | None = Field(None, gt=0, le=24 * 60)


class _Team(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    name: str = Field(min_length=1, max_length=80)


class _PublicHolidays(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # ISO 3166-1 country code and, optionally, the subdivision (state): BR, SP.
    country: str = Field(min_length=2, max_length=3)
    subdivision: str | None = Field(None, max_length=10)
    # The package's categories. Left out: "public", and "optional" where the country has it:
    # in Brazil Carnaval and Corpus Christi are "optional" (pontos facultativos), which most
    # businesses close on. `[public]` opens on them.
    categories: list[str] | None = Field(None, min_length=1)


class _CalendarFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    business: _Business
    timezone: str = "America/Sao_Paulo"
    slot_minutes: int = Field(30, ge=5, le=24 * 60)
    days_ahead: int = Field(14, ge=1, le=366)
    min_notice_minutes: int = Field(60, ge=0)
    hours: dict[str, list[str]]
    holidays: list[date] = Field(default_factory=list)
    # Holidays of the `holidays` package for a country (and state), on top of `holidays`.
    public_holidays: _PublicHolidays | None = None
    services: list[_Service] = Field(min_length=1)
    # Who customers can ask for (each team has its own waiting line).
    teams: list[_Team] = Field(default_factory=list)
    # Overrides of the agent's texts, per language (engine/agent/texts.py).
    texts: dict[str, dict[str, str]] = Field(default_factory=dict)
    # A booking of today cancelled ahead of its time is offered to the customers waiting in
    # the session's line (engine/agent/freed_slots.py). Off unless the business turns it on.
    offer_freed_slots: bool = False

    @field_validator("hours")
    @classmethod
    def _known_days(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = set(value) - set(WEEKDAYS)
        if unknown:
            raise ValueError(f"unknown day(s) {sorted(unknown)}; use {', '.join(WEEKDAYS)}")
        return value


# --- the calendar -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    description: str
    minutes: int


@dataclass(frozen=True, slots=True)
class Slot:
    service: Service
    start: datetime  # aware, in the business's time zone
    # Every grid slot the service occupies, as "HH:MM" of that day (what Redis marks taken).
    steps: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.start.strftime("%Y-%m-%dT%H:%M")

    @property
    def day(self) -> str:
        return self.start.strftime("%Y-%m-%d")

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)


# "08:00", "8:00" or "8"; 24:00 only ends an interval.
_TIME = re.compile(r"(\d{1,2})(?::(\d{2}))?")


def _minutes(text: str) -> int:
    """Minutes after midnight of "HH:MM" (ValueError saying what is wrong)."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a time of day (HH:MM)")
    hours, minutes = int(match[1]), int(match[2] or 0)
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{text.strip()!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _interval(text: str, day: str) -> tuple[int, int]:
    """One opening interval of `day`, "HH:MM-HH:MM", inside that day (ValueError)."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r}: an opening interval is 'HH:MM-HH:MM'")
    try:
        first, last = _minutes(start), _minutes(end)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if first == 24 * 60:
        raise ValueError(f"{text!r}: 24:00 only ends an interval (the next day starts at 00:00)")
    if last < first:
        following = WEEKDAYS[(WEEKDAYS.index(day) + 1) % len(WEEKDAYS)]
        raise ValueError(
            f"{text!r} ends before it starts; an interval ends on its own day, so hours past "
            f'midnight are written {day}: ["{start.strip()}-24:00"] and {following}: '
            f'["00:00-{end.strip()}"]'
        )
    if last == first:
        raise ValueError(f"{text!r} ends before it starts")
    return first, last


def _day_intervals(day: str, texts: Sequence[str]) -> list[tuple[int, int]]:
    """A day's intervals, in order, none overlapping another (ValueError naming the two):
    an overlap would count its open time twice (the line's timeout, its estimates)."""
    spans = sorted((_interval(text, day), text) for text in texts)
    for (previous, before), (current, text) in itertools.pairwise(spans):
        if current[0] < previous[1]:
            raise ValueError(f"{text!r} overlaps {before!r}")
    return [span for span, _ in spans]


class _Named(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)


def by_ref(items: Iterable[_N], ref: str) -> _N | None:
    """The first of `items` whose id or name is `ref`, ignoring case and accents (services and
    teams are named either way by customers and by the model)."""
    wanted = fold(ref)
    return next((item for item in items if wanted in (fold(item.id), fold(item.name))), None)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Calendar:
    def __init__(
        self,
        *,
        business_name: str,
        description: str,
        timezone: str,
        slot_minutes: int,
        days_ahead: int,
        min_notice_minutes: int,
        hours: Mapping[int, Sequence[tuple[int, int]]],
        holidays: Sequence[date],
        services: Sequence[Service],
        texts: Mapping[str, Mapping[str, str]] | None = None,
        teams: Sequence[Team] = (),
        public_holidays: tuple[str, str | None, Sequence[str] | None] | None = None,
        agent_enabled: bool = True,
        offer_freed_slots: bool = False,
    ) -> None:
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise CalendarFileError(f"unknown time zone {timezone!r}") from exc
        self.business_name = business_name
        self.description = description
        self.agent_enabled = agent_enabled
        self.offer_freed_slots = offer_freed_slots
        self.timezone = timezone
        self.slot_minutes = slot_minutes
        self.days_ahead = days_ahead
        self.min_notice = timedelta(minutes=min_notice_minutes)
        self.hours = {day: sorted(intervals) for day, intervals in hours.items()}
        self.holidays = frozenset(holidays)
        self.teams = tuple(teams)
        self.public_holidays = _public_holidays(public_holidays)
        self.services = list(services)
        self.texts = {k: dict(v) for k, v in (texts or {}).items()}
        for service in self.services:
            if service.minutes % slot_minutes:
                raise CalendarFileError(
                    f"service {service.id!r}: duration {service.minutes} min is not a multiple "
                    f"of slot_minutes ({slot_minutes})"
                )

    # --- lookups --------------------------------------------------------------------------
    def service(self, ref: str) -> Service | None:
        """A service by its id or its name, ignoring case and accents."""
        return by_ref(self.services, ref)

    def now(self) -> datetime:
        return datetime.now(self.tz)

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.tz)

    def window(self, now: datetime) -> tuple[date, date]:
        """The first and last day customers may book on."""
        today = self.local(now).date()
        return today, today + timedelta(days=self.days_ahead)

    def is_holiday(self, day: date) -> bool:
        if day in self.holidays:
            return True
        return self.public_holidays is not None and day in self.public_holidays

    def holidays_in(self, first: date, last: date) -> list[date]:
        """The holidays from `first` to `last` (both included): the business's own and the
        public ones of its `public_holidays`."""
        days = (first + timedelta(days=n) for n in range((last - first).days + 1))
        return [day for day in days if self.is_holiday(day)]

    def is_open_day(self, day: date) -> bool:
        return not self.is_holiday(day) and bool(self.hours.get(day.weekday()))

    def team(self, ref: str) -> Team | None:
        """A team by its id or its name, ignoring case and accents."""
        return by_ref(self.teams, ref)

    # --- slots ----------------------------------------------------------------------------
    def _steps(self, service: Service, start_minute: int) -> tuple[str, ...]:
        count = service.minutes // self.slot_minutes
        return tuple(_clock(start_minute + n * self.slot_minutes) for n in range(count))

    def _slot(self, service: Service, day: date, start_minute: int) -> Slot:
        naive = datetime.combine(day, time()) + timedelta(minutes=start_minute)
        return Slot(service, naive.replace(tzinfo=self.tz), self._steps(service, start_minute))

    def _clock_changes(self, day: date) -> bool:
        """Whether the business's clock jumps or falls back on `day` (it is not 24 h long)."""
        from engine.hours import wall_clock_ms  # engine.hours imports this module

        midnight = datetime.combine(day, time())
        length = wall_clock_ms(midnight + timedelta(days=1), self.tz) - wall_clock_ms(
            midnight, self.tz
        )
        return length != DAY_MS

    def _exists(self, slot: Slot) -> bool:
        """Whether every grid slot the service takes is a time the business's clock shows
        that day: none the clocks skip when they spring forward. wall_clock_ms (engine/hours.py)
        reads a skipped time as the jump's end, a different time of day."""
        from engine.hours import wall_clock_ms  # engine.hours imports this module

        midnight = datetime.combine(slot.start.date(), time())
        for step in slot.steps:
            naive = midnight + timedelta(minutes=_minutes(step))
            shown = datetime.fromtimestamp(wall_clock_ms(naive, self.tz) / 1000, self.tz)
            if shown.replace(tzinfo=None) != naive:
                return False
        return True

    def slots(
        self, service: Service, first_day: date, last_day: date, now: datetime
    ) -> Iterator[Slot]:
        """Every bookable slot of `service` from `first_day` to `last_day` (inclusive), in
        order, free or not (Redis knows which are taken)."""
        window_first, window_last = self.window(now)
        day = max(first_day, window_first)
        last = min(last_day, window_last)
        earliest = now + self.min_notice
        while day <= last:
            if self.is_open_day(day):
                # Only a day the clocks change has times that do not exist (a few a year).
                check = self._clock_changes(day)
                for begin, end in self.hours.get(day.weekday(), ()):
                    minute = begin
                    while minute + service.minutes <= end:
                        slot = self._slot(service, day, minute)
                        if slot.start >= earliest and (not check or self._exists(slot)):
                            yield slot
                        minute += self.slot_minutes
            day += timedelta(days=1)

    def slot(self, service: Service, start: str, now: datetime) -> Slot:
        """The slot starting at `start` ("YYYY-MM-DDTHH:MM", business time), or InvalidSlot."""
        try:
            moment = datetime.strptime(start.strip()[:16], "%Y-%m-%dT%H:%M")
        except ValueError:
            raise InvalidSlot(f"start must look like 2026-05-12T14:30, got {start!r}") from None
        day = moment.date()
        first, last = self.window(now)
        if not first <= day <= last:
            raise InvalidSlot(f"{day} is outside the booking window ({first} to {last})")
        if self.is_holiday(day):
            raise InvalidSlot(f"{day} is a holiday: closed")
        minute = moment.hour * 60 + moment.minute
        for begin, end in self.hours.get(day.weekday(), ()):
            if begin <= minute and minute + service.minutes <= end:
                if (minute - begin) % self.slot_minutes:
                    raise InvalidSlot(f"{start} is not on the {self.slot_minutes}-minute grid")
                slot = self._slot(service, day, minute)
                if not self._exists(slot):
                    raise InvalidSlot(
                        f"{start} does not exist for {service.name}: the clocks skip that "
                        "time that night"
                    )
                if slot.start < now + self.min_notice:
                    raise InvalidSlot(f"{start} is too soon or in the past")
                return slot
        raise InvalidSlot(f"{start} is outside opening hours for {service.name}")

    # --- words ----------------------------------------------------------------------------
    def label(self, slot: Slot | datetime, language: str) -> str:
        """How a slot is shown to customers: `ter 12/05 às 10:00` / `Tue 05/12 10:00`."""
        start = slot.start if isinstance(slot, Slot) else self.local(slot)
        names = _DAY_NAMES.get(language, _DAY_NAMES["pt-BR"])
        weekday = names[start.weekday()]
        if language == "en":
            return f"{weekday} {start:%m/%d} {start:%H:%M}"
        return f"{weekday} {start:%d/%m} às {start:%H:%M}"

    def hours_text(self, language: str) -> str:
        """Opening hours, one line per day (for the menu and the prompt)."""
        names = LONG_DAY_NAMES.get(language, LONG_DAY_NAMES["pt-BR"])
        closed = "fechado" if language != "en" else "closed"
        lines = []
        for n, name in enumerate(names):
            intervals = self.hours.get(n) or []
            spans = ", ".join(f"{_clock(a)}-{_clock(b)}" for a, b in intervals) or closed
            lines.append(f"{name}: {spans}")
        return "\n".join(lines)


# --- loading ----------------------------------------------------------------------------------


# The categories a business closes on when its file names none (_PublicHolidays.categories).
DEFAULT_HOLIDAY_CATEGORIES = ("public", "optional")


def _public_holidays(where: tuple[str, str | None, Sequence[str] | None] | None) -> Any:
    """The `holidays` package's calendar for a country and subdivision (computed locally for
    any year asked, nothing downloaded), or None."""
    if where is None:
        return None
    import holidays  # imported here: only businesses that ask for it pay its import

    country, subdivision, categories = where
    try:
        if categories is None:
            offered = holidays.country_holidays(country.upper(), subdiv=subdivision)
            has = offered.supported_categories
            categories = [c for c in DEFAULT_HOLIDAY_CATEGORIES if c in has]
        return holidays.country_holidays(
            country.upper(), subdiv=subdivision, categories=tuple(categories)
        )
    except NotImplementedError as exc:
        raise CalendarFileError(f"public_holidays: {exc}") from exc
    except (ValueError, KeyError) as exc:
        raise CalendarFileError(f"public_holidays: {exc}") from exc


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors, one a line, each under the field it is about ("hours.mon.0: ...")."""
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "the file"
        lines.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
    return "\n  ".join(lines)


def _from_document(document: Any, where: str) -> Calendar:
    if document is None:
        raise CalendarFileError(f"{where}: the file is empty (it needs business, hours, services)")
    if not isinstance(document, dict):
        raise CalendarFileError(f"{where}: not a business file: business, hours, services, ...")
    try:
        parsed = _CalendarFile.model_validate(document)
    except ValidationError as exc:
        raise CalendarFileError(f"{where}: {_problems(exc)}") from exc
    hours = {}
    for day, intervals in parsed.hours.items():
        try:
            hours[WEEKDAYS.index(day)] = _day_intervals(day, intervals)
        except ValueError as exc:
            raise CalendarFileError(f"{where}: hours.{day}: {exc}") from exc
    services = [
        Service(s.id, s.name, s.description, s.duration_minutes or parsed.slot_minutes)
        for s in parsed.services
    ]
    if len({s.id for s in services}) != len(services):
        raise CalendarFileError(f"{where}: two services share an id")
    teams = [Team(t.id, t.name) for t in parsed.teams]
    if len({t.id for t in teams}) != len(teams):
        raise CalendarFileError(f"{where}: two teams share an id")
    public = parsed.public_holidays
    try:
        return Calendar(
            business_name=parsed.business.name,
            description=parsed.business.description,
            timezone=parsed.timezone,
            slot_minutes=parsed.slot_minutes,
            days_ahead=parsed.days_ahead,
            min_notice_minutes=parsed.min_notice_minutes,
            hours=hours,
            holidays=parsed.holidays,
            services=services,
            texts=parsed.texts,
            teams=teams,
            agent_enabled=parsed.business.agent,
            offer_freed_slots=parsed.offer_freed_slots,
            public_holidays=(
                (public.country, public.subdivision, public.categories) if public else None
            ),
        )
    except CalendarFileError as exc:
        raise CalendarFileError(f"{where}: {exc}") from exc


def load_calendar(path: Path) -> Calendar:
    """Read a calendar from a `.yaml`/`.yml` or `.toml` file (CalendarFileError)."""
    path = Path(path)
    try:
        raw = path.read_text("utf-8")
    except OSError as exc:
        raise CalendarFileError(f"{path}: cannot read: {exc}") from exc
    try:
        if path.suffix.lower() == ".toml":
            document: Any = tomllib.loads(raw)
        else:
            document = yaml.load(raw, Loader=_StrictLoader)  # a SafeLoader
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise CalendarFileError(f"{path}: not valid {path.suffix.lstrip('.')}: {exc}") from exc
    except ValueError as exc:  # PyYAML's reading of a date that is none: 2026-02-30
        raise CalendarFileError(
            f"{path}: not valid yaml: a date that does not exist: {exc}"
        ) from exc
    return _from_document(document, str(path))


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping: plain YAML keeps the
    last one, so a second `mon:` would silently drop the first's hours."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is written twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _slug(name: str) -> str:
    chars = [ch if ch.isalnum() else "-" for ch in fold(name)]
    return "".join(chars).strip("-")[:40] or "servico"


def default_calendar(business_name: str, services: Sequence[str]) -> Calendar:
    """The calendar used without WSM_CALENDAR_FILE: the menu's services, Mon-Fri 8h-18h."""
    names = [s for s in services if s] or ["Atendimento"]
    document = {
        "business": {"name": business_name},
        "hours": {day: ["08:00-18:00"] for day in WEEKDAYS[:5]},
        "services": [{"id": _slug(name), "name": name} for name in names],
    }
    return _from_document(document, "default calendar")
