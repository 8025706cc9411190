"""The engine's wiring: one handler factory (the setting's default), one place that builds the
parts (engine/parts.py), one dispatch table for the events a conversation handles."""

from __future__ import annotations

from typing import Any

import pytest

from engine import commands
from engine.agent.fallback import FallbackBrain
from engine.parts import booking_store, calendar_from
from engine.service import EngineService
from engine.turn.dispatch import STEPS
from shared.settings import Settings
from tests.engine.harness import settings_for
from worker.handler import HandlerLoadError, HandlerSetup, close_handler, load_handler


def test_every_command_and_message_event_has_a_step() -> None:
    assert STEPS.keys() >= commands.ALL
    for event in ("message", "message.any", "message.ack", "message.ack.group"):
        assert event in STEPS
    for event in ("message.edited", "message.revoked", "message.reaction"):
        assert event in STEPS


def test_derived_settings_are_computed_on_settings() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, history_retention_days=7, menu_services=" Consulta, ,Exame ,"
    )
    assert settings.history_retention_seconds == 7 * 86400
    assert settings.menu_service_names == ["Consulta", "Exame"]


def test_the_api_builds_bookings_like_the_worker(redis_url: str, key_prefix: str) -> None:
    settings = settings_for(key_prefix, redis_url, history_retention_days=3)
    store = booking_store(object(), settings)  # type: ignore[arg-type]
    assert store.retention_seconds == 3 * 86400
    assert store.webhook_enabled is False
    assert [s.name for s in store.calendar.services] == settings.menu_service_names
    assert [s.name for s in calendar_from(settings).services] == settings.menu_service_names


@pytest.mark.parametrize("spec", [Settings.model_fields["worker_handler"].default])
async def test_the_default_handler_setting_loads_the_engine_with_the_agent(
    aredis: Any, redis_url: str, key_prefix: str, spec: str
) -> None:
    settings = settings_for(key_prefix, redis_url)
    setup = HandlerSetup(settings=settings, redis=aredis, process_index=0, fleet_id="t")
    handler = await load_handler(spec, setup)
    try:
        assert isinstance(handler, EngineService)
        assert isinstance(handler.engine.tools.brain, FallbackBrain)
    finally:
        await close_handler(handler)


@pytest.mark.parametrize("spec", ["engine.handler:create", "engine.service:create"])
async def test_the_old_factory_names_are_gone(
    aredis: Any, redis_url: str, key_prefix: str, spec: str
) -> None:
    settings = settings_for(key_prefix, redis_url)
    setup = HandlerSetup(settings=settings, redis=aredis, process_index=0, fleet_id="t")
    with pytest.raises(HandlerLoadError):
        await load_handler(spec, setup)
