"""A handler whose behaviour the tests script through the message text (the real seam,
selected with `--handler tests.worker.support.handlers:scripted`).

    "block:<gate>"  waits until the key `<prefix>:test:gate:<gate>` exists, then commits
    "fail:<gate>"   raises until that key exists (a bug fixed by opening the gate)
    "slow:<ms>"     takes that long, then commits
    anything else   commits at once

Every delivery is logged to `<prefix>:test:started` before anything else, and a commit the
queue refuses (LeaseLost) to `<prefix>:test:refused`. Commits record like the recording handler.
"""

from __future__ import annotations

import asyncio
import os

import orjson

from shared.envelope import QueuedEvent
from shared.queue_errors import LeaseLost
from worker.handler import HandlerContext, HandlerSetup
from worker.handlers.recording import handled_entry


async def scripted(event: QueuedEvent, ctx: HandlerContext) -> None:
    prefix = ctx.conversation.shard_keys.prefix
    text = str(event.document()["payload"]["body"])
    note = orjson.dumps({"id": event.id, "pid": os.getpid(), "attempt": ctx.attempt})
    await ctx.redis.rpush(f"{prefix}:test:started", note)

    kind, _, arg = text.partition(":")
    if kind == "block":
        # The gate is a Redis key the test sets, so there is no Event to await: poll it.
        while not await ctx.redis.exists(f"{prefix}:test:gate:{arg}"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    elif kind == "fail" and not await ctx.redis.exists(f"{prefix}:test:gate:{arg}"):
        raise RuntimeError(f"scripted failure of {event.id}")
    elif kind == "slow":
        await asyncio.sleep(int(arg) / 1000)

    try:
        await ctx.commit([("RPUSH", ctx.conversation.handled, handled_entry(event, ctx))])
    except LeaseLost:
        await ctx.redis.rpush(f"{prefix}:test:refused", note)
        raise


class Lifecycle:
    """A handler made by a factory, with the optional start()/aclose() lifecycle."""

    def __init__(self, redis: object, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def start(self) -> None:
        await self.redis.rpush(f"{self.prefix}:test:lifecycle", f"start {os.getpid()}")  # type: ignore[attr-defined]

    async def __call__(self, event: QueuedEvent, ctx: HandlerContext) -> None:
        await ctx.commit([("RPUSH", ctx.conversation.handled, handled_entry(event, ctx))])

    async def aclose(self) -> None:
        await self.redis.rpush(f"{self.prefix}:test:lifecycle", f"close {os.getpid()}")  # type: ignore[attr-defined]


def lifecycle(setup: HandlerSetup) -> Lifecycle:
    return Lifecycle(setup.redis, setup.settings.key_prefix)


def not_async(event: QueuedEvent, ctx: HandlerContext) -> None:
    """Not a handler: the fleet must refuse it at start."""
