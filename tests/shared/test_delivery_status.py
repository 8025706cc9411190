"""A message's delivery status (shared/delivery_status.py): WAHA's ack levels, and one ranking
that the Python side and the Lua scripts (lib/status.lua) share."""

from __future__ import annotations

import orjson
import pytest

from shared.delivery_status import STATUS_RANK, advances, status_for_ack
from shared.lua import inline_includes


@pytest.mark.parametrize(
    ("ack", "status"),
    [(-1, "error"), (0, "pending"), (1, "server"), (2, "device"), (3, "read"), (4, "played"),
     ("3", "read"), (5, None), (None, None), ("READ", None), (True, None), (2.0, "device")],
)  # fmt: skip
def test_an_ack_level_names_its_status(ack: object, status: str | None) -> None:
    assert status_for_ack(ack) == status


def test_a_status_only_moves_forward() -> None:
    assert advances(None, "sent")
    assert advances("sent", "device")
    assert not advances("read", "device")
    assert not advances("read", "read")
    assert not advances("failed", "played")  # final
    assert not advances("sent", "nonsense")


async def test_lib_status_ranks_as_the_python_side(aredis) -> None:
    """lib/status.lua's table, read out of Redis itself, is STATUS_RANK."""
    source = inline_includes("--#include status\nreturn cjson.encode(status_rank)")
    assert orjson.loads(await aredis.eval(source, 0)) == STATUS_RANK


async def test_lib_status_moves_a_field_only_forward(aredis, key_prefix) -> None:
    """advance_status for every pair of statuses ends where `advances` says, and answers
    whether it wrote."""
    source = inline_includes(
        "--#include status\nreturn advance_status(KEYS[1], 'm:status', ARGV[1]) and 1 or 0"
    )
    key = f"{key_prefix}:meta"
    for had in sorted(STATUS_RANK):
        for new in sorted(STATUS_RANK):
            await aredis.hset(key, "m:status", had)
            wrote = await aredis.eval(source, 1, key, new)
            expected = new if advances(had, new) else had
            assert (had, new, wrote, await aredis.hget(key, "m:status")) == (
                had, new, int(advances(had, new)), expected.encode(),
            )  # fmt: skip
