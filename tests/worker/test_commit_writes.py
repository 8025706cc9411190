"""The handler's commit writes are checked before anything is sent (shared/commit_writes.py)."""

from __future__ import annotations

import pytest

from shared.commit_writes import WRITE_COMMANDS, encode_writes
from shared.keys import ShardKeys
from shared.lua import LuaScript
from shared.queue_errors import InvalidWrite

CONVERSATION = ShardKeys(3, "p").conversation("default|5511@c.us")
STATE = f"{CONVERSATION.shard_keys.tag}:c:{CONVERSATION.token}:state"
OUTBOX = f"{CONVERSATION.shard_keys.tag}:outbox:pending"


def test_writes_become_key_indexes_and_counted_arguments() -> None:
    keys, args = encode_writes(
        [("hset", STATE, "a", "1"), ("ZADD", OUTBOX, 5, "x"), ("DEL", STATE)], CONVERSATION
    )
    assert keys == [STATE, OUTBOX]
    assert args == ["HSET", 7, 2, "a", "1", "ZADD", 8, 2, 5, "x", "DEL", 7, 0]


def test_no_writes_is_nothing() -> None:
    assert encode_writes([], CONVERSATION) == ([], [])


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (("EVAL", STATE, "x"), "not an allowed"),
        (("GET", STATE), "not an allowed"),
        (("DEL", STATE, "p:{q3}:other"), "arguments"),  # a second key, undeclared
        (("HSET", STATE, "only-field"), "arguments"),
        (("HSET", "p:{q4}:c:x:state", "a", "1"), "hash tag"),  # another shard
        (("HSET", "state-without-tag", "a", "1"), "hash tag"),
        (("RPUSH", CONVERSATION.messages, "x"), "queue protocol"),
        (("HSET", CONVERSATION.shard_keys.ready, "a", "1"), "queue protocol"),
        (("SET", STATE, True), "not str, bytes or a number"),
        (("SET", STATE, None), "not str, bytes or a number"),
        ("HSET", "a write is"),
        ((b"HSET", STATE, "a", "1"), "not an allowed"),
    ],
)
def test_refused_writes(write: object, reason: str) -> None:
    with pytest.raises(InvalidWrite, match=reason):
        encode_writes([write], CONVERSATION)  # type: ignore[list-item]


def test_python_and_lua_allow_the_same_commands() -> None:
    source = LuaScript.named("ack_message").source
    block = source[
        source.index("local allowed = {") : source.index("}", source.index("local allowed"))
    ]
    lua_commands = {
        part.split("=")[0].strip() for part in block.split("{")[1].split(",") if "=" in part
    }
    assert lua_commands == set(WRITE_COMMANDS)
