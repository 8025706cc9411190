from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import respx

from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.support.closing import closing_all


@pytest.fixture
def waha() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield FakeWaha(router)


@pytest.fixture
async def make_harness(aredis, redis_url, key_prefix) -> AsyncIterator[Callable[..., Harness]]:
    async with closing_all(
        lambda **overrides: Harness(aredis, settings_for(key_prefix, redis_url, **overrides))
    ) as make:
        yield make
