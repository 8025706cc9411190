"""compose's Redis memory limit, on real redis-servers: the command compose runs (its
`${REDIS_MAXMEMORY:-1gb}` interpolated as compose does) starts Redis with that limit and
noeviction; at the limit Redis refuses writes and evicts nothing, the workers' snapshot shows
it as WsmRedisMemoryHigh reads it, the real gateway spools the webhook it cannot queue and
replays it once memory is freed; and compose's worker ACL user may read INFO memory."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from shared.embedded_redis import EmbeddedRedis
from shared.keys import keys_for_conversation
from shared.queue_stats import read_queue_snapshot
from shared.redis_client import connect
from tests.gateway.conftest import HMAC_KEY, inprocess_gateway, steady_settings
from tests.ops.render import REPO
from tests.ops.test_edge_redis_acl import AclRedis
from tests.support.polling import async_wait_until
from tests.support.waha import compact, text_message, webhook_headers

MIB = 1024 * 1024
GIB = 1024 * MIB
CUSTOMER = "5511987650081@c.us"


def interpolate(argument: str, environment: Mapping[str, str]) -> str:
    """compose's `${NAME:-default}` and `${NAME}` in one argument, from `environment`."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        return environment.get(name) or default

    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)(:-([^}]*))?\}", value, argument)


def compose_redis_arguments(environment: Mapping[str, str]) -> list[str]:
    """The options of compose's `redis-server` command, interpolated."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text("utf-8"))
    command = [str(part) for part in compose["services"]["redis"]["command"]]
    assert command[0] == "redis-server"
    return [interpolate(part, environment) for part in command[1:]]


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[Any]:
    """Start a redis-server with compose's options (and the environment given); stopped at the
    end."""
    started: list[EmbeddedRedis] = []

    def start(environment: Mapping[str, str]) -> EmbeddedRedis:
        server = EmbeddedRedis(
            tmp_path / f"redis{len(started)}", extra_args=compose_redis_arguments(environment)
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    ("environment", "limit"),
    [({}, GIB), ({"REDIS_MAXMEMORY": "256mb"}, 256 * MIB), ({"REDIS_MAXMEMORY": "2gb"}, 2 * GIB)],
    ids=["default", "256mb", "2gb"],
)
def test_compose_runs_redis_with_a_memory_limit_and_noeviction(
    compose_redis: Any, environment: dict[str, str], limit: int
) -> None:
    server = compose_redis(environment)
    client = redis.Redis.from_url(server.url)
    try:
        config = client.config_get("maxmemory*")
        assert int(config["maxmemory"]) == limit
        assert config["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendfsync")["appendfsync"] == "always"
    finally:
        client.close()


async def test_a_full_redis_refuses_writes_keeps_every_key_and_the_gateway_spools(
    compose_redis: Any, tmp_path: Path, key_prefix: str
) -> None:
    server = compose_redis({"REDIS_MAXMEMORY": "4mb"})
    admin = connect(server.url)
    try:
        for filler in range(256):  # 16 MiB, far past the limit
            try:
                await admin.set(f"filler:{filler}", b"x" * 65536)
            except redis.exceptions.OutOfMemoryError:
                break
        else:
            pytest.fail("Redis took 16 MiB of writes past its 4 MiB limit")
        assert filler > 0 and await admin.dbsize() == filler, "noeviction: nothing evicted"

        # What the workers export and WsmRedisMemoryHigh reads: above 80 % of the limit.
        snapshot = await read_queue_snapshot(admin, 1, key_prefix)
        assert snapshot.redis_memory_max_bytes == 4 * MIB
        assert snapshot.redis_memory_used_bytes / snapshot.redis_memory_max_bytes > 0.8

        settings = steady_settings(server.url, key_prefix, tmp_path / "spool")
        body = compact(text_message(CUSTOMER, "oi, tudo bem?"))
        async with inprocess_gateway(settings) as gateway:
            answer = await gateway.post(
                "/webhook", content=body, headers=webhook_headers(body, HMAC_KEY)
            )
            assert answer.json() == {"status": "spooled"}, answer.text
            keys = keys_for_conversation("default", CUSTOMER, 1, key_prefix)
            assert await admin.llen(keys.messages) == 0

            # Memory freed: the gateway replays its spool into Redis by itself.
            await admin.delete(*[f"filler:{n}" for n in range(filler)])

            async def queued() -> bool:
                return int(await admin.llen(keys.messages)) == 1

            await async_wait_until(queued, timeout=20, interval=0.1, what="the spool replayed")
        snapshot = await read_queue_snapshot(admin, 1, key_prefix)
        assert snapshot.waiting == 1
        assert snapshot.redis_memory_used_bytes / snapshot.redis_memory_max_bytes < 0.8
    finally:
        await admin.aclose()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    server = AclRedis(tmp_path_factory.mktemp("redis-acl-memory"))
    yield server
    server.stop()


async def test_the_worker_user_of_compose_reads_redis_memory(acl_redis: AclRedis) -> None:
    """redis-acl/start.sh gives the worker user `+info` among its data commands: its
    supervisor's snapshot shows Redis's memory and limit (set as compose sets it)."""
    acl_redis.client("admin").config_set("maxmemory", str(GIB))
    worker = connect(acl_redis.url("worker"))
    try:
        snapshot = await read_queue_snapshot(worker, 1, "wsm")
        assert snapshot.redis_memory_max_bytes == GIB
        assert 0 < snapshot.redis_memory_used_bytes < GIB
    finally:
        await worker.aclose()
