"""The writes a handler commits: plain single-key Redis commands, applied atomically with the
inbound message's ack by the worker (`HandlerContext.commit`), fenced by the lease.

Every key must carry the conversation's hash tag (the commit is one script). Commands are the
ones the commit script allows: SET, DEL, EXPIRE, HSET, HDEL, RPUSH, LTRIM, ZADD, ZREM, XADD, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Arg = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class Write:
    command: str
    key: str
    args: tuple[Arg, ...]

    def as_command(self) -> tuple[Arg, ...]:
        return (self.command, self.key, *self.args)


def write(command: str, key: str, *args: Arg) -> Write:
    return Write(command.upper(), key, tuple(args))


async def apply_writes(redis: Any, writes: Sequence[Write]) -> None:
    """Apply writes in one MULTI/EXEC: for effects outside a handler (tests, tools).

    A handler never uses this: its writes go through the worker's fenced commit.
    """
    if not writes:
        return
    pipe = redis.pipeline(transaction=True)
    for item in writes:
        pipe.execute_command(*item.as_command())
    await pipe.execute()
