"""Fixtures for the edge and monitoring tests: one real gateway (and, for monitoring, two real
worker fleets) on a private Redis, shared by a module's tests under one key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.ops.processes import Service, running_gateway, serving_on_loopback

HMAC_KEY = "ops-test-hmac-key-0123456789abcdef0123"  # >= 32 characters


@dataclass
class Gateway:
    service: Service
    port: int
    prefix: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def module_prefix() -> str:
    return "ops" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`python -m gateway` on loopback with its own key prefix and spool."""
    prefix = module_prefix()
    workdir = tmp_path_factory.mktemp("gateway")
    with running_gateway(redis_url, HMAC_KEY, prefix, workdir) as (service, port):
        yield Gateway(service, port, prefix)


API_TOKEN = "ops-test-api-token-0123456789abcdef012"  # >= 32 characters


@dataclass
class Api:
    service: Service
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def api(
    gateway: Gateway, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """`python -m api` (the operator API) on loopback, on the gateway's key prefix."""
    environment = {
        "REDIS_URL": redis_url,
        "WSM_API_TOKEN": API_TOKEN,
        "WSM_KEY_PREFIX": gateway.prefix,
        "WSM_QUEUE_SHARDS": "1",
    }
    workdir = tmp_path_factory.mktemp("api")
    with serving_on_loopback("api", environment, workdir) as (service, port):
        yield Api(service, port)
