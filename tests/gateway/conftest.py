"""Helpers for the gateway tests: the gateway in-process (httpx over ASGI) where requests and
Redis are the point, and as a real `python -m gateway` process where processes are."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
import redis
import respx

from shared.embedded_redis import free_port
from shared.enqueue import EnqueueRequest
from shared.envelope import QueuedEvent, decode_record
from shared.events import route_event
from shared.keys import ShardKeys, keys_for_conversation
from shared.settings import Settings
from tests.engine.harness import FakeWaha, Harness, settings_for
from tests.support.polling import async_wait_until, wait_until
from tests.support.waha import compact, text_message, webhook_headers

if TYPE_CHECKING:  # the gateway's modules are imported where used (see inprocess_gateway)
    from gateway.runtime import GatewayRuntime

HMAC_KEY = "gateway-test-key-0123456789abcdef0123"  # >= 32 characters
REPO = Path(__file__).resolve().parents[2]


def gateway_settings(
    redis_url: str, key_prefix: str, spool_dir: Path, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "REDIS_URL": redis_url,
        "WSM_KEY_PREFIX": key_prefix,
        "WEBHOOK_HMAC_KEY": HMAC_KEY,
        "WSM_SPOOL_DIR": spool_dir,
        "WSM_QUEUE_SHARDS": 1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# For in-process tests about signatures, bodies and duplicates, not about the deadline: the
# product's 50 ms Redis deadline can legitimately expire on a loaded 2-core machine and answer
# `spooled` (durable too, but not what those tests check). A deadline no load reaches, still
# under WAHA's ~8 s request timeout, keeps their `queued` and `duplicate` answers exact. The
# deadline itself is tested with real processes in test_outage.py and test_process.py.
STEADY_REDIS_TIMEOUT_MS = 5000


def steady_settings(redis_url: str, key_prefix: str, spool_dir: Path, **overrides: Any) -> Settings:
    """gateway_settings with a Redis deadline that load cannot hit (see above)."""
    return gateway_settings(
        redis_url,
        key_prefix,
        spool_dir,
        **{"WSM_WEBHOOK_REDIS_TIMEOUT_MS": STEADY_REDIS_TIMEOUT_MS, **overrides},
    )


async def first_contact(runtime: GatewayRuntime) -> None:
    """Wait for the replayer's first contact with Redis (the server's version), which leaves a
    connection in the client's pool for the test's webhooks. Late in a run, on a loaded 2-core
    machine, opening a connection from the suite's process can take longer than the client's
    250 ms connect timeout (gateway/redis_link.py), and the webhook is answered `spooled`:
    durable, but not what the tests of this fixture check (test_outage.py and test_process.py
    test a slow or absent Redis with real processes). The replayer retries its own contact."""

    async def contacted() -> bool:
        return runtime.status.version is not None

    await async_wait_until(contacted, timeout=30, what="the gateway's first contact with Redis")


@contextlib.asynccontextmanager
async def inprocess_gateway(
    settings: Settings, *, redis_down: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app with its runtime started, behind an httpx client (no sockets), once it
    has reached Redis (`first_contact`); `redis_down`: a test whose Redis is down or unfit at
    start does not wait for that."""
    from gateway.app import create_app

    app = create_app(settings)
    await app.runtime.start()
    try:
        if not redis_down:
            await first_contact(app.runtime)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=10
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
    finally:
        await app.runtime.stop()


@pytest.fixture
async def app_client(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process gateway on the suite's Redis, under this test's key prefix, with a
    deadline load cannot hit (see STEADY_REDIS_TIMEOUT_MS)."""
    async with inprocess_gateway(steady_settings(redis_url, key_prefix, tmp_path / "spool")) as c:
        yield c


def signed(body: bytes, key: str | None = HMAC_KEY) -> dict[str, str]:
    """WAHA's headers for `body` (no signature headers when key is None)."""
    return webhook_headers(body, key)


def queued_events(client: redis.Redis, prefix: str, session: str, chat: str) -> list[QueuedEvent]:
    """A conversation's queued records, oldest first."""
    keys = keys_for_conversation(session, chat, 1, prefix)
    ids = client.lrange(keys.messages, 0, -1)
    # LPUSH at the left: the oldest message is at the right.
    return [decode_record(client.hget(keys.bodies, i)) for i in reversed(ids)]  # type: ignore[arg-type]


def waiting_count(client: redis.Redis, prefix: str) -> int:
    return int(client.hget(ShardKeys(0, prefix).stats, "waiting") or 0)


async def drain_engine(aredis: Any, redis_url: str, key_prefix: str) -> FakeWaha:
    """The engine run over everything the gateway queued (tests/engine/harness.py), WAHA's
    sends answered 201; the stand-in WAHA as the engine left it."""
    with respx.mock(assert_all_called=False) as router:
        waha = FakeWaha(router)
        harness = Harness(aredis, settings_for(key_prefix, redis_url))
        try:
            await harness.drain()
        finally:
            await harness.aclose()
    return waha


# --- the real process -----------------------------------------------------------------------


class GatewayProcess:
    """`python -m gateway` as a child process with its own environment and log file."""

    def __init__(
        self,
        workdir: Path,
        environment: dict[str, str],
        *,
        workers: int = 1,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log_path = workdir / f"gateway-{self.port}-{len(list(workdir.glob('gateway-*')))}.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WSM_", "WEBHOOK_", "REDIS_URL", "PROMETHEUS_"))
        }
        env.update(environment)
        env["PYTHONPATH"] = str(REPO)
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleanup reaches uvicorn's workers
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **({"timeout": 10} | options))

    def wait_ready(self, timeout: float = 30) -> GatewayProcess:
        def alive() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(alive, timeout=timeout, interval=0.05, what="gateway /healthz")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash (or the OOM killer) would."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        self.kill()
        self._log.close()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Any]:
    """Start real gateways; every one is stopped (or killed) at the end of the test."""
    started: list[GatewayProcess] = []

    def start(
        environment: dict[str, str],
        *,
        workers: int = 1,
        port: int | None = None,
        ready: bool = True,
    ) -> GatewayProcess:
        process = GatewayProcess(tmp_path / "gateways", environment, workers=workers, port=port)
        started.append(process)
        return process.wait_ready() if ready else process

    yield start
    for process in started:
        process.stop()


def gateway_environment(
    redis_url: str, key_prefix: str, spool_dir: Path, **extra: str
) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "WSM_KEY_PREFIX": key_prefix,
        "WEBHOOK_HMAC_KEY": HMAC_KEY,
        "WSM_SPOOL_DIR": str(spool_dir),
        "WSM_QUEUE_SHARDS": "1",
        **extra,
    }


async def when_ready(client: httpx.AsyncClient) -> httpx.Response:
    """/readyz asked until it answers ready (at most 2 s). A busy machine (CI on two cores,
    the whole suite running) can miss the readiness ping's short deadline once; a healthy
    gateway then answers ready on the next ask, a broken one never does."""
    for _ in range(20):
        response = await client.get("/readyz")
        if response.status_code == 200:
            break
        await asyncio.sleep(0.1)
    return response


@contextlib.contextmanager
def frozen(server: Any) -> Iterator[None]:
    """The Redis server stopped (SIGSTOP): connections stay open, nothing answers; thawed on
    the way out, whatever happened."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def enqueue_request(chat: str, text: str, prefix: str) -> tuple[bytes, EnqueueRequest]:
    """A WAHA text message's body and the enqueue request the webhook makes of it."""
    body = compact(text_message(chat, text))
    routed = route_event(orjson.loads(body), body)
    assert routed is not None
    request = EnqueueRequest.for_event(
        routed, body, received_at_ms=2, shards=1, dedupe_ttl_seconds=60, prefix=prefix
    )
    return body, request
