"""The writes a handler commits together with the ack of its message (`ack_message.lua`).

A write is a tuple `(COMMAND, key, *args)`, e.g. `("HSET", state_key, "step", "menu")`,
`("XADD", history_key, "*", "text", "oi")`, `("SET", lock_key, "1", "PX", 5000)`. Only plain
single-key write commands are allowed, and every key must carry the conversation's hash tag so
the commit is one atomic script on Redis Cluster too. The queue's own keys are off limits: only
the protocol changes them.

Checked here first so that a bad write fails loudly before anything is sent; the script checks
the command list and key indexes again, because Redis does not roll back a script that stops
halfway. What neither can see is a key holding another type (WRONGTYPE): that error stops the
script after the writes before it, so handlers keep their keys' types fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shared.keys import ConversationKeys, hash_tag_of
from shared.lua import Arg
from shared.queue_errors import InvalidWrite

# One write: `(COMMAND, key, *args)`. The engine builds them with `write()`; any handler may
# pass plain tuples or lists of the same shape.
Write = Sequence[Arg]


def write(command: str, key: str, *args: Arg) -> Write:
    """`(COMMAND, key, *args)` with the command upper-cased, as `encode_writes` takes it."""
    return (command.upper(), key, *args)


# command -> (least, most) arguments after the key; None: no upper bound. Keep the command set
# equal to `allowed` in ack_message.lua. DEL/UNLINK take no more arguments: another argument
# would be another key, undeclared to the script.
WRITE_COMMANDS: dict[str, tuple[int, int | None]] = {
    "SET": (1, None),
    "DEL": (0, 0),
    "UNLINK": (0, 0),
    "EXPIRE": (1, 2),
    "PEXPIRE": (1, 2),
    "PERSIST": (0, 0),
    "INCR": (0, 0),
    "INCRBY": (1, 1),
    "DECR": (0, 0),
    "DECRBY": (1, 1),
    "HSET": (2, None),
    "HSETNX": (2, 2),
    "HDEL": (1, None),
    "HINCRBY": (2, 2),
    "HINCRBYFLOAT": (2, 2),
    "LPUSH": (1, None),
    "RPUSH": (1, None),
    "LTRIM": (2, 2),
    "LREM": (2, 2),
    "LSET": (2, 2),
    "SADD": (1, None),
    "SREM": (1, None),
    "ZADD": (2, None),
    "ZREM": (1, None),
    "ZINCRBY": (2, 2),
    "ZREMRANGEBYSCORE": (2, 2),
    "XADD": (3, None),
    "XTRIM": (2, None),
    "XDEL": (1, None),
}

# The first KEYS index of ack_message.lua that holds a write's key (1-based, as Lua counts).
FIRST_WRITE_KEY_INDEX = 7


def protocol_keys(conversation: ConversationKeys) -> frozenset[str]:
    """Keys with the conversation's hash tag that only the queue protocol may change."""
    shard = conversation.shard_keys
    return frozenset(
        {
            conversation.messages,
            conversation.bodies,
            conversation.meta,
            conversation.attempts,
            conversation.reaped_ack,
            shard.ready,
            shard.claimed,
            shard.leases,
            shard.delayed,
            shard.stats,
            shard.dlq,
            shard.fence,
            shard.claimed_seen,
            shard.reaper_lock,
        }
    )


def encode_writes(
    writes: Iterable[Write], conversation: ConversationKeys
) -> tuple[list[str], list[Arg]]:
    """The extra KEYS and ARGV of ack_message.lua for `writes`, or InvalidWrite."""
    writes = list(writes)
    if not writes:
        return [], []
    tag = conversation.hash_tag
    reserved = protocol_keys(conversation)
    keys: list[str] = []
    key_index: dict[str, int] = {}
    args: list[Arg] = []
    for write in writes:
        if isinstance(write, str | bytes) or len(write) < 2:
            raise InvalidWrite(f"a write is (COMMAND, key, *args), got {write!r:.80}")
        command, key, rest = write[0], write[1], write[2:]
        if not isinstance(command, str) or command.upper() not in WRITE_COMMANDS:
            raise InvalidWrite(f"command {command!r} is not an allowed commit write")
        command = command.upper()
        least, most = WRITE_COMMANDS[command]
        if len(rest) < least or (most is not None and len(rest) > most):
            raise InvalidWrite(f"{command} takes {least}..{most or 'n'} arguments after the key")
        if not isinstance(key, str):
            raise InvalidWrite(f"a write's key must be a str, got {key!r:.80}")
        if hash_tag_of(key) != tag:
            raise InvalidWrite(
                f"key {key!r} is outside the conversation's hash tag {{{tag}}}: build it from "
                "the conversation's keys so it lives in the same Redis Cluster slot"
            )
        if key in reserved:
            raise InvalidWrite(f"key {key!r} belongs to the queue protocol")
        for arg in rest:
            # bool is an int: True would be sent as "True", almost never what was meant.
            if isinstance(arg, bool) or not isinstance(arg, str | bytes | int | float):
                raise InvalidWrite(f"{command} argument {arg!r:.80} is not str, bytes or a number")
        if key not in key_index:
            key_index[key] = FIRST_WRITE_KEY_INDEX + len(keys)
            keys.append(key)
        args += [command, key_index[key], len(rest), *rest]
    return keys, args
