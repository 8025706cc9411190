from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import respx

from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.support.closing import closing_all

# Hosts the tests reach through transports of their own: the in-process apps (api/, the
# console, over httpx.ASGITransport) and receivers built on httpx.MockTransport.
OWN_TRANSPORTS = ("api.test", "console.test", "hooks.test")


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """The one respx router of a test: every stand-in (WAHA, Groq, WAHA's files) mocks its
    routes on it, so they all answer inside the same mock. `using="httpx"`: the product's
    clients run on shared/lean_http.py, which respx's default (httpcore) mode cannot see."""
    with respx.mock(assert_all_called=False, using="httpx") as mock:
        # That mode sees every httpx client, the tests' own transports too: those go through
        # untouched.
        mock.route(host__in=OWN_TRANSPORTS).pass_through()
        yield mock


@pytest.fixture
def waha(router: respx.MockRouter) -> FakeWaha:
    return FakeWaha(router)


@pytest.fixture
async def make_harness(aredis, redis_url, key_prefix) -> AsyncIterator[Callable[..., Harness]]:
    async with closing_all(
        lambda **overrides: Harness(aredis, settings_for(key_prefix, redis_url, **overrides))
    ) as make:
        yield make
