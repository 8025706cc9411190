"""compose's Redis (issue 12, section 3): a password is required and each service has its own
ACL user with only what it needs. The ACL file is the one `redis-acl/start.sh` writes in the
container, loaded by a real redis-server; the real gateway, engine and operator API then run
as their users, and what they must not do is refused."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
import yaml

from api.app import create_app as create_api
from shared.embedded_redis import find_server_binary, free_port
from shared.keys import keys_for_conversation
from shared.settings import Settings
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.gateway.conftest import inprocess_gateway
from tests.support.polling import wait_until
from tests.support.waha import compact, text_message, webhook_headers

REPO = Path(__file__).resolve().parents[2]
START = REPO / "redis-acl" / "start.sh"
USERS = ("gateway", "worker", "api", "admin")
HMAC = "acl-test-hmac-key-0123456789abcdef0123"
TOKEN = "acl-test-api-token-0123456789abcdef01"
PREFIX = "wsm"  # compose's WSM_KEY_PREFIX default
ANA = "5511987650071@c.us"


class AclRedis:
    def __init__(self, root: Path) -> None:
        self.passwords = {user: secrets.token_hex(32) for user in USERS}
        acl = root / "acl" / "users.acl"
        environment = os.environ | {
            f"REDIS_{user.upper()}_PASSWORD": password for user, password in self.passwords.items()
        }
        environment |= {"WSM_REDIS_ACL_FILE": str(acl), "WSM_KEY_PREFIX": PREFIX}
        written = subprocess.run(
            ["sh", str(START), "--acl-only"], env=environment, capture_output=True, text=True
        )
        assert written.returncode == 0, written.stderr
        self.port = free_port()
        (root / "data").mkdir()
        self.process = subprocess.Popen(
            [find_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(root / "data"), "--save", "", "--appendonly", "no",
             "--aclfile", str(acl)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._accepts, timeout=10, what="redis-server with the ACL file")

    def _accepts(self) -> bool:
        assert self.process.poll() is None, "redis-server refused the ACL file"
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def url(self, user: str | None) -> str:
        if user is None:
            return f"redis://127.0.0.1:{self.port}/0"
        if user == "healthcheck":
            return f"redis://healthcheck:anything@127.0.0.1:{self.port}/0"
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def client(self, user: str | None) -> redis.Redis:
        return redis.Redis.from_url(self.url(user))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    server = AclRedis(tmp_path_factory.mktemp("redis-acl"))
    yield server
    server.stop()


def refused(client: redis.Redis, *command: Any) -> bool:
    try:
        client.execute_command(*command)
    except (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError):
        return True
    except redis.exceptions.ResponseError as exc:
        return "NOPERM" in str(exc) or "NOAUTH" in str(exc)
    return False


def test_compose_runs_redis_with_the_acl_and_a_user_per_service() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text("utf-8"))
    services = compose["services"]
    assert services["redis"]["entrypoint"] == ["/bin/sh", "/usr/local/etc/wsm/start.sh"]
    assert "./redis-acl/start.sh:/usr/local/etc/wsm/start.sh:ro" in services["redis"]["volumes"]
    for name in ("gateway", "worker", "api"):
        url = services[name]["environment"]["REDIS_URL"]
        assert url.startswith(f"redis://{name}:${{REDIS_{name.upper()}_PASSWORD:?"), url
    # Redis sits on the backend network alone with wsm's services; WAHA is not on it.
    assert services["redis"]["networks"] == ["backend"]
    assert "backend" not in services["waha"]["networks"]
    assert compose["networks"]["backend"]["internal"] is True
    assert "--web.enable-lifecycle" not in services["prometheus"]["command"]


def test_nobody_gets_in_without_a_password(acl_redis: AclRedis) -> None:
    anonymous = acl_redis.client(None)
    assert refused(anonymous, "GET", f"{PREFIX}:x")
    assert refused(anonymous, "PING")
    health = acl_redis.client("healthcheck")
    assert health.ping()
    assert refused(health, "GET", f"{PREFIX}:x")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(f"redis://worker:wrong@127.0.0.1:{acl_redis.port}/0").ping()


def test_no_service_may_run_dangerous_commands(acl_redis: AclRedis) -> None:
    for user in ("gateway", "worker", "api"):
        client = acl_redis.client(user)
        assert client.ping()
        for command in (
            ("FLUSHALL",),
            ("KEYS", "*"),
            ("CONFIG", "GET", "*"),
            ("FLUSHDB",),
            ("CLIENT", "LIST"),
        ):
            assert refused(client, *command), (user, command)
        # Nothing outside the deployment's prefix.
        assert refused(client, "SET", "other-app:key", "1"), user
    admin = acl_redis.client("admin")
    assert admin.config_get("appendonly")


async def test_the_gateway_queues_as_its_user_and_touches_only_the_queue(
    acl_redis: AclRedis, tmp_path: Path
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, REDIS_URL=acl_redis.url("gateway"), WEBHOOK_HMAC_KEY=HMAC,
        WSM_SPOOL_DIR=tmp_path / "spool", WSM_WEBHOOK_REDIS_TIMEOUT_MS=5000,
    )  # fmt: skip
    body = compact(text_message(ANA, "oi"))
    async with inprocess_gateway(settings) as gateway:
        answer = await gateway.post("/webhook", content=body, headers=webhook_headers(body, HMAC))
        assert answer.json() == {"status": "queued"}
    keys = keys_for_conversation("default", ANA, 1, PREFIX)
    assert acl_redis.client("admin").llen(keys.messages) == 1
    gateway_user = acl_redis.client("gateway")
    assert refused(gateway_user, "GET", f"{PREFIX}:{{cal}}:b:x")
    assert refused(gateway_user, "HGETALL", f"{PREFIX}:{{eng}}:sessions")


async def test_the_engine_and_the_api_run_as_their_users(acl_redis: AclRedis) -> None:
    import respx

    worker = aioredis.Redis.from_url(acl_redis.url("worker"))
    api_redis = aioredis.Redis.from_url(acl_redis.url("api"))
    chat = "5511987650072@c.us"
    try:
        with respx.mock(assert_all_called=False) as router:
            waha = FakeWaha(router)
            harness = Harness(worker, settings_for(PREFIX, acl_redis.url("worker")))
            try:
                await harness.say(chat, "oi")
                assert waha.to(chat), "the engine answered, as the worker user"
            finally:
                await harness.aclose()
        api = create_api(settings_for(PREFIX, acl_redis.url("api"), api_token=TOKEN), api_redis)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            found = await http.get(f"/api/conversations/default/{chat}", headers=auth)
            assert found.status_code == 200, found.text
            erased = await http.delete(f"/api/contacts/default/{chat}", headers=auth)
            assert erased.status_code == 200, erased.text
    finally:
        await worker.aclose()
        await api_redis.aclose()
