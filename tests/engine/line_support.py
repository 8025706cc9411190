"""The waiting line's and the teams' test kit, shared by the line's tests
(tests/engine/test_waiting_line_flow.py, test_line_reconcile.py, test_line_timeout.py), the
teams' (tests/engine/test_teams.py) and the API's teams routes (tests/api/test_teams_api.py):
a customer asking for a person through the menu, and a business file with two teams."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.harness import Harness
from tests.support.waha import text_message


async def ask_for_a_person(harness: Harness, chat: str, name: str) -> None:
    for text in ("oi", name, "3"):
        await harness.webhook(text_message(chat, text))
    await harness.drain()
    await harness.service.coordinator.maintain()
    await harness.drain()


# Open around the clock, so the real time can run.
ALL_DAY = "\n".join(
    f'  {day}: ["00:00-24:00"]' for day in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
)


TWO_TEAMS = f"""
business:
  name: Clínica Sorriso
hours:
{ALL_DAY}
services:
  - id: consulta
    name: Consulta
teams:
  - id: recepcao
    name: Recepção
  - id: financeiro
    name: Financeiro
"""


@pytest.fixture
def business_file(tmp_path: Path) -> Path:
    path = tmp_path / "business.yaml"
    path.write_text(TWO_TEAMS, "utf-8")
    return path
