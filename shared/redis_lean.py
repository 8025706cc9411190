"""redis-py's client with a shorter path per round trip.

Why: redis-py 8 spends about 50 µs of CPU on each command, where the bytes on the wire cost
about 7 (docs/benchmarks.md, "A shorter path through redis-py"). Most of it is machinery the
product does not use: observability records and event dispatch around every command, the
blocking pool's condition variable and its timeout around every checkout, and, with
`socket_timeout` set, an `asyncio.wait_for` (a new task on Python 3.11) around every write
and an `asyncio.timeout` around every read. Half of the worker's CPU was inside redis-py.

What stays redis-py's: the commands, the parsing of replies (the response callbacks), the
errors, the retry policy, the connections and their parser (hiredis), pipelines and
transactions. What changes is only the path:

- `WaitingPool`: idle connections and a queue of waiters, no lock (one event loop owns the
  pool). Exhausted, it waits up to `timeout` and then fails as `BlockingConnectionPool` does.
  A pooled connection with unread data, or whose end of file the loop has seen (a restarted
  Redis), is reconnected before it is used; one closed so recently that nothing has been
  seen yet fails its command with `ConnectionError`, which the client's retry policy
  answers on a new connection, as in redis-py.
- One deadline per round trip (`command_timeout`: the write and every read of one command,
  one pipeline or one transaction), instead of one per socket operation; the connections
  themselves run without `socket_timeout`. A round trip cut off by it raises redis-py's
  `TimeoutError` and its connection is dropped, as before (redis-py disconnects a connection
  whose read is interrupted), so a late reply can never be read as the next command's. The
  deadline is a `shared.deadlines.deadline`, not an `asyncio.timeout`: one timer per process
  for every round trip in flight instead of one each (about 5% of a worker's CPU).
- Commands are packed by hiredis (`hiredis.pack_command`, through redis-py's own
  `HiredisRespSerializer`), as redis-py's synchronous connections already do: its asyncio
  connections pack in Python, 9 µs for a typical script call against 3.5, the same bytes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from shared.deadlines import deadline

T = TypeVar("T")

_HIREDIS_PACKER = HiredisRespSerializer()

# redis-py 8's one command whose wire form depends on the connection (a fieldset PREPAREd on
# it first): left to redis-py's own path. Its command methods name commands in capitals; a
# raw execute_command in another case goes the plain way, as in redis-py before 8.
_HIMPORT_NAMES = frozenset({"HIMPORT", "HIMPORT SET", b"HIMPORT", b"HIMPORT SET"})

# `redis.asyncio.Connection`'s own default `socket_timeout`, kept for a client given none.
REDIS_PY_SOCKET_TIMEOUT = 5.0


async def within(seconds: float | None, round_trip: Awaitable[T]) -> T:
    """`round_trip`, cut off after `seconds` with redis-py's TimeoutError (retryable)."""
    if seconds is None:
        return await round_trip
    try:
        # Not asyncio.timeout: one per round trip was about 5% of a worker's CPU
        # (shared/deadlines.py).
        with deadline(seconds):
            return await round_trip
    except TimeoutError:
        # The builtin one: the deadline's. redis-py's own is not a subclass of it.
        raise RedisTimeoutError(f"Redis did not answer within {seconds} s") from None


async def _dirty(connection: AbstractConnection) -> bool:
    """Whether a pooled connection has unread data or has seen the server close it."""
    try:
        return bool(await connection.can_read())
    except RedisConnectionError:  # its socket failed: ensure_connection reconnects it
        return True


class WaitingPool(ConnectionPool):
    """A connection pool that waits, when exhausted, for a connection to come back."""

    def __init__(self, *, timeout: float | None = 10.0, **connection_kwargs: Any) -> None:
        # The bound is applied per round trip (`within`), not per socket call. Absent, it is
        # what redis-py's connections default to.
        self.command_timeout: float | None = connection_kwargs.pop(
            "socket_timeout", REDIS_PY_SOCKET_TIMEOUT
        )
        super().__init__(socket_timeout=None, **connection_kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[AbstractConnection]] = deque()

    async def get_connection(
        self, command_name: Any = None, *keys: Any, **options: Any
    ) -> AbstractConnection:
        connection = self._take() or await self._wait()
        try:
            if connection.is_connected:
                if not await _dirty(connection):
                    return connection  # the usual case
                # Data nobody read (it would be taken for the next reply) or the server's
                # end of file: start afresh. (redis-py 8's own check of this is skipped while
                # its maintenance notifications are on "auto", their default.)
                await connection.disconnect()
            # Connecting reads the handshake's replies (CLIENT SETINFO, AUTH, SELECT):
            # bounded like any round trip.
            await within(self.command_timeout, self.ensure_connection(connection))
        except BaseException:
            await self.release(connection)
            raise
        return connection

    def make_connection(self) -> AbstractConnection:
        connection: AbstractConnection = super().make_connection()
        if HIREDIS_AVAILABLE:
            # Per connection, whatever its class (TCP, TLS, unix socket); pack_commands, for
            # pipelines, packs each command through it too.
            connection.pack_command = _HIREDIS_PACKER.pack  # type: ignore[method-assign,assignment]
        return connection

    def _take(self) -> AbstractConnection | None:
        if self._available_connections:
            connection = self._available_connections.pop()
        elif len(self._in_use_connections) < self.max_connections:
            connection = self.make_connection()
        else:
            return None
        self._in_use_connections.add(connection)
        return connection

    async def _wait(self) -> AbstractConnection:
        waiter: asyncio.Future[AbstractConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection in the same instant the wait was cut off: give it on.
                await self.release(waiter.result())
            else:
                waiter.cancel()  # release() skips it
            if isinstance(exc, TimeoutError):
                raise RedisConnectionError("No connection available.") from None
            raise

    async def release(self, connection: AbstractConnection) -> None:
        if connection.should_reconnect():
            await connection.disconnect()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)  # stays in use, by the waiter now
                return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


class LeanPipeline(Pipeline):
    """A pipeline (or transaction) whose every round trip is bounded once."""

    def _command_timeout(self) -> float | None:
        return getattr(self.connection_pool, "command_timeout", None)

    async def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        parent = super()._execute_pipeline(connection, commands, raise_on_error)
        return await within(self._command_timeout(), parent)

    async def _execute_transaction(
        self, connection: Any, commands: Any, raise_on_error: Any
    ) -> Any:
        parent = super()._execute_transaction(connection, commands, raise_on_error)
        return await within(self._command_timeout(), parent)

    async def _send_command_parse_response(
        self, conn: Any, command_name: Any, *args: Any, **options: Any
    ) -> Any:
        # WATCH and the commands a transaction runs before MULTI.
        parent = super()._send_command_parse_response(conn, command_name, *args, **options)
        return await within(self._command_timeout(), parent)


class LeanRedis(Redis):
    """`redis.asyncio.Redis` with the shorter path per command (see the module's doc)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.single_connection_client:
            return await super().execute_command(*args, **options)
        pool = self.connection_pool
        connection = await pool.get_connection()
        try:
            return await connection.retry.call_with_retry(
                lambda: self._send_command_parse_response(connection, args[0], *args, **options),
                lambda error: connection.disconnect(),
            )
        finally:
            await pool.release(connection)

    async def _send_command_parse_response(
        self, conn: Any, command_name: Any, *args: Any, **options: Any
    ) -> Any:
        if command_name in _HIMPORT_NAMES:
            parent = super()._send_command_parse_response(conn, command_name, *args, **options)
        else:
            # What redis-py does for every command but HIMPORT SET, without its per-command
            # test for HIMPORT SET (parse_himport_set_args, about 2% of a worker's samples).
            parent = self._send_and_parse(conn, command_name, args, options)
        return await within(getattr(self.connection_pool, "command_timeout", None), parent)

    async def _send_and_parse(
        self, conn: Any, command_name: Any, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        await conn.send_command(*args)
        return await self.parse_response(conn, command_name, **options)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return LeanPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
