"""What the in-process tests of the worker's commands and fleet parts share: a queue on the
run's single Redis, settings built for it, and the environment a `wsm` command reads."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.redis_client import connect
from shared.settings import Settings
from tests.worker.conftest import Queue


@contextlib.asynccontextmanager
async def single_queue(redis_url: str, prefix: str) -> AsyncIterator[Queue]:
    """One Redis only: these tests exercise Python code that is the same on a cluster (the
    scripts' cluster cases are in the *_script.py tests)."""
    client = connect(redis_url)
    try:
        yield Queue(client, redis_url, prefix, 1)
    finally:
        await client.aclose()


def settings_of(queue: Queue, **extra: str) -> Settings:
    """Settings for `queue`, as the environment would give them (never a developer `.env`)."""
    values: dict[str, Any] = {"REDIS_URL": queue.url, "WSM_KEY_PREFIX": queue.prefix, **extra}
    return Settings(_env_file=None, **values)


def command_environment(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, redis_url: str, prefix: str
) -> None:
    """The environment a `wsm` command run in-process reads its settings from, in a working
    directory without a `.env`."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("WSM_KEY_PREFIX", prefix)


def record_clients(monkeypatch: pytest.MonkeyPatch, owner: Any) -> list[Any]:
    """The Redis clients `owner` (a module that imported `connect`) makes from now on."""
    made: list[Any] = []
    real = owner.connect

    def connect_and_record(*args: Any, **kwargs: Any) -> Any:
        client = real(*args, **kwargs)
        made.append(client)
        return client

    monkeypatch.setattr(owner, "connect", connect_and_record)
    return made


def has_deadlines(client: Any) -> bool:
    """Whether a call of `client` fails rather than waits forever when Redis stops answering
    without closing the connection (a partition sends no RST)."""
    pool = client.connection_pool
    # The bound of a round trip lives on the pool (shared/redis_lean.py), the connect
    # timeout on the connections.
    return bool(pool.command_timeout) and bool(pool.connection_kwargs.get("socket_connect_timeout"))
