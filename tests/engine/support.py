"""The sender's test kit, shared by tests/engine/test_sender*.py and the engine's mutant tests:
a sender on a respx-stood WAHA (tests.engine.harness.WAHA) and replies committed to a
conversation's outbox as the engine commits them."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import respx

from engine.outbox import new_entry, outbox_writes
from engine.sender import Sender, SenderConfig
from engine.waha_client import WahaClient
from shared.keys import engine_keys_for
from tests.engine.harness import WAHA, apply_writes, mock_courtesy

CHAT = "5511987650052@c.us"


def sent_answer(n: int) -> httpx.Response:
    """WAHA's 201 to sendText: the n-th message id it gives out."""
    return httpx.Response(201, json={"id": f"true_{CHAT}_3EB0{n:016X}", "fromMe": True})


async def commit_replies(aredis, prefix: str, *texts: str, chat: str = CHAT) -> None:
    keys = engine_keys_for("default", chat, 1, prefix)
    entries = [new_entry(chat, t) for t in texts]
    await apply_writes(aredis, outbox_writes(keys, entries, retention_seconds=3600, now_ms=1))


async def held_elsewhere(aredis, prefix: str, count: int) -> list[str]:
    """`count` conversations due (scores 0, 1, ...) in CHAT's shard's pending index, each held
    by a live sender in another process (its delivery lock taken for a minute)."""
    pending = engine_keys_for("default", CHAT, 1, prefix).outbox_pending
    held = [f"default|55119{n:08d}@c.us" for n in range(count)]
    for n, token in enumerate(held):
        other = engine_keys_for("default", token.split("|")[1], 1, prefix)
        await aredis.set(other.sending, "another-process", px=60_000)
        await aredis.zadd(pending, {token: n})
    return held


def make_sender(aredis, prefix: str, **overrides: object) -> tuple[Sender, WahaClient]:
    waha = WahaClient(WAHA)
    options: dict[str, object] = {"typing_delay_max_ms": 0, "retry_base_ms": 1, "retry_max_ms": 2}
    options.update(overrides)
    config = SenderConfig(prefix=prefix, shards=1, **options)  # type: ignore[arg-type]
    return Sender(aredis, waha, config), waha


class HeldSends:
    """WAHA's sendText held until `release` is set, counting the calls in flight (and the most
    at once), then answering 201; `sent` is (chat, text) in the order they were answered."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.release = asyncio.Event()
        self.sent: list[tuple[str, str]] = []

    def install(self, router: Any = respx) -> None:
        router.post(f"{WAHA}/api/sendText").mock(side_effect=self._send_text)

    @classmethod
    async def with_replies(
        cls, aredis: Any, prefix: str, chats: list[str], texts: tuple[str, ...] = ("um", "dois")
    ) -> HeldSends:
        """`texts` committed to each of `chats`' outboxes, and WAHA (its courtesy calls
        answered) holding their sendText: the sender bound's tests."""
        mock_courtesy()
        held = cls()
        held.install()
        for chat in chats:
            await commit_replies(aredis, prefix, *texts, chat=chat)
        return held

    async def let_go(self, sender: Sender, waha: WahaClient) -> None:
        """Every held send answered, the sender's deliveries finished, its WAHA client closed."""
        self.release.set()
        await sender.drain()
        await waha.aclose()

    async def _send_text(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        body = orjson.loads(request.content)
        self.sent.append((body["chatId"], body["text"]))
        return httpx.Response(201, json={"id": f"true_{body['chatId']}_3EB0{len(self.sent):016X}"})

    def each_in_order(self, chats: list[str], texts: tuple[str, ...]) -> bool:
        """Every chat got every text, once each and in order."""
        everything = sorted((chat, text) for chat in chats for text in texts)
        return sorted(self.sent) == everything and all(
            [text for c, text in self.sent if c == chat] == list(texts) for chat in chats
        )
