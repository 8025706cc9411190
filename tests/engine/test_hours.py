"""Opening hours in the waiting line (issue 16): outside the business file's hours a customer
who asks for a person is told once that it is closed and when it opens, with no minutes; at
the opening they are told their place again; the line's timeout counts open time only; with
nobody online the estimate says so. End to end on the real queue protocol and Redis, with the
engine's clock set to chosen local times (the handler, the timers and the line's maintenance
read it through the `now_ms` of their modules)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine import assignment as engine_assignment
from engine import service as engine_service
from engine.agent.calendar import CalendarFileError, load_calendar
from engine.hours import BusinessHours
from engine.state import State, load_state
from engine.texts import DEFAULTS, load_texts
from engine.turn import frame as engine_handler
from shared.keys import engine_keys_for
from tests.engine.harness import AgentHarness, Harness, settings_for
from tests.support.waha import text_message

TZ = ZoneInfo("America/Sao_Paulo")
CHAT = "5511900000201@c.us"
OTHER = "5511900000202@c.us"

BUSINESS = """
business:
  name: Clínica Sorriso
timezone: America/Sao_Paulo
hours:
  mon: ["08:00-12:00", "13:30-18:00"]
  tue: ["08:00-12:00", "13:30-18:00"]
  wed: ["08:00-12:00", "13:30-18:00"]
  thu: ["08:00-12:00", "13:30-18:00"]
  fri: ["08:00-12:00", "13:30-18:00"]
  sat: ["08:00-12:00"]
holidays: [2026-12-24]
public_holidays:
  country: BR
  subdivision: SP
  categories: [public, optional]
services:
  - id: consulta
    name: Consulta
"""


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=TZ).timestamp() * 1000)


class Clock:
    """The engine's time, set by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start_ms: int) -> None:
        self.ms = start_ms
        for module in (engine_handler, engine_service, engine_assignment):
            monkeypatch.setattr(module, "now_ms", lambda: self.ms)

    def set(self, ms: int) -> None:
        self.ms = ms


@pytest.fixture
def business_file(tmp_path: Path) -> Path:
    path = tmp_path / "business.yaml"
    path.write_text(BUSINESS, "utf-8")
    return path


@pytest.fixture
def hours(business_file: Path) -> BusinessHours:
    return BusinessHours(load_calendar(business_file))


async def ask(harness: Harness, chat: str, *texts: str) -> None:
    for text in texts:
        await harness.webhook(text_message(chat, text))
    await harness.drain()


async def maintain(harness: Harness) -> None:
    await harness.service.coordinator.maintain()
    await harness.drain()


async def state_of(aredis: Any, prefix: str, chat: str) -> State:
    return (await load_state(aredis, engine_keys_for("default", chat, 1, prefix).state)).state


# --- the hours themselves ------------------------------------------------------------------------


def test_next_opening_in_words(hours: BusinessHours) -> None:
    tuesday_night = at(2026, 11, 10, 23)
    assert hours.opening_label(tuesday_night, hours.next_opening(tuesday_night) or 0, "pt-BR") == (
        "amanhã às 08:00"
    )
    saturday_afternoon = at(2026, 11, 14, 13)  # Sunday the 15th is closed (and a holiday)
    opens = hours.next_opening(saturday_afternoon) or 0
    assert hours.opening_label(saturday_afternoon, opens, "pt-BR") == "segunda às 08:00"
    assert hours.opening_label(saturday_afternoon, opens, "en") == "Monday at 08:00"
    lunch = at(2026, 11, 10, 12, 30)
    assert hours.opening_label(lunch, hours.next_opening(lunch) or 0, "pt-BR") == "hoje às 13:30"


def test_public_holidays_come_from_the_package_on_top_of_the_list(hours: BusinessHours) -> None:
    calendar = hours.calendar
    assert calendar.is_holiday(date(2026, 12, 24))  # the explicit list
    assert calendar.is_holiday(date(2026, 11, 20))  # Consciência Negra (national)
    assert calendar.is_holiday(date(2026, 6, 4))  # Corpus Christi ("optional" category)
    assert calendar.is_holiday(date(2026, 7, 9))  # Revolução Constitucionalista (SP only)
    assert not calendar.is_holiday(date(2026, 11, 19))
    # Thursday evening before the Friday holiday: it opens on Saturday.
    thursday = at(2026, 11, 19, 19)
    assert hours.next_opening(thursday) == at(2026, 11, 21, 8)
    assert hours.opening_label(thursday, at(2026, 11, 21, 8), "pt-BR") == "sábado às 08:00"


def test_without_categories_carnaval_and_corpus_christi_are_closed(tmp_path: Path) -> None:
    # Only country and subdivision: "public" and, where the country has it, "optional" (in
    # Brazil, Carnaval and Corpus Christi). `[public]` keeps them open; a country without an
    # "optional" category gets its public holidays.
    path = tmp_path / "b.yaml"
    path.write_text(BUSINESS.replace("  categories: [public, optional]\n", ""), "utf-8")
    assert "categories" not in path.read_text("utf-8")
    calendar = load_calendar(path)
    assert calendar.is_holiday(date(2026, 2, 17))  # Carnaval
    assert calendar.is_holiday(date(2026, 6, 4))  # Corpus Christi
    assert calendar.is_holiday(date(2026, 7, 9))  # SP
    assert not calendar.is_holiday(date(2026, 2, 19))
    path.write_text(BUSINESS.replace("[public, optional]", "[public]"), "utf-8")
    assert not load_calendar(path).is_holiday(date(2026, 2, 17))
    us = BUSINESS.replace("  categories: [public, optional]\n", "")
    us = us.replace("country: BR", "country: US").replace("subdivision: SP", "subdivision: NY")
    path.write_text(us, "utf-8")
    calendar = load_calendar(path)
    assert calendar.is_holiday(date(2026, 7, 4)) and not calendar.is_holiday(date(2026, 7, 6))


def test_an_unknown_country_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(BUSINESS.replace("country: BR", "country: XX"), "utf-8")
    with pytest.raises(CalendarFileError, match="public_holidays"):
        load_calendar(path)


def test_open_time_between_two_moments_and_its_deadline(hours: BusinessHours) -> None:
    # 17:50 Tuesday to 08:10 Wednesday: 10 min before closing + 10 min after opening.
    assert hours.open_ms_between(at(2026, 11, 10, 17, 50), at(2026, 11, 11, 8, 10)) == 1_200_000
    assert hours.deadline(at(2026, 11, 10, 17, 50), 1_200_000) == at(2026, 11, 11, 8, 10)
    # The lunch break does not count either.
    assert hours.deadline(at(2026, 11, 10, 11, 55), 600_000) == at(2026, 11, 10, 13, 35)


# --- in the line ---------------------------------------------------------------------------------


async def test_closed_notice_once_with_the_next_opening_then_the_place_at_the_opening(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    clock = Clock(monkeypatch, at(2026, 11, 10, 23))  # Tuesday 23:00
    harness = make_harness(calendar_file=business_file)
    await ask(harness, CHAT, "oi", "Ana", "3")
    await maintain(harness)
    notice = waha.to(CHAT)[-1]
    assert notice == DEFAULTS["pt-BR"]["line_closed"].format(
        opens="amanhã às 08:00", team="", leave_word="sair"
    )
    assert "min" not in notice
    assert await state_of(aredis, key_prefix, CHAT) is State.WAITING

    # A second message while closed: no repeat, and no estimate.
    sent = len(waha.to(CHAT))
    clock.set(at(2026, 11, 11, 2))
    await ask(harness, CHAT, "alguém aí?")
    await maintain(harness)
    assert len(waha.to(CHAT)) == sent

    # Another customer leaving ahead does not bring a minutes estimate while closed.
    await ask(harness, OTHER, "oi", "Bia", "3")
    assert "min" not in waha.to(OTHER)[-1]

    # Overnight counts nothing against the line's timeout (10 min here).
    await harness.service.timers_once()
    await harness.drain()
    assert await state_of(aredis, key_prefix, CHAT) is State.WAITING

    # The opening: each is told their place, once, in order.
    clock.set(at(2026, 11, 11, 8, 0))
    await maintain(harness)
    await maintain(harness)
    nobody = DEFAULTS["pt-BR"]["line_opened_nobody"]
    assert waha.to(CHAT)[sent:] == [nobody.format(ordinal="1º")]
    assert waha.to(OTHER)[-1] == nobody.format(ordinal="2º")
    assert len([t for t in waha.to(OTHER) if t.startswith("Já estamos")]) == 1
    assert await state_of(aredis, key_prefix, CHAT) is State.WAITING


async def test_the_line_timeout_counts_open_hours_only(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    clock = Clock(monkeypatch, at(2026, 11, 10, 17, 55))  # 5 min before closing
    harness = make_harness(
        calendar_file=business_file, waiting_timeout_seconds=600, inactivity_close_seconds=10**6
    )
    await ask(harness, CHAT, "oi", "Ana", "3")
    assert waha.to(CHAT)[-1].startswith("Você é o 1º da fila.")

    clock.set(at(2026, 11, 11, 8, 4))  # 5 + 4 open minutes: not yet, though 14 hours passed
    await harness.service.timers_once()
    await harness.drain()
    assert await state_of(aredis, key_prefix, CHAT) is State.WAITING
    # The timer was moved to when the open time is up.
    timers = harness.service.index.timers
    assert await aredis.zscore(timers, f"default|{CHAT}") == at(2026, 11, 11, 8, 5)

    clock.set(at(2026, 11, 11, 8, 5))
    await harness.service.timers_once()
    await harness.drain()
    assert waha.to(CHAT)[-1] == DEFAULTS["pt-BR"]["line_timeout"]
    assert await state_of(aredis, key_prefix, CHAT) is State.CLOSED


async def test_a_business_that_never_opens_checks_its_line_daily_not_every_minute(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A business file with no hours (bookings only, say): the line never opens, so a waiting
    customer's timeout never comes. Their timer is looked at again a day later, not at every
    pass of the timers (each look searches a year of days)."""
    never = tmp_path / "never.yaml"
    never.write_text(_without_hours(BUSINESS), "utf-8")
    clock = Clock(monkeypatch, at(2026, 11, 10, 10))
    harness = make_harness(
        calendar_file=never, waiting_timeout_seconds=600, inactivity_close_seconds=10**6
    )
    await ask(harness, CHAT, "oi", "Ana", "3")
    assert await state_of(aredis, key_prefix, CHAT) is State.WAITING

    clock.set(at(2026, 11, 10, 11))
    await harness.service.timers_once()
    await harness.drain()
    assert await state_of(aredis, key_prefix, CHAT) is State.WAITING
    timers = harness.service.index.timers
    assert await aredis.zscore(timers, f"default|{CHAT}") == at(2026, 11, 11, 11)


def _without_hours(text: str) -> str:
    """The business file with every opening hour removed."""
    head, rest = text.split("hours:\n", 1)
    return head + "hours: {}\n" + rest[rest.index("holidays:") :]


async def test_an_estimate_that_runs_past_the_closing_gives_no_minutes(
    waha: Any, make_harness: Any, business_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch, at(2026, 11, 10, 11, 40))  # Tuesday: closes 12:00, reopens 13:30
    harness = make_harness(calendar_file=business_file, default_handling_seconds=600)
    await harness.service.coordinator.line.set_online("maria", "Maria", 1)
    await ask(harness, CHAT, "oi", "Ana", "3")  # Maria takes the first
    await ask(harness, OTHER, "oi", "Bia", "3")  # 1st in line: about 10 min, before 12:00
    assert "cerca de 10 min" in waha.to(OTHER)[-1]
    clock.set(at(2026, 11, 10, 11, 52))
    third = "5511900000203@c.us"
    await ask(harness, third, "oi", "Caio", "3")  # 2nd: 20 min would run to 12:12
    assert waha.to(third)[-1] == DEFAULTS["pt-BR"]["line_entered_closing"].format(
        ordinal="2º", closes="12:00", opens="hoje às 13:30", leave_word="sair"
    )
    assert "min." not in waha.to(third)[-1]


async def test_open_with_nobody_online_says_so_instead_of_minutes(
    waha: Any, make_harness: Any, business_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Clock(monkeypatch, at(2026, 11, 10, 10))  # Tuesday 10:00: open
    harness = make_harness(calendar_file=business_file)
    await ask(harness, CHAT, "oi", "Ana", "3")
    assert waha.to(CHAT)[-1] == DEFAULTS["pt-BR"]["line_entered_nobody"].format(
        ordinal="1º", leave_word="sair"
    )
    await harness.service.coordinator.line.set_online("maria", "Maria", 1)
    await harness.service.coordinator.line.set_offline("maria", 2)
    await ask(harness, OTHER, "oi", "Bia", "3")
    assert "min" not in waha.to(OTHER)[-1]
    # Someone online (busy with the first): an estimate in minutes again.
    await harness.service.coordinator.line.set_online("maria", "Maria", 3)
    await maintain(harness)
    await ask(harness, OTHER, "ainda na fila?")
    assert waha.to(OTHER)[-1].startswith("Você continua na fila: é o 1º, cerca de ")


def test_english_texts_name_the_opening_too(hours: BusinessHours) -> None:
    texts = load_texts("en")
    night = at(2026, 11, 10, 23)
    label = hours.opening_label(night, hours.next_opening(night) or 0, "en")
    text = texts.render("line_closed", opens=label, team="", leave_word="leave")
    assert "We open tomorrow at 08:00" in text


def test_the_example_business_file_loads_with_two_teams() -> None:
    calendar = load_calendar(Path(__file__).parents[2] / "config" / "business.example.yaml")
    assert [t.name for t in calendar.teams] == ["Recepção", "Financeiro"]
    assert calendar.is_holiday(date(2026, 6, 4))  # Corpus Christi, from the package


async def test_when_the_bot_can_book_the_closed_notice_offers_it(
    aredis: Any, redis_url: str, key_prefix: str, waha: Any, business_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The product's handler (the AI agent; its scheduling menu without a model): closed, the
    customer is offered to book instead, and leaving the line brings them back to the bot."""
    night = at(2026, 11, 10, 23)
    Clock(monkeypatch, night)
    settings = settings_for(key_prefix, redis_url, calendar_file=business_file)
    harness = AgentHarness(aredis, settings, lambda: datetime.fromtimestamp(night / 1000, TZ))
    try:
        await ask(harness, CHAT, "oi", "Ana")
        menu = waha.to(CHAT)[-1]
        person = next(line for line in menu.splitlines() if "atendente" in line).split(".")[0]
        await ask(harness, CHAT, person)
        closed, offer = waha.to(CHAT)[-1].split("\n")
        assert closed.startswith("Nosso atendimento está fechado agora. 🌙 Abrimos amanhã às 08:00")
        assert offer == DEFAULTS["pt-BR"]["line_closed_booking"].format(leave_word="sair")
        await ask(harness, CHAT, "sair")
        assert await state_of(aredis, key_prefix, CHAT) is State.BOT
    finally:
        await harness.aclose()


async def test_an_agent_left_online_overnight_is_given_nobody_until_the_opening(
    aredis: Any, key_prefix: str, waha: Any, make_harness: Any, business_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Maria is online, taking customers automatically, after closing time. A customer who
    asks for a person at 23:00 is told it is closed and that they keep their place: nobody
    then tells them "Maria vai te atender agora" a moment later. At the opening they are
    told their place and taken in order. Maria may still take one by hand at night."""
    clock = Clock(monkeypatch, at(2026, 11, 10, 23))  # Tuesday 23:00
    harness = make_harness(calendar_file=business_file, conversations_per_agent=2)
    line = harness.service.coordinator.line
    await line.set_online("maria", "Maria", clock.ms)
    await ask(harness, CHAT, "oi", "Ana", "3")
    await ask(harness, OTHER, "oi", "Bia", "3")
    await maintain(harness)
    taken = "Maria vai te atender agora. 🙋"
    for chat in (CHAT, OTHER):
        assert waha.to(chat)[-1].startswith("Nosso atendimento está fechado agora.")
        assert await state_of(aredis, key_prefix, chat) is State.WAITING
    assert await line.length("default") == 2

    # By hand: the attendant chose to.
    assert await harness.service.coordinator.take_next("maria") is not None
    await harness.drain()
    assert waha.to(CHAT)[-1] == taken
    assert await state_of(aredis, key_prefix, OTHER) is State.WAITING

    clock.set(at(2026, 11, 11, 8, 0))
    await maintain(harness)
    await maintain(harness)
    assert waha.to(OTHER)[-1] == taken
    assert await state_of(aredis, key_prefix, OTHER) is State.AGENT


# --- time zones, the clock's jumps, hours to midnight (found by an audit) -----------------------

NEW_YORK = ZoneInfo("America/New_York")


def business_in(tmp_path: Path, timezone: str, hours: str) -> Path:
    """A business file of its own time zone and hours (no holidays)."""
    path = tmp_path / "business.yaml"
    path.write_text(
        f"business:\n  name: Clínica\ntimezone: {timezone}\nhours:\n{hours}\n"
        "services:\n  - {id: consulta, name: Consulta}\n",
        "utf-8",
    )
    return path


def ny(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=NEW_YORK).timestamp() * 1000)


def test_the_clocks_jumps_make_days_of_23_and_25_hours(tmp_path: Path) -> None:
    path = business_in(tmp_path, "America/New_York", '  sun: ["00:00-24:00"]')
    hours = BusinessHours(load_calendar(path))
    spring, fall = date(2026, 3, 8), date(2026, 11, 1)  # US: 02:00 -> 03:00, 02:00 -> 01:00
    assert [end - begin for begin, end in hours.intervals(spring)] == [23 * 3_600_000]
    assert [end - begin for begin, end in hours.intervals(fall)] == [25 * 3_600_000]
    assert hours.open_ms_between(ny(2026, 10, 31, 12), ny(2026, 11, 2, 12)) == 25 * 3_600_000


async def test_an_opening_the_clock_skips_is_when_the_clock_gets_there(
    waha: Any, make_harness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A business in New York opening at 02:30 on the Sunday its clocks jump from 02:00 to
    03:00: it opens when its clock shows 03:00 (02:30 is past then), and that is what the
    customer is told. It was told "amanhã às 03:30", and the line stayed closed until then.
    An interval inside the skipped hour is not there that day."""
    path = business_in(tmp_path, "America/New_York", '  sun: ["02:30-06:00"]')
    clock = Clock(monkeypatch, ny(2026, 3, 7, 23))  # Saturday 23:00
    harness = make_harness(calendar_file=path)
    await ask(harness, CHAT, "oi", "Ana", "3")
    assert waha.to(CHAT)[-1] == DEFAULTS["pt-BR"]["line_closed"].format(
        opens="amanhã às 03:00", team="", leave_word="sair"
    )
    hours = harness.service.coordinator.line.hours
    assert hours is not None
    assert not hours.is_open(ny(2026, 3, 8, 1, 59))
    clock.set(ny(2026, 3, 8, 3, 0))  # 07:00 UTC, a second after 01:59:59 EST
    assert hours.is_open(clock.ms)
    await maintain(harness)
    assert waha.to(CHAT)[-1] == DEFAULTS["pt-BR"]["line_opened_nobody"].format(ordinal="1º")
    skipped = BusinessHours(
        load_calendar(business_in(tmp_path, "America/New_York", '  sun: ["02:00-02:45"]'))
    )
    assert skipped.intervals(date(2026, 3, 8)) == []
    assert skipped.next_opening(ny(2026, 3, 7, 23)) == ny(2026, 3, 15, 2, 0)


async def test_hours_written_to_midnight_and_on_from_it_close_at_the_end_of_both(
    waha: Any, make_harness: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A business open past midnight writes fri 18:00-24:00 and sat 00:00-02:00 (an interval
    ends on its own day). At 23:50 on Friday an estimate past 02:00 gives no minutes: it names
    02:00, not midnight, which is no closing (it counted the minutes as if open all night)."""
    path = business_in(
        tmp_path, "America/Sao_Paulo", '  fri: ["18:00-24:00"]\n  sat: ["00:00-02:00"]'
    )
    Clock(monkeypatch, at(2026, 11, 13, 23, 50))  # Friday
    harness = make_harness(calendar_file=path, default_handling_seconds=6000)
    await harness.service.coordinator.line.set_online("maria", "Maria", 1)
    await ask(harness, CHAT, "oi", "Ana", "3")  # Maria takes the first
    await ask(harness, OTHER, "oi", "Bia", "3")  # 1st in line: 100 min, before 02:00
    assert "cerca de 100 min" in waha.to(OTHER)[-1]
    third = "5511900000203@c.us"
    await ask(harness, third, "oi", "Caio", "3")  # 2nd: 200 min would run to 03:10
    assert waha.to(third)[-1] == DEFAULTS["pt-BR"]["line_entered_closing"].format(
        ordinal="2º", closes="02:00", opens="sexta, 20/11 às 18:00", leave_word="sair"
    )
