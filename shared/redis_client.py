"""Connecting to Redis, and refusing a server too old for the queue protocol."""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from shared.redis_lean import LeanRedis, WaitingPool

# Script flags (`#!lua`), BLMOVE and LMPOP need Redis 7.0; Valkey reports a compatible version.
MIN_REDIS_VERSION = (7, 0, 0)


# What every async component is handed: a plain client or a cluster client. Both answer the
# commands the protocol uses (EVALSHA routed by key slot), so code is written once for both.
RedisClient = Redis | RedisCluster


def one_node(pipe: Any) -> bool:
    """Whether `pipe` (a client's pipeline) goes to one Redis: its commands then run in the
    order given, on one connection, and a script may name keys of any hash tag. A cluster's
    pipeline sends each node's share apart, in no set order, and a script's keys must share a
    slot."""
    return not isinstance(pipe, ClusterPipeline)


class UnsupportedRedis(RuntimeError):
    """The server is older than Redis 7.0 (terminal: the product cannot run on it)."""


# Every worker slot parked in BLMOVE holds a connection, and the engine's senders add their own;
# redis-py's default pool has 100 connections and *fails* a command when they are all in use.
# A waiting pool makes a burst wait for a free connection instead.
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_POOL_TIMEOUT_SECONDS = 10.0


def connect(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT_SECONDS,
    **options: Any,
) -> RedisClient:
    """A client for `url`; `redis+cluster://host:port` gives a Redis Cluster client.

    Both clients answer the same commands the protocol uses (EVALSHA routed by key slot).
    The plain client takes the shorter path per round trip of shared/redis_lean.py;
    `socket_timeout` there bounds each round trip as a whole.
    """
    if url.startswith("redis+cluster://"):
        return RedisCluster.from_url(
            "redis://" + url.removeprefix("redis+cluster://"),
            max_connections=max_connections,
            **options,
        )
    pool = WaitingPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **options
    )
    return LeanRedis.from_pool(pool)


def parse_version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        # Leading digits only: "4-rc1" is 4, not 41.
        match = re.match(r"\d*", piece)
        parts.append(int(match.group(0) or 0) if match else 0)
    return tuple(parts)


async def ensure_supported_server(client: RedisClient) -> str:
    """Return the server's version, or raise UnsupportedRedis with a message fit for a log."""
    info = await client.info("server")
    if isinstance(info, dict) and "redis_version" not in info:
        # A cluster client answers per node: {node: info}; every node must qualify.
        infos = list(info.values())
    else:
        infos = [info]
    version = "0"
    for node_info in infos:
        version = str(node_info.get("redis_version", "0"))
        if parse_version(version) < MIN_REDIS_VERSION:
            raise UnsupportedRedis(
                f"Redis {version} is too old: wsm needs Redis 7.0+ or Valkey "
                "(script flags, BLMOVE). Upgrade the server or point REDIS_URL elsewhere."
            )
    return version
