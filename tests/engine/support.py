"""The sender's test kit, shared by tests/engine/test_sender*.py and the engine's mutant tests:
a sender on a respx-stood WAHA (tests.engine.harness.WAHA) and replies committed to a
conversation's outbox as the engine commits them."""

from __future__ import annotations

import httpx

from engine.outbox import new_entry, outbox_writes
from engine.sender import Sender, SenderConfig
from engine.waha_client import WahaClient
from shared.keys import engine_keys_for
from tests.engine.harness import WAHA, apply_writes

CHAT = "5511987650052@c.us"


def sent_answer(n: int) -> httpx.Response:
    """WAHA's 201 to sendText: the n-th message id it gives out."""
    return httpx.Response(201, json={"id": f"true_{CHAT}_3EB0{n:016X}", "fromMe": True})


async def commit_replies(aredis, prefix: str, *texts: str, chat: str = CHAT) -> None:
    keys = engine_keys_for("default", chat, 1, prefix)
    entries = [new_entry(chat, t) for t in texts]
    await apply_writes(aredis, outbox_writes(keys, entries, retention_seconds=3600, now_ms=1))


def make_sender(aredis, prefix: str, **overrides: object) -> tuple[Sender, WahaClient]:
    waha = WahaClient(WAHA)
    options: dict[str, object] = {"typing_delay_max_ms": 0, "retry_base_ms": 1, "retry_max_ms": 2}
    options.update(overrides)
    config = SenderConfig(prefix=prefix, shards=1, **options)  # type: ignore[arg-type]
    return Sender(aredis, waha, config), waha
