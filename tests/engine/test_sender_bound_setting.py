"""WSM_SEND_MAX_DELIVERIES reaches the sender as the workers build it (engine/parts.py
sender_config): conversations the sweep finds due, more than the bound, are all delivered, each
reply once and in order, with never more sendText calls in flight than the bound (counted at
the WAHA stand-in, not timed). A bound below 1 is refused."""

from __future__ import annotations

import pydantic
import pytest
import respx

from engine.parts import sender_config
from engine.sender import Sender
from engine.waha_client import WahaClient
from shared.keys import all_shards, outbox_pending_key
from shared.settings import Settings
from tests.engine.harness import WAHA, settings_for
from tests.engine.support import HeldSends
from tests.support.polling import async_wait_until

CHATS = [f"55119876501{n:02d}@c.us" for n in range(7)]


@respx.mock
async def test_the_setting_bounds_the_deliveries_the_sweep_starts(
    aredis, redis_url, key_prefix
) -> None:
    waha_sends = await HeldSends.with_replies(aredis, key_prefix, CHATS)
    settings = settings_for(key_prefix, redis_url, queue_shards=1, send_max_deliveries=2)
    config = sender_config(settings)
    assert config.max_deliveries == 2
    waha = WahaClient(WAHA)
    sender = Sender(aredis, waha, config)
    try:
        assert await sender.sweep_once() == len(CHATS)  # all due: all started

        async def two_sending_five_waiting() -> bool:
            return waha_sends.in_flight == 2 and sender.waiting == 5

        await async_wait_until(two_sending_five_waiting, timeout=10, what="2 sending, 5 waiting")
    finally:
        await waha_sends.let_go(sender, waha)
    assert waha_sends.most == 2
    assert waha_sends.each_in_order(CHATS, ("um", "dois")), waha_sends.sent
    (shard,) = all_shards(1, key_prefix)
    assert await aredis.zcard(outbox_pending_key(shard)) == 0  # nothing left due


def test_the_default_bound_and_a_bound_below_one_refused() -> None:
    assert Settings(_env_file=None).send_max_deliveries == 64  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="WSM_SEND_MAX_DELIVERIES"):
        Settings(_env_file=None, WSM_SEND_MAX_DELIVERIES=0)  # type: ignore[call-arg]
