"""The shorter path through redis-py (shared/redis_lean.py) keeps redis-py's behaviour: the same
replies, a bound on every round trip (a late reply is never read as the next command's), a pool
that waits rather than fails, the client's retry policy, and connections the server closed while
idle replaced before use. Against the suite's real redis-server, and a silent server for the
bounds (one that accepts and never answers, as a partitioned or frozen Redis does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Self

import pytest
import redis.asyncio
from redis.asyncio import client as redis_py_client
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_client import connect
from shared.redis_lean import REDIS_PY_SOCKET_TIMEOUT, LeanRedis, WaitingPool
from tests.support.polling import async_wait_until

NO_RETRY = Retry(NoBackoff(), 0)


class LoopbackServer:
    """A TCP server on loopback that plays a broken Redis (`serve` per connection)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            await self.serve(reader, writer)
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


class SilentServer(LoopbackServer):
    """Accepts connections and reads what is sent, and never answers."""

    received = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            self.received += 1


class FlakyServer(LoopbackServer):
    """Answers +OK to every command, except that on the first connection it hangs up as soon
    as a SET arrives (after the connection's handshake): a connection lost mid-command."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = self.connections == 1
        while data := await reader.read(4096):
            if first and b"\r\nSET\r\n" in data:
                return
            # One reply per command, each a RESP array: a line that starts with "*".
            commands = sum(1 for line in data.split(b"\r\n") if line.startswith(b"*"))
            writer.write(b"+OK\r\n" * commands)
            await writer.drain()


@pytest.fixture
async def lean(redis_url: str) -> AsyncIterator[Any]:
    client = connect(redis_url, socket_timeout=0.5, retry=NO_RETRY)
    yield client
    await client.aclose()


def in_use(client: Any) -> int:
    return len(client.connection_pool._in_use_connections)


async def pop_given_up(sync_redis: Any) -> bool:
    """Whether no connection is blocked in BLPOP on the server any more. A dropped connection
    is closed without waiting (redis-py's `disconnect(nowait=True)`, the socket goes on the
    loop's next turn); until the server has seen it go, it may still be handed an element,
    as with redis-py's own timeouts."""
    return not any(
        client.get("cmd") == "blpop" and "b" in client.get("flags", "")
        for client in sync_redis.client_list()
    )


async def test_connect_gives_the_lean_client_on_a_waiting_pool(redis_url: str) -> None:
    client = connect(redis_url, socket_timeout=3)
    try:
        assert isinstance(client, LeanRedis)
        pool = client.connection_pool
        assert isinstance(pool, WaitingPool)
        assert pool.command_timeout == 3
        # The connections themselves run without a per-socket-call timeout.
        assert pool.make_connection().socket_timeout is None
    finally:
        await client.aclose()


async def test_a_client_given_no_timeout_keeps_redis_pys_default(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        assert client.connection_pool.command_timeout == REDIS_PY_SOCKET_TIMEOUT == 5.0
    finally:
        await client.aclose()


async def test_replies_are_parsed_as_redis_py_parses_them(
    redis_url: str, key_prefix: str, lean: Any
) -> None:
    """The same commands through redis-py's own client and through the lean one give the same
    Python values (the response callbacks are redis-py's), pipelines and transactions too."""
    plain = redis.asyncio.Redis.from_url(redis_url)
    try:

        async def script(client: Any, tag: str) -> list[Any]:
            key = f"{key_prefix}:{tag}"
            results: list[Any] = [
                await client.set(f"{key}:s", "v"),
                await client.get(f"{key}:s"),
                await client.get(f"{key}:missing"),
                await client.hset(f"{key}:h", mapping={"a": "1", "b": "2"}),
                await client.hgetall(f"{key}:h"),
                await client.hmget(f"{key}:h", ["a", "zz"]),
                await client.exists(f"{key}:s", f"{key}:h", f"{key}:none"),
                await client.expire(f"{key}:s", 100),
                await client.zadd(f"{key}:z", {"m": 1.5}),
                await client.zrange(f"{key}:z", 0, -1, withscores=True),
                await client.eval("return {1, 'two', redis.call('GET', KEYS[1])}", 1, f"{key}:s"),
            ]
            entry = await client.xadd(f"{key}:x", {"f": "v"}, id="1-1")
            results += [entry, await client.xrange(f"{key}:x")]
            pipe = client.pipeline(transaction=False)
            pipe.hget(f"{key}:h", "a").incr(f"{key}:n").smembers(f"{key}:none")
            results.append(await pipe.execute())
            transaction = client.pipeline(transaction=True)
            transaction.incr(f"{key}:n").lpush(f"{key}:l", "x").lrange(f"{key}:l", 0, -1)
            results.append(await transaction.execute())
            return results

        assert await script(lean, "lean") == await script(plain, "plain")
    finally:
        await plain.aclose()


async def test_commands_are_packed_by_hiredis_into_redis_pys_bytes(redis_url: str) -> None:
    """The pool's connections pack with hiredis, byte for byte what redis-py's asyncio
    connection packs (command names with a space split, numbers, accents, emoji, raw bytes),
    and refuse what redis-py refuses (a bool or None: DataError), before anything is sent."""
    client = connect(redis_url)
    plain = redis.asyncio.Connection()
    try:
        lean = client.connection_pool.make_connection()
        assert lean.pack_command.__func__ is HiredisRespSerializer.pack
        commands: list[tuple[Any, ...]] = [
            ("SET", "k", "olá 😀", "PX", 1500),
            ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
            ("ZADD", "z", 0.1, "m", 1e-7, "n", float("inf"), "o", -3, b"\xff\x00"),
            ("EVALSHA", "a" * 40, 2, "k1", "k2", 10**20, bytearray(b"ba"), memoryview(b"mv")),
        ]
        for command in commands:
            assert b"".join(lean.pack_command(*command)) == b"".join(plain.pack_command(*command))
        assert b"".join(lean.pack_commands(commands)) == b"".join(plain.pack_commands(commands))
        for bad in (True, None):
            with pytest.raises(DataError):
                lean.pack_command("SET", "k", bad)
            with pytest.raises(DataError):
                plain.pack_command("SET", "k", bad)
    finally:
        await client.aclose()


async def test_only_himport_set_goes_through_redis_pys_himport_check(
    lean: Any, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py 8 tests every command for HIMPORT SET; the lean path leaves that test to the
    one command it is for, and every other command goes straight out."""
    checked: list[Any] = []
    real = redis_py_client.parse_himport_set_args

    def counted(args: Any) -> Any:
        checked.append(args[0])
        return real(args)

    monkeypatch.setattr(redis_py_client, "parse_himport_set_args", counted)
    await lean.set(f"{key_prefix}:s", "v")
    assert await lean.get(f"{key_prefix}:s") == b"v"
    assert checked == []
    with pytest.raises(ResponseError):  # a Redis without HIMPORT: unknown command
        await lean.execute_command("HIMPORT SET", f"{key_prefix}:h", "fs", "v")
    assert checked == ["HIMPORT SET"]


async def test_errors_are_redis_pys(lean: Any, key_prefix: str) -> None:
    await lean.set(f"{key_prefix}:s", "text")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await lean.hget(f"{key_prefix}:s", "f")
    # The connection is still good, and back in the pool.
    assert await lean.get(f"{key_prefix}:s") == b"text"
    assert in_use(lean) == 0


async def test_a_command_is_cut_off_and_its_late_reply_never_read_as_the_next(
    lean: Any, key_prefix: str, sync_redis: Any
) -> None:
    """BLPOP waits longer than the round trip's bound: it fails with redis-py's TimeoutError and
    its connection is dropped, so the server gives up the pop (nothing taken from the list)
    and the next command reads its own reply."""
    queue = f"{key_prefix}:queue"
    with pytest.raises(RedisTimeoutError):
        await lean.blpop([queue], timeout=30)
    assert in_use(lean) == 0
    await async_wait_until(lambda: pop_given_up(sync_redis), 5, what="the drop")
    sync_redis.lpush(queue, "late")
    await lean.set(f"{key_prefix}:k", "mine")
    assert await lean.get(f"{key_prefix}:k") == b"mine"
    assert sync_redis.lrange(queue, 0, -1) == [b"late"]


async def test_a_pipeline_and_a_transaction_are_bounded_too(
    lean: Any, key_prefix: str, sync_redis: Any
) -> None:
    queue = f"{key_prefix}:queue"
    pipe = lean.pipeline(transaction=False)
    pipe.set(f"{key_prefix}:a", "1").blpop([queue], timeout=30)
    with pytest.raises(RedisTimeoutError):
        await pipe.execute()
    assert in_use(lean) == 0
    await async_wait_until(lambda: pop_given_up(sync_redis), 5, what="the drop")
    sync_redis.lpush(queue, "late")
    pipe = lean.pipeline(transaction=False)
    pipe.get(f"{key_prefix}:a").llen(queue)
    assert await pipe.execute() == [b"1", 1]
    # WATCH runs before MULTI, one command at a time: each bounded as well.
    async with lean.pipeline(transaction=True) as transaction:
        await transaction.watch(f"{key_prefix}:a")
        assert await transaction.get(f"{key_prefix}:a") == b"1"
        transaction.multi()
        transaction.set(f"{key_prefix}:a", "2")
        assert await transaction.execute() == [True]
    assert sync_redis.get(f"{key_prefix}:a") == b"2"


async def test_a_silent_server_fails_every_round_trip_within_its_bound() -> None:
    """A Redis that accepts and never answers (partitioned, frozen): the connection's own
    handshake and the command both fail within the bound instead of waiting forever."""
    async with SilentServer() as silent:
        client = connect(silent.url, socket_timeout=0.2, retry=NO_RETRY)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(RedisTimeoutError):
                await client.get("k")
            # Bounded, and only once: the handshake's wait is the round trip's.
            assert asyncio.get_running_loop().time() - started < 2
            assert silent.received >= 1
            pipe = client.pipeline(transaction=False)
            pipe.get("k")
            with pytest.raises(RedisTimeoutError):
                await pipe.execute()
            assert in_use(client) == 0
        finally:
            await client.aclose()


async def test_a_cancelled_round_trip_drops_its_connection(
    redis_url: str, key_prefix: str, sync_redis: Any
) -> None:
    """A caller's own deadline (the gateway's per-webhook one) cancels a command mid-read: its
    connection is dropped, not pooled with a reply still on the way."""
    queue = f"{key_prefix}:queue"
    client = connect(redis_url, socket_timeout=5)
    try:
        task = asyncio.create_task(client.blpop([queue], timeout=30))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert in_use(client) == 0
        await async_wait_until(lambda: pop_given_up(sync_redis), 5, what="the drop")
        sync_redis.lpush(queue, "late")
        await client.set(f"{key_prefix}:k", "mine")
        assert await client.get(f"{key_prefix}:k") == b"mine"
        assert sync_redis.lrange(queue, 0, -1) == [b"late"]
    finally:
        await client.aclose()


async def test_an_exhausted_pool_waits_for_a_connection(redis_url: str, key_prefix: str) -> None:
    """One connection, two callers: the second waits for the first to finish, in order."""
    client = connect(redis_url, max_connections=1, socket_timeout=3)
    try:
        queue = f"{key_prefix}:queue"
        holder = asyncio.create_task(client.blpop([queue], timeout=0.3))
        await asyncio.sleep(0.05)
        waiters = [asyncio.create_task(client.incr(f"{key_prefix}:n")) for _ in range(3)]
        assert await holder is None
        assert await asyncio.gather(*waiters) == [1, 2, 3]
        assert len(client.connection_pool._available_connections) == 1
        assert in_use(client) == 0
    finally:
        await client.aclose()


async def test_an_exhausted_pool_fails_after_its_timeout_and_stores_nothing(
    redis_url: str, key_prefix: str, sync_redis: Any
) -> None:
    client = connect(redis_url, max_connections=1, pool_timeout=0.1, socket_timeout=3)
    try:
        holder = asyncio.create_task(client.blpop([f"{key_prefix}:queue"], timeout=0.5))
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.set(f"{key_prefix}:k", "v")
        assert await holder is None
        assert sync_redis.get(f"{key_prefix}:k") is None
        assert in_use(client) == 0
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_a_cancelled_waiter_leaks_no_connection(redis_url: str, key_prefix: str) -> None:
    client = connect(redis_url, max_connections=1, socket_timeout=3)
    try:
        holder = asyncio.create_task(client.blpop([f"{key_prefix}:queue"], timeout=0.2))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(client.ping())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await holder is None
        assert in_use(client) == 0
        assert await client.incr(f"{key_prefix}:n") == 1
    finally:
        await client.aclose()


async def test_a_waiter_handed_a_connection_as_it_is_cancelled_passes_it_on() -> None:
    """The connection comes back in the very instant the waiter is cancelled (both in one
    turn of the loop): it goes to the next waiter or the idle list, never lost."""
    pool = WaitingPool(host="127.0.0.1", port=1, max_connections=1, timeout=5)
    first = pool._take()
    assert first is not None
    waiter = asyncio.create_task(pool._wait())
    await asyncio.sleep(0)
    await pool.release(first)  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool._available_connections == [first]
    assert not pool._in_use_connections


async def test_a_connection_the_server_closed_while_idle_costs_one_retry(
    redis_url: str, key_prefix: str, sync_redis: Any
) -> None:
    """After a Redis restart every pooled connection is dead: the next command on one fails
    with ConnectionError and the client's retry policy sends it again on a new connection."""
    client = connect(redis_url, socket_timeout=2, retry=Retry(NoBackoff(), 1))
    try:
        await client.set(f"{key_prefix}:k", "v")
        assert sync_redis.client_kill_filter(_type="normal", skipme=True) >= 1
        assert await client.get(f"{key_prefix}:k") == b"v"
        assert in_use(client) == 0
    finally:
        await client.aclose()


async def test_a_connection_seen_closed_while_idle_is_replaced_before_use(
    lean: Any, key_prefix: str, sync_redis: Any
) -> None:
    """Once the pool's connection has seen the server close it (the loop read its end of file),
    the next command goes out on a new connection: no retry needed (`lean` has none)."""
    await lean.set(f"{key_prefix}:k", "v")
    assert sync_redis.client_kill_filter(_type="normal", skipme=True) >= 1
    await asyncio.sleep(0.2)
    assert await lean.get(f"{key_prefix}:k") == b"v"


async def test_a_connection_with_unread_data_is_replaced_before_use(
    lean: Any, key_prefix: str
) -> None:
    """A pooled connection with bytes waiting (a reply nobody read) is never used as is: the
    next command would read that reply as its own."""
    await lean.set(f"{key_prefix}:k", "v")
    (idle,) = lean.connection_pool._available_connections
    await idle.send_command("GET", f"{key_prefix}:k")  # its reply is left unread
    await asyncio.sleep(0.2)
    assert await lean.set(f"{key_prefix}:k", "w") is True
    assert await lean.get(f"{key_prefix}:k") == b"w"


async def test_a_connection_lost_mid_command_is_retried_by_the_clients_policy() -> None:
    async with FlakyServer() as flaky:
        retrying = connect(flaky.url, socket_timeout=2, retry=Retry(NoBackoff(), 1))
        try:
            assert await retrying.set("k", "v") is True
            assert flaky.connections == 2
        finally:
            await retrying.aclose()
    async with FlakyServer() as flaky:
        once = connect(flaky.url, socket_timeout=2, retry=NO_RETRY)
        try:
            with pytest.raises(RedisConnectionError):
                await once.set("k", "v")
            assert flaky.connections == 1
        finally:
            await once.aclose()
