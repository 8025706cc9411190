from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from tests.engine.conftest import router, waha
from tests.engine.harness import Harness, settings_for
from tests.support.asgi import served

__all__ = ["API_AUTH", "API_TOKEN", "api_app", "api_client", "harness", "router", "waha"]

API_TOKEN = "s3cret-token-0123456789abcdef0123456"  # >= 32 characters
API_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def api_app(aredis: Any, redis_url: str, key_prefix: str) -> FastAPI:
    """The operator API on the test's Redis and key prefix, bearer API_TOKEN."""
    return create_app(settings_for(key_prefix, redis_url, api_token=API_TOKEN), aredis)


@pytest.fixture
async def api_client(api_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with served(api_app) as http:
        yield http


@pytest.fixture
async def harness(aredis: Any, redis_url: str, key_prefix: str) -> AsyncIterator[Harness]:
    """The engine on the test's Redis, driven through the real queue protocol; closed after."""
    harness = Harness(aredis, settings_for(key_prefix, redis_url))
    yield harness
    await harness.aclose()
