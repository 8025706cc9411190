"""The sender delivers at most `max_deliveries` conversations at once in a process (issue 19:
one delivery task per conversation with no bound exhausted the Redis pool at C = 32); the
others wait their turn and are all delivered, each once, in order."""

from __future__ import annotations

import respx

from engine.sender import Sender, SenderConfig
from engine.waha_client import WahaClient
from tests.engine.harness import WAHA
from tests.engine.support import HeldSends
from tests.support.polling import async_wait_until

CHATS = [f"55119876500{n:02d}@c.us" for n in range(10)]


@respx.mock
async def test_deliveries_in_flight_never_exceed_the_bound(aredis, key_prefix) -> None:
    waha_sends = await HeldSends.with_replies(aredis, key_prefix, CHATS)
    waha = WahaClient(WAHA)
    config = SenderConfig(prefix=key_prefix, shards=1, typing_delay_max_ms=0, max_deliveries=3)
    sender = Sender(aredis, waha, config)
    for chat in CHATS:
        sender.kick(f"default|{chat}")

    try:

        async def three_sending_seven_waiting() -> bool:
            return waha_sends.in_flight == 3 and sender.waiting == 7

        await async_wait_until(three_sending_seven_waiting, timeout=10, what="3 sending, 7 waiting")
        # The seven wait for a slot without taking their conversation's delivery lock.
        locks = [key async for key in aredis.scan_iter(match=f"{key_prefix}*sending*")]
        assert len(locks) == 3
    finally:
        await waha_sends.let_go(sender, waha)
    assert waha_sends.most == 3
    assert waha_sends.each_in_order(CHATS, ("um", "dois")), waha_sends.sent
