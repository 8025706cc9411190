"""The gateway's Redis client, tuned so a dead or frozen Redis costs milliseconds, not seconds.

redis-py's defaults would retry a failed command three times with exponential backoff and wait
up to the OS connect timeout: a webhook could hang for seconds while WAHA gives up on it at
about 8 s and resends. The gateway puts its own hard deadline on every round trip, so the
client must fail fast on its own too: no internal retry, short connect and socket timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from shared.redis_client import RedisClient, UnsupportedRedis, connect, ensure_supported_server
from shared.settings import Settings

log = logging.getLogger("wsm.gateway.redis_link")

# A local Redis accepts a connection in well under a millisecond; past this it is unreachable.
CONNECT_TIMEOUT_S = 0.25
# Upper bound for any single read. The webhook's deadline (50 ms) cuts in long before; this one
# bounds the replayer's larger batches and the version check.
SOCKET_TIMEOUT_S = 2.0


def connect_gateway_client(settings: Settings) -> Any:
    return connect(
        settings.redis_url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


@dataclass(slots=True)
class RedisStatus:
    """What the gateway knows about its Redis server (shared by the webhook path, the
    replayer and /readyz)."""

    version: str | None = None
    # Set when the server turned out to be too old: nothing is sent to it, everything spools.
    unsupported: str | None = None
    # Whether the last round trip (webhook batch or replay) succeeded. While it did not, a
    # webhook that finds older events in the spool joins them at once instead of waiting
    # for a replayer that cannot make progress.
    reachable: bool = True
    _came_back: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def usable(self) -> bool:
        return self.unsupported is None

    def mark_reachable(self) -> None:
        if not self.reachable:
            self.reachable = True
            self._came_back.set()
            log.info("Redis answers again; the spool is being replayed")

    def mark_unreachable(self, cause: str) -> None:
        # Logged once per outage, on the transition, with the first failure's cause: an
        # operator (or a failing test) sees why events went to the spool, and a long outage
        # does not log once per batch.
        if self.reachable:
            log.warning("a Redis round trip failed; events go to the spool", extra={"error": cause})
        self.reachable = False
        self._came_back.clear()

    async def wait_reachable(self, at_most_s: float) -> None:
        """Sleep up to `at_most_s`, less if a round trip succeeds meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._came_back.wait(), at_most_s)

    async def check_version(self, client: RedisClient, timeout_s: float) -> bool:
        """True once the server is known to be supported; False if unreachable or too old."""
        if self.version is not None or self.unsupported is not None:
            return self.usable
        try:
            async with asyncio.timeout(timeout_s):
                self.version = await ensure_supported_server(client)
        except UnsupportedRedis as exc:
            self.unsupported = str(exc)
            log.critical(
                "refusing to use this Redis; events stay in the spool",
                extra={"error": self.unsupported},
            )
            return False
        except Exception as exc:
            log.debug("Redis version check failed", extra={"error": repr(exc)})
            return False
        log.info("connected to Redis", extra={"redis_version": self.version})
        return True


async def check_server_at_start(settings: Settings, timeout_s: float = 2.0) -> str | None:
    """The server's version; None when it does not answer (the gateway then starts anyway
    and spools). Raises UnsupportedRedis for a server older than 7.0."""
    client = connect_gateway_client(settings)
    try:
        async with asyncio.timeout(timeout_s):
            return await ensure_supported_server(client)
    except UnsupportedRedis:
        raise
    except Exception as exc:
        log.warning(
            "Redis does not answer at start; events will be spooled until it does",
            extra={"error": repr(exc)},
        )
        return None
    finally:
        await client.aclose()
