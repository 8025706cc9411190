"""Fixtures of the AI agent's tests: a test calendar (every day 08:00-18:00), a clock fixed on
next Monday 09:00 in São Paulo (so slots never depend on when the suite runs), the agent built
exactly as a worker builds it, and Groq stood in for by respx (tests/engine/agent/fake_groq.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import respx
import yaml

from engine.agent.service import AgentParts, build_agent
from shared import clock as clock_module
from shared.settings import Settings
from tests.engine.agent.fake_groq import GROQ, FakeGroq
from tests.engine.harness import AgentHarness
from tests.support.closing import closing_all

SAO_PAULO = ZoneInfo("America/Sao_Paulo")

CALENDAR = {
    "business": {
        "name": "Clínica Sorriso",
        "description": "Clínica odontológica no centro de Campinas. Consulta: R$ 150.",
    },
    "timezone": "America/Sao_Paulo",
    "slot_minutes": 30,
    "days_ahead": 14,
    "min_notice_minutes": 60,
    "hours": {day: ["08:00-12:00", "13:00-18:00"] for day in
              ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
    "services": [
        {"id": "consulta", "name": "Consulta", "duration_minutes": 30},
        {"id": "limpeza", "name": "Limpeza", "duration_minutes": 60},
    ],
}  # fmt: skip


def next_monday_9() -> datetime:
    today = datetime.now(SAO_PAULO).date()
    monday = today + timedelta(days=7 - today.weekday())
    return datetime(monday.year, monday.month, monday.day, 9, 0, tzinfo=SAO_PAULO)


@pytest.fixture
def now() -> datetime:
    return next_monday_9()


@pytest.fixture
def clock(now: datetime) -> Callable[[], datetime]:
    return lambda: now


@pytest.fixture(autouse=True)
def engine_time_at_now(now: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's own clock (the waiting line's opening hours, timers, the state's stamps)
    starts at the agent's `now` and keeps running, so a conversation's turns see the business
    open whatever the hour the suite runs at. Every engine module that took `now_ms` from
    shared.clock gets the shifted one."""
    real = clock_module.now_ms
    offset = int(now.timestamp() * 1000) - real()

    def shifted() -> int:
        return real() + offset

    monkeypatch.setattr(clock_module, "now_ms", shifted)
    for name, module in list(sys.modules.items()):
        if name.startswith("engine") and getattr(module, "now_ms", None) is real:
            monkeypatch.setattr(module, "now_ms", shifted)


@pytest.fixture
def move_clock(engine_time_at_now: None, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Moves the engine's clock (already started at the agent's `now` by engine_time_at_now) to
    an absolute moment, in ms; it keeps running from there. With `clock` of
    tests/engine/agent/support.py the agent reads the same moving clock."""
    shifted = clock_module.now_ms
    extra = [0]

    def moved() -> int:
        return shifted() + extra[0]

    monkeypatch.setattr(clock_module, "now_ms", moved)
    for name, module in list(sys.modules.items()):
        if name.startswith("engine") and getattr(module, "now_ms", None) is shifted:
            monkeypatch.setattr(module, "now_ms", moved)

    def to(at_ms: int) -> None:
        extra[0] = 0
        extra[0] = at_ms - shifted()

    return to


@pytest.fixture
def calendar_file(tmp_path: Path) -> Path:
    path = tmp_path / "calendar.yaml"
    path.write_text(yaml.safe_dump(CALENDAR, allow_unicode=True), "utf-8")
    return path


@pytest.fixture
def agent_settings(redis_url: str, key_prefix: str, calendar_file: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "calendar_file": calendar_file,
            "groq_api_key": "gsk_test",
            "groq_base_url": GROQ,
            "llm_max_retries": 0,
            "waha_url": "http://waha.test",
            "typing_delay_max_ms": 0,
            "sends_per_second_per_session": 0,
            "send_retry_base_ms": 1,
            "send_retry_max_ms": 2,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
async def make_agent(
    aredis: Any, agent_settings: Callable[..., Settings], clock: Callable[[], datetime]
) -> AsyncIterator[Callable[..., AgentParts]]:
    async with closing_all(
        lambda **overrides: build_agent(aredis, agent_settings(**overrides), clock=clock)
    ) as make:
        yield make


@pytest.fixture
def groq(router: respx.MockRouter) -> FakeGroq:
    return FakeGroq(router)


@pytest.fixture
async def harness(
    aredis: Any, agent_settings: Callable[..., Settings], clock: Callable[[], datetime]
) -> AsyncIterator[Callable[..., AgentHarness]]:
    """The agent's whole engine (queue, commit, sender) built per test, closed after it."""
    async with closing_all(
        lambda **overrides: AgentHarness(aredis, agent_settings(**overrides), clock)
    ) as make:
        yield make
