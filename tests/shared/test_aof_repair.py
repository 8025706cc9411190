"""A crash that tears the append-only file inside a transaction never costs the writes Redis
acknowledges after it (shared/aof_repair.py, run before every start of `make run`'s and the
tests' Redis).

Without the repair, on the real redis-server: the first restart cuts off only the partial
command and leaves the MULTI open; the next write is appended after it; the second restart
reverts that write with the torn transaction. A chaos test once lost a customer's message that
way (its inbound counted twice: the gateway's dedupe marker was the lost write)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

from shared.aof_repair import torn_tail
from shared.embedded_redis import EmbeddedRedis, RedisServerUnavailable
from wsm.stack import redis_service

# Two writes of one script: the AOF stores them as one MULTI/EXEC block.
TWO_WRITES = "redis.call('set', 'b', '2'); redis.call('set', 'c', '3')"


def incr_file(data: Path) -> Path:
    [found] = sorted((data / "appendonlydir").glob("appendonly.aof.*.incr.aof"))
    return found


def tear_the_last_transaction(data: Path) -> int:
    """Cut the file inside its last MULTI/EXEC block, in the middle of a command, as a crash
    between two write()s of the block would. Returns the size it is cut to."""
    path = incr_file(data)
    body = path.read_bytes()
    multi = body.rindex(b"MULTI")
    assert body.rstrip().endswith(b"EXEC"), body[-60:]
    cut = body.index(b"$1\r\nc", multi) + 3  # inside the second SET
    path.write_bytes(body[:cut])
    return cut


def client_of(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_writes_acknowledged_after_a_torn_transaction_survive_the_next_restart(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        with client_of(server) as client:
            client.set("a", "1")
            client.eval(TWO_WRITES, 0)
        server.kill()
        tear_the_last_transaction(server.data_dir)

        server.start()
        with client_of(server) as client:
            # The torn script is not applied, not even half of it.
            assert client.get("a") == b"1" and client.get("b") is None and client.get("c") is None
            assert client.set("d", "4") is True  # acknowledged: fsync'd (appendfsync always)
        server.kill()

        server.start()
        with client_of(server) as client:
            assert client.get("d") == b"4"  # the old code lost it here
            assert client.get("b") is None and client.get("a") == b"1"
    finally:
        server.stop()


def test_other_damage_is_left_for_redis_to_refuse(tmp_path: Path) -> None:
    """Only a tail cut short is repaired: bytes that are not a cut-off command are no crash's
    doing, and cutting the file there could drop good writes after them."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    with client_of(server) as client:
        client.set("a", "1")
    server.stop()
    path = incr_file(server.data_dir)
    damaged = path.read_bytes() + b"xx3\r\n$3\r\nSET\r\n"
    path.write_bytes(damaged)
    with pytest.raises(RedisServerUnavailable):
        server.start()
    server.kill()
    assert path.read_bytes() == damaged  # untouched


def test_every_cut_of_a_transaction_is_cut_back_before_it_and_damage_is_left() -> None:
    """Every place a crash can cut the file inside a transaction's block leads back to the
    write before its MULTI; a whole file, and bytes no command starts with, are left alone."""
    writes = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n"
    block = (
        b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nset\r\n$1\r\nb\r\n$1\r\n2\r\n"
        b"*3\r\n$3\r\nset\r\n$1\r\nc\r\n$1\r\n3\r\n*1\r\n$4\r\nEXEC\r\n"
    )
    whole = writes + block
    assert torn_tail(whole) is None
    assert {torn_tail(whole[:cut]) for cut in range(len(writes) + 1, len(whole))} == {len(writes)}
    # Outside a transaction, a cut goes back to the last whole command (as Redis itself does).
    assert torn_tail(writes[:30]) == 23 and torn_tail(writes[:23]) is None
    assert torn_tail(b"#TS:1796000000\r\n" + writes + b"#TS:17") == len(writes) + 16
    for damaged in (
        b"xx3\r\n$3\r\nSET\r\n",
        b"*1\r\n$5\r\nMULTIX\r\n",
        b"*1x",
        b"*1\r\n$5\r\nMULTI\rZ",
    ):
        assert torn_tail(writes + damaged) is None, damaged


def test_every_local_redis_starts_through_the_repair(tmp_path: Path) -> None:
    """`make run`'s Redis (wsm dev), the tests' and the chaos tests' (wsm.stack) all start
    through it, so a restart after a kill is repaired too; without an append-only file there
    is nothing to repair."""
    repair = [sys.executable, "-m", "shared.aof_repair", str(tmp_path.resolve())]
    assert EmbeddedRedis(tmp_path, appendonly=True).command()[:4] == repair
    assert redis_service(tmp_path, port=1, log_path=tmp_path / "log").argv[:4] == repair
    assert EmbeddedRedis(tmp_path, appendonly=False).command()[0] != sys.executable
