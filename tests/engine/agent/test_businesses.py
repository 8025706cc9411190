"""Several businesses, one per WAHA session (WSM_BUSINESS_FILES, engine/businesses.py): each
session answers with its own business's name, hours and services (the menu and the agent's
prompt), its bookings never take another business's slot, the erase finds a customer's
bookings in any business, and a session without a file of its own is the default business."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import assignment
from engine.agent.bookings import Customer, SlotTaken
from engine.agent.calendar import CalendarFileError, load_calendar
from engine.businesses import businesses_from
from engine.parts import booking_store, waiting_line
from engine.parts import coordinator as parts_coordinator
from shared.keys import CalendarKeys
from shared.settings import Settings
from tests.engine.agent.conftest import CALENDAR
from tests.engine.agent.fake_groq import FakeGroq, completion
from tests.engine.harness import AgentHarness, FakeWaha
from tests.shared.test_invalid_settings_commands import run_wsm
from tests.support.waha import text_message

PET_SHOP = {
    **CALENDAR,
    "business": {"name": "Pet Shop Au Au", "description": "Banho e tosa em Jundiaí."},
    "hours": {day: ["09:30-16:30"] for day in ("mon", "tue", "wed", "thu", "fri")},
    "services": [
        {"id": "banho", "name": "Banho", "duration_minutes": 30},
        {"id": "tosa", "name": "Tosa", "duration_minutes": 60},
    ],
}
CLINIC_CHAT = "5511911110001@c.us"
PET_CHAT = "5511911110002@c.us"


@pytest.fixture
def pet_file(tmp_path: Path) -> Path:
    path = tmp_path / "petshop.yaml"
    path.write_text(yaml.safe_dump(PET_SHOP, allow_unicode=True), "utf-8")
    return path


def with_texts(pet_file: Path, texts: dict[str, str]) -> None:
    """The shop's file with its own pt-BR texts."""
    pet_file.write_text(
        yaml.safe_dump({**PET_SHOP, "texts": {"pt-BR": texts}}, allow_unicode=True), "utf-8"
    )


async def both_ask_for_a_person(harness: AgentHarness, *, first: str) -> None:
    """The shop's customer and the clinic's (`first` first) ask for a person."""
    chats = [("pets", PET_CHAT), ("default", CLINIC_CHAT)]
    for session, chat in sorted(chats, key=lambda pair: pair[1] != first):
        await say(harness, session, chat, "oi")
        await say(harness, session, chat, "Ana")
        await say(harness, session, chat, "quero falar com um atendente")


async def say(harness: AgentHarness, session: str, chat: str, text: str) -> None:
    assert await harness.webhook(text_message(chat, text, session=session))
    await harness.drain()


async def test_each_session_menu_answers_with_its_own_business(
    harness: Callable[..., AgentHarness], waha: FakeWaha, pet_file: Path
) -> None:
    # No model: the scheduling menu answers, from each session's own business file.
    h = harness(groq_api_key=None, business_files=f"pets={pet_file}")
    await say(h, "pets", PET_CHAT, "oi")
    await say(h, "default", CLINIC_CHAT, "oi")
    assert "Pet Shop Au Au" in waha.to(PET_CHAT)[0]
    assert "Clínica Sorriso" in waha.to(CLINIC_CHAT)[0]
    for session, chat in (("pets", PET_CHAT), ("default", CLINIC_CHAT)):
        await say(h, session, chat, "Ana")
        await say(h, session, chat, "2")  # opening hours
        await say(h, session, chat, "1")  # services
    pets, clinic = "\n".join(waha.to(PET_CHAT)), "\n".join(waha.to(CLINIC_CHAT))
    assert "09:30-16:30" in pets and "08:00-12:00" not in pets
    assert "08:00-12:00, 13:00-18:00" in clinic and "09:30" not in clinic
    assert "Banho" in pets and "Tosa" in pets and "Consulta" not in pets
    assert "Consulta" in clinic and "Limpeza" in clinic and "Banho" not in clinic


async def test_a_session_without_its_own_file_is_the_default_business(
    harness: Callable[..., AgentHarness], waha: FakeWaha, pet_file: Path
) -> None:
    h = harness(groq_api_key=None, business_files=f"pets={pet_file}")
    await say(h, "another-number", CLINIC_CHAT, "oi")
    assert "Clínica Sorriso" in waha.to(CLINIC_CHAT)[0]
    assert h.parts.businesses is not None
    assert h.parts.businesses.for_session("another-number").calendar.business_name == (
        "Clínica Sorriso"
    )


async def test_the_agent_prompt_is_the_sessions_business(
    harness: Callable[..., AgentHarness], waha: FakeWaha, groq: FakeGroq, pet_file: Path
) -> None:
    groq.policy = lambda request: completion("Olá! Como posso ajudar?")
    h = harness(business_files=f"pets={pet_file}")
    await say(h, "pets", PET_CHAT, "oi")
    await say(h, "default", CLINIC_CHAT, "oi")
    pets_prompt = groq.requests[0]["messages"][0]["content"]
    clinic_prompt = groq.requests[1]["messages"][0]["content"]
    assert "Pet Shop Au Au" in pets_prompt and "Banho e tosa em Jundiaí" in pets_prompt
    assert "09:30-16:30" in pets_prompt and "Tosa" in pets_prompt
    assert "Clínica Sorriso" not in pets_prompt and "Consulta" not in pets_prompt
    assert "Clínica Sorriso" in clinic_prompt and "13:00-18:00" in clinic_prompt
    assert "Pet Shop" not in clinic_prompt
    assert waha.to(PET_CHAT) == ["Olá! Como posso ajudar?"]


async def test_a_business_with_the_agent_off_gets_the_menu(
    harness: Callable[..., AgentHarness], waha: FakeWaha, groq: FakeGroq, tmp_path: Path
) -> None:
    groq.policy = lambda request: completion("Olá! Como posso ajudar?")
    off = tmp_path / "petshop.yaml"
    pets = {**PET_SHOP, "business": {**PET_SHOP["business"], "agent": False}}  # type: ignore[dict-item]
    off.write_text(yaml.safe_dump(pets, allow_unicode=True), "utf-8")
    h = harness(business_files=f"pets={off}")
    await say(h, "pets", PET_CHAT, "oi")
    assert groq.requests == []  # never asked the model
    assert "Pet Shop Au Au" in waha.to(PET_CHAT)[0]
    await say(h, "default", CLINIC_CHAT, "oi")
    assert len(groq.requests) == 1


async def test_a_booking_in_one_business_does_not_take_the_others_slot(
    harness: Callable[..., AgentHarness],
    aredis: Any,
    key_prefix: str,
    pet_file: Path,
    now: datetime,
) -> None:
    h = harness(groq_api_key=None, business_files=f"pets={pet_file}")
    stores = h.parts.stores
    assert stores is not None and set(stores) == {"", "petshop"}
    clinic, pets = stores[""], stores["petshop"]
    monday_10 = f"{now + timedelta(hours=1):%Y-%m-%dT%H:%M}"  # open in both businesses
    clinic_slot = clinic.calendar.slot(clinic.calendar.service("consulta"), monday_10, now)
    pet_slot = pets.calendar.slot(pets.calendar.service("banho"), monday_10, now)
    assert clinic_slot.day == pet_slot.day and clinic_slot.steps == pet_slot.steps

    clinic_customer = Customer(f"default|{CLINIC_CHAT}", "Ana")
    pet_customer = Customer(f"pets|{PET_CHAT}", "Bia")
    await clinic.book(clinic_customer, clinic_slot, booking_id="bk000000000001")
    assert await clinic.free([clinic_slot]) == []
    assert await pets.free([pet_slot]) == [pet_slot]  # the clinic's booking is not the shop's
    await pets.book(pet_customer, pet_slot, booking_id="bk000000000002")
    with pytest.raises(SlotTaken):
        await pets.book(Customer("pets|5511911110003@c.us"), pet_slot, booking_id="bk0000000003")
    shop_day = CalendarKeys(key_prefix, "petshop").day(pet_slot.day)
    assert await aredis.hgetall(shop_day)  # the shop's slots under its own key

    # The erase (the operator API's store: the default business's) frees the shop's slot too.
    eraser = booking_store(aredis, h.settings)
    assert await eraser.erase_customer(pet_customer.token) == 1
    assert await pets.free([pet_slot]) == [pet_slot]
    assert await clinic.free([clinic_slot]) == []  # the clinic's booking is untouched


def test_business_files_are_checked_at_start(
    agent_settings: Callable[..., Settings], tmp_path: Path, pet_file: Path
) -> None:
    with pytest.raises(ValueError, match="session=path"):
        agent_settings(business_files="pets")
    other = tmp_path / "other"
    other.mkdir()
    same_name = other / "petshop.yaml"
    same_name.write_text(pet_file.read_text("utf-8"), "utf-8")
    settings = agent_settings(business_files=f"a={pet_file},b={same_name}")
    with pytest.raises(CalendarFileError, match="petshop"):
        businesses_from(settings)
    # The default file named again is the default business (its slots, its keys).
    calendar_file = agent_settings().calendar_file
    shared = businesses_from(agent_settings(business_files=f"a={calendar_file},b={pet_file}"))
    assert shared.for_session("a").id == "" and shared.for_session("b").id == "petshop"


@pytest.mark.parametrize(
    ("command", "setting", "document", "named"),
    [
        ("worker", "WSM_CALENDAR_FILE", {"hours": {"fri": ["18:00-02:00"]}}, "hours.fri:"),
        ("api", "WSM_BUSINESS_FILES", {"hours": {"mon": ["08:00-12:00", "11:00-13:00"]}},
         "hours.mon: '11:00-13:00' overlaps '08:00-12:00'"),
        ("dev", "WSM_BUSINESS_FILES", {"texts": {"pt-BR": {"line_closd": "x"}}},
         "unknown text 'line_closd'"),
        ("agent list", "WSM_BUSINESS_FILES", {"hours": {"mon": ["08:60-12:00"]}}, "hours.mon:"),
    ],
    ids=["worker", "api", "dev", "agent"],
)  # fmt: skip
def test_a_bad_business_file_stops_the_command_at_start_with_exit_2(
    tmp_path: Path, command: str, setting: str, document: dict[str, Any], named: str
) -> None:
    """Found by an audit: `wsm worker` started its processes and restarted them forever, each
    dying on the file with a traceback; `wsm api` died with a traceback (exit 1); `wsm dev`
    started Redis and its parts first; `wsm agent` (whose `add --team` reads the teams) died
    with a traceback. Now each names the file and the field, exits 2, and starts nothing (no
    var/dev, no Redis, no file of any kind)."""
    files = tmp_path / "files"
    files.mkdir()
    path = files / "loja.yaml"
    path.write_text(yaml.safe_dump({**PET_SHOP, **document}, allow_unicode=True), "utf-8")
    value = str(path) if setting == "WSM_CALENDAR_FILE" else f"loja={path}"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {setting: value, "WSM_API_TOKEN": "t" * 32, "WSM_WORKER_METRICS_PORT": "0"}
    done = run_wsm(cwd, env, *command.split())
    assert done.returncode == 2, done.stderr
    program = command.split()[0]
    assert done.stderr.startswith(f"wsm {program}: {path}: "), done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert list(cwd.iterdir()) == []


def test_the_lines_hours_and_teams_are_the_sessions_business(
    agent_settings: Callable[..., Settings], pet_file: Path, now: datetime
) -> None:
    pets = {**PET_SHOP, "teams": [{"id": "banho", "name": "Banho"}, {"id": "loja", "name": "Loja"}]}
    pet_file.write_text(yaml.safe_dump(pets, allow_unicode=True), "utf-8")
    line = waiting_line(object(), agent_settings(business_files=f"pets={pet_file}"))
    monday_9 = int(now.timestamp() * 1000)  # the clinic opens at 08:00, the shop at 09:30
    assert line.for_session("default").is_open(monday_9)
    assert line.for_session("another-number").is_open(monday_9)
    assert not line.for_session("pets").is_open(monday_9)
    assert line.for_session("pets").is_open(monday_9 + 3_600_000)
    assert line.team_ids("pets") == ["", "banho", "loja"] and line.team_ids("default") == [""]


def test_the_second_example_business_file_loads() -> None:
    path = Path(__file__).parents[3] / "config" / "business.second.example.yaml"
    calendar = load_calendar(path)
    assert calendar.business_name == "Pet Shop Au Au" and calendar.agent_enabled
    assert [s.id for s in calendar.services] == ["banho", "tosa"]


async def test_a_business_of_its_own_opens_at_its_own_hours(
    aredis: Any,
    agent_settings: Callable[..., Settings],
    pet_file: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    coordinator = parts_coordinator(aredis, agent_settings(business_files=f"pets={pet_file}"))
    monday_9 = int(now.timestamp() * 1000)  # the clinic is open, the shop opens at 09:30
    monkeypatch.setattr(assignment, "now_ms", lambda: monday_9)
    await coordinator.line.enter("pets", f"pets|{PET_CHAT}", monday_9)
    await coordinator.line.enter("default", f"default|{CLINIC_CHAT}", monday_9)
    assert await coordinator.announce_opening() == 0  # records: clinic open, shop closed
    monkeypatch.setattr(assignment, "now_ms", lambda: monday_9 + 45 * 60_000)
    # 09:45: the shop opened (its customer is told their place); the clinic did not change.
    assert await coordinator.announce_opening() == 1
    assert await coordinator.announce_opening() == 0  # told once


async def test_asking_for_a_person_follows_the_sessions_own_hours(
    harness: Callable[..., AgentHarness], waha: FakeWaha, pet_file: Path
) -> None:
    # Monday 09:00 (the engine's clock starts at the agent's `now`): the clinic is open, the
    # shop opens at 09:30. The same words get the clinic's place in line and the shop's closed
    # notice naming its own opening.
    h = harness(groq_api_key=None, business_files=f"pets={pet_file}")
    await both_ask_for_a_person(h, first=PET_CHAT)
    shop, clinic = waha.to(PET_CHAT)[-1], waha.to(CLINIC_CHAT)[-1]
    assert "fechado" in shop and "hoje às 09:30" in shop, shop
    assert "fechado" not in clinic, clinic


async def test_a_closed_business_of_its_own_keeps_its_own_opening_record(
    harness: Callable[..., AgentHarness],
    waha: FakeWaha,
    pet_file: Path,
    now: datetime,
    move_clock: Callable[[int], None],
) -> None:
    # Monday 09:00: the clinic (the default business) is open, the shop opens at 09:30. A
    # clinic customer waits in line; then a shop customer asks for a person while the shop is
    # closed. The shop's closed line is recorded as the shop's, never as the clinic's: the
    # clinic's customer is not told "we are open now" (it never closed), and at 09:30 the
    # shop's customer is told their place.
    h = harness(groq_api_key=None, business_files=f"pets={pet_file}")
    await both_ask_for_a_person(h, first=CLINIC_CHAT)
    assert "hoje às 09:30" in waha.to(PET_CHAT)[-1]
    told_clinic = len(waha.to(CLINIC_CHAT))
    await h.service.coordinator.maintain()
    await h.drain()
    assert len(waha.to(CLINIC_CHAT)) == told_clinic, waha.to(CLINIC_CHAT)[-1]

    move_clock(int(now.timestamp() * 1000) + 45 * 60_000)
    await h.service.coordinator.maintain()
    await h.drain()
    assert "Já estamos atendendo" in waha.to(PET_CHAT)[-1], waha.to(PET_CHAT)[-1]
    assert "1º da fila" in waha.to(PET_CHAT)[-1]
    assert len(waha.to(CLINIC_CHAT)) == told_clinic, waha.to(CLINIC_CHAT)[-1]


async def test_a_business_file_changes_its_own_sessions_engine_texts(
    harness: Callable[..., AgentHarness], waha: FakeWaha, pet_file: Path
) -> None:
    # The engine's texts (the line's closed notice, the menu's greeting) in the shop's file
    # are the shop's; the clinic keeps the deployment's. Monday 09:00: the shop is closed.
    own = {
        "line_closed": "A Pet Shop abre {opens}; seu lugar está guardado. Sair: *{leave_word}*.",
        "greeting": "Au au! Aqui é a {business}. Qual é o seu nome?",
        "booked": "Marcado! 🐶 {service} em {when}.",  # the agent's text, beside them
    }
    with_texts(pet_file, own)
    h = harness(groq_api_key=None, business_files=f"pets={pet_file}")
    await both_ask_for_a_person(h, first=PET_CHAT)
    assert waha.to(PET_CHAT)[0] == "Au au! Aqui é a Pet Shop Au Au. Qual é o seu nome?"
    assert waha.to(PET_CHAT)[-1].startswith("A Pet Shop abre hoje às 09:30; seu lugar")
    assert not waha.to(CLINIC_CHAT)[0].startswith("Au au!")
    assert "fechado" not in waha.to(CLINIC_CHAT)[-1]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ({"no_such_text": "x"}, "unknown text 'no_such_text'"),
        ({"line_closed": "Abrimos {quando}."}, "unknown field"),
    ],
)
async def test_a_business_files_bad_text_is_refused_at_start(
    harness: Callable[..., AgentHarness], pet_file: Path, texts: dict[str, str], message: str
) -> None:
    with_texts(pet_file, texts)
    with pytest.raises(ValueError, match=message):
        harness(groq_api_key=None, business_files=f"pets={pet_file}")
