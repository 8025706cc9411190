"""The calendar file and the slot rules (no Redis)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from engine.agent.calendar import (
    Calendar,
    CalendarFileError,
    InvalidSlot,
    default_calendar,
    load_calendar,
)
from engine.agent.context import system_prompt
from engine.agent.texts import AgentTextsError, load_agent_texts
from tests.engine.agent.conftest import CALENDAR, SAO_PAULO

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, document: dict, name: str = "cal.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    return path


def test_the_documented_example_loads() -> None:
    calendar = load_calendar(ROOT / "config" / "calendar.example.yaml")
    assert calendar.business_name == "Clínica Sorriso"
    assert calendar.timezone == "America/Sao_Paulo"
    assert [s.id for s in calendar.services] == ["consulta", "limpeza", "retorno"]
    assert calendar.service("LIMPEZA").minutes == 60  # type: ignore[union-attr]
    assert calendar.service("Consultá") is not None  # accents and case do not matter
    load_agent_texts("pt-BR", calendar.texts)


def test_slots_follow_hours_grid_notice_and_duration(tmp_path: Path, now: datetime) -> None:
    calendar = load_calendar(write(tmp_path, CALENDAR))
    consulta, limpeza = calendar.service("consulta"), calendar.service("limpeza")
    assert consulta and limpeza
    monday = now.date()
    slots = [s.id for s in calendar.slots(consulta, monday, monday, now)]
    # 09:00 now + 60 min notice: the first slot is 10:00; the lunch break is skipped.
    assert slots[0] == f"{monday}T10:00"
    assert f"{monday}T11:30" in slots and f"{monday}T12:00" not in slots
    assert f"{monday}T13:00" in slots and slots[-1] == f"{monday}T17:30"
    # A 60-minute service needs two grid slots and must end by the interval's end.
    long = list(calendar.slots(limpeza, monday, monday, now))
    assert long[0].steps == ("10:00", "10:30")
    assert f"{monday}T11:30" not in [s.id for s in long]
    assert long[-1].id == f"{monday}T17:00"


def test_a_start_is_checked_against_every_rule(tmp_path: Path, now: datetime) -> None:
    document = dict(CALENDAR, holidays=[str(now.date() + timedelta(days=1))])
    calendar = load_calendar(write(tmp_path, document))
    consulta = calendar.service("consulta")
    assert consulta
    day = now.date()
    assert calendar.slot(consulta, f"{day}T10:30", now).start == datetime(
        day.year, day.month, day.day, 10, 30, tzinfo=SAO_PAULO
    )
    for start, why in [
        (f"{day}T09:30", "too soon"),
        (f"{day}T10:10", "grid"),
        (f"{day}T12:00", "outside opening hours"),
        (f"{day + timedelta(days=1)}T10:00", "holiday"),
        (f"{day + timedelta(days=30)}T10:00", "outside the booking window"),
        ("amanhã às 10", "must look like"),
    ]:
        with pytest.raises(InvalidSlot, match=why):
            calendar.slot(consulta, start, now)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hours": {"monday": ["08:00-12:00"]}}, "unknown day"),
        ({"hours": {"mon": ["12:00-08:00"]}}, "ends before it starts"),
        ({"services": [{"id": "x", "name": "X", "duration_minutes": 45}]}, "multiple"),
        ({"timezone": "America/Atlantis"}, "unknown time zone"),
        ({"services": []}, "services"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_file_is_refused_with_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(CalendarFileError, match=message):
        load_calendar(write(tmp_path, {**CALENDAR, **change}))


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        (["08:00-12:00", "11:00-14:00"], "hours.mon: '11:00-14:00' overlaps '08:00-12:00'"),
        (["08:00-12:00", "08:00-12:00"], "hours.mon: '08:00-12:00' overlaps '08:00-12:00'"),
        (
            ["08:60-12:00"],
            "hours.mon: '08:60-12:00': '08:60' is not a time of day (00:00 to 24:00)",
        ),
        (
            ["08:00-24:30"],
            "hours.mon: '08:00-24:30': '24:30' is not a time of day (00:00 to 24:00)",
        ),
        (["8h-12h"], "hours.mon: '8h-12h': '8h' is not a time of day (HH:MM)"),
        (
            ["24:00-08:00"],
            "hours.mon: '24:00-08:00': 24:00 only ends an interval (the next day starts at 00:00)",
        ),
        (
            ["18:00-02:00"],
            "hours.mon: '18:00-02:00' ends before it starts; an interval ends on its own day, so "
            'hours past midnight are written mon: ["18:00-24:00"] and tue: ["00:00-02:00"]',
        ),
    ],
    ids=["overlap", "twice", "minute 60", "past 24:00", "8h", "from 24:00", "past midnight"],
)
def test_bad_hours_are_refused_naming_the_day_and_the_interval(
    tmp_path: Path, hours: list[str], message: str
) -> None:
    """Found by an audit: overlapping intervals (their open time counted twice by the line's
    timeout and estimates) and "08:60" were taken silently; the other reasons named neither
    the day nor the interval ("invalid literal for int() with base 10: '8h'")."""
    path = write(tmp_path, {**CALENDAR, "hours": {"mon": hours}})
    with pytest.raises(CalendarFileError) as refused:
        load_calendar(path)
    assert str(refused.value) == f"{path}: {message}"


def test_touching_intervals_are_fine(tmp_path: Path) -> None:
    hours = {"fri": ["08:00-12:00", "12:00-24:00"], "sat": ["00:00-02:00"]}
    calendar = load_calendar(write(tmp_path, {**CALENDAR, "hours": hours}))
    assert calendar.hours == {4: [(480, 720), (720, 1440)], 5: [(0, 120)]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("# nada ainda\n", "the file is empty"),
        (
            "business: {name: X}\nhours:\n  mon: ['08:00-12:00']\n  mon: ['13:00-18:00']\n"
            "services: [{id: a, name: A}]\n",
            "'mon' is written twice\n  in \"<unicode string>\", line 4",
        ),
        (
            "business: {name: X}\nhours: {}\nholidays: [2026-02-30]\n"
            "services: [{id: a, name: A}]\n",
            "a date that does not exist",
        ),
        ("business: {name: X}\nhours: {mon: '08:00-12:00'}\n", "hours.mon: Input should be"),
    ],
    ids=["empty", "comments only", "a day twice", "no such date", "not a list"],
)
def test_a_file_that_is_not_one_is_refused_with_the_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    """Found by an audit: a day written twice lost the first one's hours without a word, a date
    that does not exist stopped the start with a traceback (not a CalendarFileError), and an
    empty file was "Input should be a valid dictionary or instance of _CalendarFile"."""
    path = tmp_path / "cal.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(CalendarFileError) as refused:
        load_calendar(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert message in str(refused.value)
    assert "errors.pydantic.dev" not in str(refused.value)


def test_toml_works_too(tmp_path: Path) -> None:
    path = tmp_path / "cal.toml"
    path.write_text(
        '[business]\nname = "Barbearia"\n[hours]\nsat = ["09:00-13:00"]\n'
        '[[services]]\nid = "corte"\nname = "Corte"\n',
        "utf-8",
    )
    calendar = load_calendar(path)
    assert calendar.business_name == "Barbearia" and calendar.hours == {5: [(540, 780)]}


def test_default_calendar_uses_the_menu_services() -> None:
    calendar = default_calendar("Clínica", ["Consulta", "Retorno"])
    assert [s.id for s in calendar.services] == ["consulta", "retorno"]
    assert set(calendar.hours) == {0, 1, 2, 3, 4}


def test_text_overrides_are_checked() -> None:
    texts = load_agent_texts("pt-BR", {"pt-BR": {"booked": "Feito: {service} {when}"}})
    assert texts.render("booked", service="Consulta", when="ter") == "Feito: Consulta ter"
    with pytest.raises(AgentTextsError, match="unknown text"):
        load_agent_texts("pt-BR", {"pt-BR": {"bookd": "x"}})
    with pytest.raises(AgentTextsError, match="unknown field"):
        load_agent_texts("pt-BR", {"pt-BR": {"booked": "{customer}"}})


def test_the_prompt_names_the_teams_only_when_there_are_several(
    tmp_path: Path, now: datetime
) -> None:
    two = {**CALENDAR, "teams": [{"id": "recepcao", "name": "Recepção"},
                                  {"id": "financeiro", "name": "Financeiro"}]}  # fmt: skip
    prompt = system_prompt(
        load_calendar(write(tmp_path, two)), language="pt-BR", now=now, max_reply_chars=600
    )
    assert "- Recepção (id recepcao)" in prompt and "- Financeiro (id financeiro)" in prompt
    assert "handoff_to_human takes the team" in prompt
    one = {**CALENDAR, "teams": [{"id": "recepcao", "name": "Recepção"}]}
    alone = system_prompt(
        load_calendar(write(tmp_path, one, "one.yaml")), language="pt-BR", now=now,
        max_reply_chars=600,
    )  # fmt: skip
    assert "Teams" not in alone


# --- the clocks' jumps (found by an audit) ------------------------------------------------------

HALF_HOURS = [f"{hour:02d}:{minute:02d}" for hour in range(6) for minute in (0, 30)]


def night_calendar(tmp_path: Path, timezone: str) -> Calendar:
    """A business of `timezone` open on Sundays from midnight to 06:00."""
    document = dict(CALENDAR, timezone=timezone, hours={"sun": ["00:00-06:00"]})
    return load_calendar(write(tmp_path, document))


@pytest.mark.parametrize(
    ("timezone", "night", "skipped", "across"),
    [
        # New York: 02:00 -> 03:00 on the second Sunday of March.
        ("America/New_York", date(2027, 3, 14), ["02:00", "02:30"], "01:30"),
        # Lisbon: 01:00 -> 02:00 on the last Sunday of March.
        ("Europe/Lisbon", date(2027, 3, 28), ["01:00", "01:30"], "00:30"),
    ],
)
def test_the_grid_never_offers_a_time_the_clocks_skip(
    tmp_path: Path, timezone: str, night: date, skipped: list[str], across: str
) -> None:
    calendar = night_calendar(tmp_path, timezone)
    consulta, limpeza = calendar.service("consulta"), calendar.service("limpeza")
    assert consulta and limpeza
    tz = ZoneInfo(timezone)
    now = datetime.combine(night - timedelta(days=1), time(12), tzinfo=tz)
    offered = list(calendar.slots(consulta, night, night, now))
    assert [s.id[11:] for s in offered] == [t for t in HALF_HOURS if t not in skipped]
    # Each slot offered is the moment its id names on the business's clock.
    for slot in offered:
        assert f"{datetime.fromtimestamp(slot.start_ms / 1000, tz):%Y-%m-%dT%H:%M}" == slot.id
    # A 60-minute service does not start where it would run across the jump either.
    long = [s.id[11:] for s in calendar.slots(limpeza, night, night, now)]
    assert long == [t for t in HALF_HOURS[:-1] if t not in [*skipped, across]]
    # Asked for by the model or the menu, a skipped time is refused with the reason.
    for hhmm in skipped:
        with pytest.raises(InvalidSlot, match="the clocks skip"):
            calendar.slot(consulta, f"{night}T{hhmm}", now)
    with pytest.raises(InvalidSlot, match="the clocks skip"):
        calendar.slot(limpeza, f"{night}T{across}", now)
    # A week later the same hours are all there.
    week_later = night + timedelta(days=7)
    assert [s.id[11:] for s in calendar.slots(consulta, week_later, week_later, now)] == HALF_HOURS


def test_the_hour_the_clocks_repeat_is_offered_once(tmp_path: Path) -> None:
    """New York, 02:00 -> 01:00 on the first Sunday of November: the grid is the wall clock,
    so 01:00 and 01:30 are offered once (their first time), in order of the real moments."""
    calendar = night_calendar(tmp_path, "America/New_York")
    consulta = calendar.service("consulta")
    assert consulta
    night = date(2027, 11, 7)
    now = datetime(2027, 11, 6, 12, tzinfo=ZoneInfo("America/New_York"))
    offered = list(calendar.slots(consulta, night, night, now))
    assert [s.id[11:] for s in offered] == HALF_HOURS
    starts = [s.start_ms for s in offered]
    assert starts == sorted(set(starts))
    # 01:30 is the first one (EDT): 02:00 (EST) comes an hour and a half later.
    assert starts[HALF_HOURS.index("02:00")] - starts[HALF_HOURS.index("01:30")] == 90 * 60_000
